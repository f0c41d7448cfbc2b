"""`docker ps` and `docker stats` for nsmagic: every run's cgroup on this machine (any
runner's: this kernel, another notebook, a shell), found by its `nsmagic-` name. Root sees
every user's, with its owner; a user sees their own only."""

from __future__ import annotations

import os
import time

from .cgroups import Cgroup
from .cgroups import running as _all_groups
from .spec import format_size


def _is_spare(cg: Cgroup) -> bool:
    """A PID 1 kept ready for a runner's next run (comm nsmagic-spare, with a Python cell's
    interpreter beside it when it is ready) is no container yet; nor is an empty group."""
    names = set()
    for pid in cg.pids():
        try:
            with open(f"/proc/{pid}/comm") as f:
                names.add(f.read().strip())
        except OSError:
            pass
    return not names or "nsmagic-spare" in names


def running() -> list[Cgroup]:
    """Groups of live runners. A dead runner's group is a leftover, not a container: its
    processes died with it, and the next start sweeps the group. Spares are not listed."""
    alive = []
    for cg in _all_groups():
        if not mine(cg) or _is_spare(cg):
            cg.close()
            continue
        pid = owner(cg)
        try:
            if pid is not None:
                os.kill(pid, 0)
            alive.append(cg)
        except ProcessLookupError:
            cg.close()
        except PermissionError:
            alive.append(cg)
    return alive


def owner_uid(cg: Cgroup) -> int | None:
    """Who made the group (the kernel makes a user's mkdir theirs): the run's user."""
    try:
        return os.stat(cg.directories()[0]).st_uid
    except (OSError, IndexError):
        return None


def mine(cg: Cgroup) -> bool:
    """Root sees every run; a user, only runs they made (another user's are none of theirs
    to list, whatever the file system lets them read)."""
    return os.geteuid() == 0 or owner_uid(cg) == os.getuid()


def user_name(uid: int | None) -> str:
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name if uid is not None else "?"
    except KeyError:
        return str(uid)


def owner(cg: Cgroup) -> int | None:
    from .cgroups import owner_pid
    return owner_pid(cg.name)


def age(cg: Cgroup) -> float:
    """Seconds since the group was made (its directory's change time)."""
    try:
        return time.time() - os.stat(cg.directories()[0]).st_ctime
    except (OSError, IndexError):
        return 0.0


def none_running() -> str:
    return ("no nsmagic container is running on this machine." if os.geteuid() == 0 else
            "no nsmagic container of yours is running on this machine.")


def table(groups: list[Cgroup] | None = None) -> str:
    groups = running() if groups is None else groups
    if not groups:
        return none_running()
    lines = [f"{'ID':<14} {'USER':<10} {'OWNER':>7} {'UP':>7} {'PIDS':>5} {'CPU s':>7} "
             f"{'MEMORY':>22}"]
    for cg in groups:
        u, lim = cg.usage(), cg.limits
        memory = format_size(u.working_set) + (f" / {format_size(lim.memory)}"
                                               if lim.memory else "")
        lines.append(f"{cg.name.split('-')[-1]:<14} {user_name(owner_uid(cg))[:10]:<10} "
                     f"{owner(cg) or '?':>7} {age(cg):6.1f}s {u.pids_current:>5} "
                     f"{u.cpu_usec / 1e6:7.2f} {memory:>22}")
        cg.close()
    return "\n".join(lines)


def watch(interval: float = 0.5, on_sample=None, until=None) -> None:
    """Sample every running group each `interval` s: on_sample(name, usage, limits, ended).
    Runs until interrupted (KeyboardInterrupt) or `until()` says so; picks up new runs."""
    handles: dict[str, Cgroup] = {}
    try:
        while until is None or not until():
            current = {cg.name: cg for cg in running()}
            for name, cg in current.items():
                handles.setdefault(name, cg)
            for name, cg in list(handles.items()):
                ended = name not in current
                if not ended:
                    on_sample(name, cg.usage(), cg.limits, False)
                else:
                    on_sample(name, None, cg.limits, True)
                    cg.close()
                    del handles[name]
            time.sleep(interval)
    finally:
        for cg in handles.values():
            cg.close()
