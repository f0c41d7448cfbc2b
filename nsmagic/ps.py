"""`docker ps` and `docker stats` for nsmagic: every run's cgroup on this machine (any
runner's: this kernel, another notebook, a shell), found by its `nsmagic-` name, with what
the container store (detached containers) and the network leases (names, ports) add. Root
sees every user's, with its owner; a user sees their own only."""

from __future__ import annotations

import os
import time

from . import dirs
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
        pid = owner(cg)   # None: not a run's group (a delegated scope's leaf, say)
        if pid is not None and dirs.pid_exists(pid):
            alive.append(cg)
        else:
            cg.close()
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


def none_running() -> str:
    return ("no nsmagic container is running on this machine." if os.geteuid() == 0 else
            "no nsmagic container of yours is running on this machine.")


def owner(cg: Cgroup) -> int | None:
    from .cgroups import owner_pid
    return owner_pid(cg.name)


def age(cg: Cgroup) -> float:
    """Seconds since the group was made (its directory's change time)."""
    try:
        return time.time() - os.stat(cg.directories()[0]).st_ctime
    except (OSError, IndexError):
        return 0.0


def table(groups: list[Cgroup] | None = None, all_containers: bool = False) -> str:
    """`docker ps`: every running container (a detached one's record, or a cell's or a
    CLI run's group: its STATUS names its runner), and with `all_containers` the exited
    ones kept in the store."""
    from .containers import records
    groups = running() if groups is None else groups
    kept = {r.get("cgroup") or r["id"]: r for r in records.all_records()}
    rows = [("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")]
    for cg in groups:
        record = kept.pop(cg.name, None)
        rows.append(_record_row(record) if record else _group_row(cg))
        cg.close()
    if all_containers:
        rows += [_record_row(r) for r in kept.values() if records.status(r) != "running"]
    if len(rows) == 1:
        return none_running()
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in rows)


def _record_row(r: dict) -> tuple[str, ...]:
    from .containers import records
    state = records.status(r)
    if not records.detached(r):   # a kept run's record: the images branch's STATUS
        return (r["id"][:12], r.get("image") or "host", _command(r.get("command") or []),
                _ago(time.time() - (r.get("created") or 0)),
                records._record(r).status(), "", r["name"])
    if state == "running":
        status = f"Up {_ago(time.time() - (r.get('started_at') or r['created']), False)}"
    else:
        when = r.get("finished_at")
        status = f"Exited ({r.get('exit_code') if r.get('exit_code') is not None else '?'})" \
                 + (f" {_ago(time.time() - when)}" if when else "")
    return (r["id"][:12], r.get("image") or "host", _command(r.get("command") or []),
            _ago(time.time() - r["created"]), status, ", ".join(r.get("ports") or []),
            r["name"])


def _group_row(cg: Cgroup) -> tuple[str, ...]:
    """A run no record names (a cell, a CLI run): what its group and leases tell."""
    run_id = cg.name.split("-")[-1]
    lease = _lease_of(run_id)
    from .net.ports import Port
    ports = ", ".join(str(Port(*p)) for p in (lease or {}).get("ports", ()))
    up = _ago(age(cg), False)
    return (run_id, "host", _command(_workload_argv(cg)), _ago(age(cg)),
            f"Up {up} (runner {owner(cg) or '?'}, {user_name(owner_uid(cg))[:10]})", ports,
            (lease or {}).get("name") or f"nsmagic-{run_id}")


def _workload_argv(cg: Cgroup) -> list[str]:
    for pid in sorted(cg.pids()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                words = [w.decode(errors="replace") for w in f.read().split(b"\0") if w]
        except OSError:
            continue
        if words and words[0] != "nsmagic-init":
            return words
    return []


def _lease_of(run_id: str) -> dict | None:
    """A bridged run's lease (its name and published ports), if it has one."""
    import glob
    import json

    from . import dirs
    for path in glob.glob(os.path.join(dirs.store_root(), "networks", "*", "leases.json")):
        try:
            with open(path) as f:
                for holder in json.load(f).get("leases", {}).values():
                    if holder.get("id") == run_id:
                        return holder
        except (OSError, ValueError):
            continue
    return None


def _command(argv: list[str]) -> str:
    text = " ".join(argv)
    return '"' + (text if len(text) <= 22 else text[:21] + "…") + '"'


def _ago(seconds: float, suffix: bool = True) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            text = f"{seconds // size} {unit}"
            break
    else:
        text = f"{seconds} seconds"
    return f"{text} ago" if suffix else text


def stats_table(names: list[str] | None = None, pause: float = 0.5) -> str:
    """`docker stats --no-stream`: CPU % over `pause` seconds, memory, network I/O, pids."""
    groups = running()
    first = {cg.name: cg.usage() for cg in groups}
    time.sleep(pause)
    rows = [("CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "NET I/O", "PIDS",
             "USER", "RUNNER")]
    for cg in groups:
        u, run_id = cg.usage(), cg.name.split("-")[-1]
        name = (_lease_of(run_id) or {}).get("name") or _record_name(cg) or f"nsmagic-{run_id}"
        if names and name not in names and run_id not in names:
            cg.close()
            continue
        cpu = (u.cpu_usec - first[cg.name].cpu_usec) / (u.time - first[cg.name].time) / 1e4
        limit = cg.limits.memory
        memory = format_size(u.working_set) + (f" / {format_size(limit)}" if limit else "")
        rx, tx = _net_bytes(run_id)
        rows.append((run_id, name, f"{cpu:.2f}%", memory,
                     f"{format_size(rx)} / {format_size(tx)}" if rx is not None else "-",
                     str(u.pids_current), user_name(owner_uid(cg))[:10],
                     str(owner(cg) or "?")))
        cg.close()
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in rows)


def _record_name(cg: Cgroup) -> str | None:
    from .containers import records
    return next((r["name"] for r in records.all_records() if r.get("cgroup") == cg.name),
                None)


def _net_bytes(run_id: str) -> tuple[int | None, int | None]:
    """Received and sent by a bridged run, from the host's end of its veth (nsm<run id>)."""
    base = f"/sys/class/net/nsm{run_id[:12]}/statistics"
    try:
        with open(f"{base}/tx_bytes") as rx, open(f"{base}/rx_bytes") as tx:
            return int(rx.read()), int(tx.read())
    except (OSError, ValueError):
        return None, None


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
