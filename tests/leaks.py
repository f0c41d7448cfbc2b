"""What runs leave behind: the one scan the tests (conftest.py), the peers' cleanup
(peers.py) and the benchmark (bench/) share. Stdlib and nsmagic only, no pytest."""

from __future__ import annotations

import glob
import os
import subprocess
import time

from nsmagic.inside.root import mounts_under


def leftovers(owner: int | None = None, within: float = 5.0) -> list[str]:
    """What runs of `owner` (default: this process) left behind: cgroups (named
    nsmagic-<owner pid>-<id>), processes in such groups, and (for this process) the mounts
    of its view, for a before-and-after comparison. Other processes' runs
    (a notebook open meanwhile) are not ours to judge, nor is this process's ready spare
    (a PID 1 kept waiting for the next run, by design).

    Another process (a CLI) may have left its teardown to a process of its own, which
    finishes after it exits: its leftovers get `within` seconds to go."""
    from nsmagic.core import settle
    spares = settle() if owner is None else set()
    deadline = time.monotonic() + (within if owner is not None else 0)
    while True:
        found = _scan(owner or os.getpid(), spares)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.02)


def _scan(owner: int, spares: set[str]) -> list[str]:
    mine = f"nsmagic-{owner}-"
    found = [d for d in glob.glob("/sys/fs/cgroup/**/" + mine + "*", recursive=True)
             if os.path.isdir(d) and os.path.basename(d) not in spares]
    if owner == os.getpid():
        # Every mount of this view: a run's mounts are in its own namespace only, so one
        # that appears here while a test runs has leaked, whatever its name (no_leaks
        # compares before and after). Another process's runs are judged by their groups and
        # processes: mounts made meanwhile by other work on the machine are not theirs.
        with open("/proc/self/mountinfo") as f:
            found += [f"mount {line.split()[4]}" for line in f]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cgroup") as f:
                    groups = f.read()
                if (mine in groups and not any(name in groups for name in spares)
                        and not _zombie(pid)):
                    found.append(f"process {pid}")
            except OSError:
                pass
    return found


def _zombie(pid: str) -> bool:
    """An exited process that only init has left to reap: nothing of it runs or holds a
    group. A CLI runner exits before its PID 1 has finished exiting, so init reaps that one,
    whenever it does (this machine's init can take seconds); meanwhile its /proc/PID/cgroup
    still names the run's cgroup2 group, marked "(deleted)". A zombie whose parent is still
    there (a runner that never reaped its PID 1) is a leftover."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, ppid = f.read().rpartition(")")[2].split()[:2]
    except (OSError, ValueError):
        return False
    return state == "Z" and ppid == "1"


def processes_left(owner: int) -> list[str]:
    return [line for line in leftovers(owner, within=0) if line.startswith("process")]


def unmount_under(path: str) -> bool:
    """Detach every mount at or below `path`, deepest first; True when none is left (so the
    dir can be removed: never rm -r through a mount)."""
    for point in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], stderr=subprocess.DEVNULL, check=False)
    return not mounts_under(path)
