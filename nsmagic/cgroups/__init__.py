"""Cgroups: the only place that chooses between the v1 and v2 backends."""

from __future__ import annotations

import os
import signal
import time

from .. import dirs
from ..errors import CgroupError
from .base import PREFIX, Cgroup, DeviceLimit, Limits, Usage, remove_tree, subtree_pids
from .layout import Layout, detect
from .v1 import CgroupV1
from .v2 import CgroupV2

__all__ = ["Cgroup", "DeviceLimit", "Layout", "Limits", "Usage", "detect", "group_name",
           "open_cgroup", "owner_pid", "running", "sweep", "sweep_elsewhere"]

# A group elsewhere in the tree is left alone until it is this old: a runner in another pid
# namespace (nsmagic in a pod) may have just made it and not yet moved its PID 1 in.
ELSEWHERE_AFTER_S = 60.0


def group_name(run_id: str) -> str:
    """nsmagic-<owner pid>-<run id>: the owner pid lets a later start sweep what a killed
    runner could not remove."""
    return f"{PREFIX}{os.getpid()}-{run_id}"


def owner_pid(name: str) -> int | None:
    """The runner pid in a run's group name; None for anything else (the leaf, say)."""
    if not name.startswith(PREFIX):
        return None
    head = name[len(PREFIX):].split("-")[0]
    return int(head) if head.isdigit() else None


def open_cgroup(run_id: str, limits: Limits, layout: Layout | None = None) -> Cgroup:
    """A run's Cgroup for this machine's layout; not yet created."""
    layout = layout or detect()
    name = group_name(run_id)
    if layout.kind == "v2":
        return CgroupV2(name, limits, layout)
    if layout.kind in ("v1", "hybrid"):
        # Hybrid machines keep memory, cpu and pids on v1; their cgroup2 has none of them.
        return CgroupV1(name, limits, layout)
    raise CgroupError("no cgroup file system is mounted; mount one at /sys/fs/cgroup, "
                      "or run without --mem, --cpus and --pids.")


def _candidate_dirs(layout: Layout) -> list[str]:
    parents = set()
    for controller in layout.v1_run_hierarchies():
        d = layout.v1_dir(controller)
        if d:
            parents.add(d)
    if layout.v2_mount:
        parents.add(os.path.join(layout.v2_mount, "nsmagic"))
        own = layout.v2_dir()
        if own:
            parents.update((own, os.path.dirname(own)))
    found = []
    for parent in parents:
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        found += [os.path.join(parent, n) for n in names if n.startswith(PREFIX)]
    return found



def sweep(layout: Layout | None = None) -> list[str]:
    """Remove groups left by runners that died (SIGKILL, a crashed kernel), child groups
    first; returns those removed. Never waits: their processes are killed, and a group still
    busy with a dying one is left for a later sweep (a start must not pay for it)."""
    layout = layout or detect()
    stale = [path for path in _candidate_dirs(layout) if _is_stale(path)]
    for path in stale:
        _kill_all_in(path)
    _wait_gone(stale)
    return [path for path in stale if _removed(path)]


def sweep_elsewhere(layout: Layout | None = None) -> list[str]:
    """Remove empty groups that dead runners left anywhere in the cgroup trees, not only
    beside this process's own group (where sweep() looks): a runner started from another
    cgroup (another shell, another kernel's scope) and killed left its groups under that
    one. It walks every hierarchy, so it runs off the run path, once per process. It never
    kills: an owner pid that is not ours to see may be a live runner in another pid
    namespace, so only groups with no process left and older than ELSEWHERE_AFTER_S go."""
    layout = layout or detect()
    mounts = set(layout.v1_mounts.values()) | ({layout.v2_mount} - {None})
    removed = []
    for mount in mounts:
        for here, subs, _ in os.walk(mount):
            stale = [n for n in subs if owner_pid(n) is not None]
            subs[:] = [n for n in subs if n not in stale]   # what is below a run is its own
            for name in stale:
                path = os.path.join(here, name)
                if _is_stale(path) and _idle_since(path) > ELSEWHERE_AFTER_S \
                        and not subtree_pids(path) and _removed(path):
                    removed.append(path)
    return removed


def _removed(path: str) -> bool:
    """Removed (children first), or still busy: a later sweep's."""
    try:
        remove_tree(path, tries=1)
        return True
    except (OSError, CgroupError):
        return False


def _idle_since(path: str) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except OSError:
        return 0.0


def _is_stale(path: str) -> bool:
    owner = owner_pid(os.path.basename(path))
    return owner is not None and owner != os.getpid() and not dirs.pid_exists(owner)


def _wait_gone(paths: list[str], within: float = 0.1) -> None:
    """A killed process is gone within a millisecond or two: a moment for all of them at
    once, so that their groups go in this sweep; one that stays (frozen, stuck in the
    kernel) leaves its group busy for a later sweep."""
    deadline = time.monotonic() + within
    while any(subtree_pids(p) for p in paths) and time.monotonic() < deadline:
        time.sleep(0.002)


def _kill_all_in(path: str) -> None:
    for pid in subtree_pids(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def running(layout: Layout | None = None) -> list[Cgroup]:
    """Every run's group on this machine (any runner's, like `docker ps`) that this process
    may read, read-only handles. (A user's delegated subtree is private to that user.)"""
    import glob
    layout = layout or detect()
    found: dict[str, dict[str, str]] = {}
    if layout.kind == "v2":
        for path in glob.glob(os.path.join(layout.v2_mount, "**", PREFIX + "*"), recursive=True):
            name = os.path.basename(path)
            if owner_pid(name) is not None and os.path.isdir(path):
                found.setdefault(name, {})["unified"] = path
        return [CgroupV2.attach(name, dirs["unified"], layout) for name, dirs in
                sorted(found.items())]
    for controller in ("memory", "cpu", "cpuacct", "pids"):
        mount = layout.v1_mounts.get(controller)
        if mount:
            for path in glob.glob(os.path.join(mount, "**", PREFIX + "*"), recursive=True):
                if owner_pid(os.path.basename(path)) is not None and os.path.isdir(path):
                    found.setdefault(os.path.basename(path), {})[controller] = path
    return [CgroupV1.attach(name, dirs) for name, dirs in sorted(found.items())]
