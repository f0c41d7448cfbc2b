"""What runs leave behind: the one scan the tests (conftest.py), the peers' cleanup
(peers.py) and the benchmark (bench/) share. Stdlib and nsmagic only, no pytest."""

from __future__ import annotations

import glob
import os
import subprocess


def leftovers(owner: int | None = None) -> list[str]:
    """What runs of `owner` (default: this process) left behind: cgroups (named
    nsmagic-<owner pid>-<id>), host mounts, processes in such groups. Other processes' runs
    (a notebook open meanwhile) are not ours to judge, nor is this process's ready spare
    (a PID 1 kept waiting for the next run, by design)."""
    from nsmagic.core import settle
    spares = settle() if owner is None else set()
    mine = f"nsmagic-{owner or os.getpid()}-"
    found = [d for d in glob.glob("/sys/fs/cgroup/**/" + mine + "*", recursive=True)
             if os.path.isdir(d) and os.path.basename(d) not in spares]
    with open("/proc/self/mountinfo") as f:
        found += [line.strip() for line in f if "nsmagic" in line]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cgroup") as f:
                    groups = f.read()
                if mine in groups and not any(name in groups for name in spares):
                    found.append(f"process {pid}")
            except OSError:
                pass
    return found


def processes_left(owner: int) -> list[str]:
    return [line for line in leftovers(owner) if line.startswith("process")]


def mounts_under(path: str) -> list[str]:
    """Mount points at or below `path` in this mount namespace."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")   # \040 is a space
            if point == path or point.startswith(path.rstrip("/") + "/"):
                points.append(point)
    return points


def unmount_under(path: str) -> bool:
    """Detach every mount at or below `path`, deepest first; True when none is left (so the
    dir can be removed: never rm -r through a mount)."""
    for point in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], stderr=subprocess.DEVNULL, check=False)
    return not mounts_under(path)
