"""Detached containers in the container store the images branch keeps (images/containers.py:
<store>/containers/<id>/container.json in Docker's inspect shape, container.log, upper/).
A detached container's record is one of those, with State.Pid its monitor's pid (so `ps -a`
and `rm` there see it running exactly while its monitor lives) and a "Detached" part of its
own: its PID 1 (pid, start time, boot: a pid alone is reused), its monitor's start time, the
options it was run with (`start` runs it again), its environment, cgroup, address and ports.

Here a record is handled as a flat view (a dict: id, name, state, exit_code, pid, monitor,
ip, ports...), read from and written back to that shape by view() and save(). Its state as
seen now (`status`) also asks the kernel: a record that says running whose monitor and PID 1
are gone (killed, a reboot) has exited. Stdlib only."""

from __future__ import annotations

import os

from .. import dirs
from ..errors import NsmagicError, SpecError
from ..images import containers
from ..images.containers import ContainerNotFound as NoSuchContainer
from ..images.containers import Record

# The view's keys kept in State; every other key but the Docker-level ones in "Detached".
STATE = {"state": "Status", "exit_code": "ExitCode", "error": "Error",
         "oom_killed": "OOMKilled", "started_at": "StartedAt", "finished_at": "FinishedAt",
         "monitor": "Pid"}
TOP = {"id": "Id", "name": "Name", "image": "Image", "command": "Command",
       "created": "Created"}


def _store():
    from ..images.store import Store
    return Store().ensure()


def new(spec, argv: list[str], auto_remove: bool = False) -> dict:
    """A record for a detached container about to start: its name checked (or made) by the
    store's own rules, its image pinned, state "created"."""
    store = _store()
    image = None
    if spec.image is not None:
        from ..images import runimage
        image = runimage.for_spec(spec, store)
    record = containers.create(store, spec, image)
    record.data["State"].update(Status="created", Pid=None)
    record.data["Detached"] = {"argv": argv, "auto_remove": auto_remove, "pid": None,
                               "pid_start": None, "monitor_start": None,
                               "boot": dirs.boot_id(), "ip": None, "ports": [],
                               "network": spec.network, "hostname": spec.hostname,
                               "cgroup": None, "env": []}
    record.save()
    return view(record)


def view(record: Record) -> dict:
    data, state = record.data, record.data["State"]
    flat = {key: data.get(name) for key, name in TOP.items()}
    flat.update({key: state.get(name) for key, name in STATE.items()})
    flat.update(data.get("Detached") or {})
    flat["_dir"] = record.dir
    return flat


def save(flat: dict) -> None:
    record = _record(flat)
    data = record.data
    for key, name in STATE.items():
        data["State"][name] = flat.get(key)
    detached = {k: v for k, v in flat.items() if k not in STATE and k not in TOP
                and not k.startswith("_")}
    data["Detached"] = detached
    record.save()


def _record(flat: dict) -> Record:
    import json
    with open(os.path.join(flat["_dir"], "container.json")) as f:
        return Record(flat["_dir"], json.load(f))


def update(flat: dict, **fields) -> dict:
    flat.update(fields)
    save(flat)
    return flat


def load(ref: str) -> dict:
    """A container by name, full id or unique id prefix; NoSuchContainer with one sentence."""
    return view(containers.find(_store(), ref))


def all_records() -> list[dict]:
    """Every kept container (detached ones and the images branch's), newest first. A --rm
    container whose monitor was killed (SIGKILL: it could not remove the record itself) is
    removed here, as it would have been."""
    found, gone = [], False
    for flat in (view(r) for r in containers.records(_store())):
        if flat.get("auto_remove") and flat.get("monitor") and not monitor_alive(flat) \
                and not pid1_alive(flat):
            remove(flat)
            gone = True
        else:
            found.append(flat)
    if gone:   # and the groups named after its monitor
        from .. import cgroups
        try:
            cgroups.sweep()
        except (OSError, NsmagicError):
            pass
    return found


def detached(flat: dict) -> bool:
    return "argv" in flat


def remove(flat: dict) -> None:
    """The record, its log and its writable layer go (the container must have exited)."""
    containers.remove(_store(), _record(flat), force=True)


def log_path(flat: dict) -> str:
    return os.path.join(flat["_dir"], "container.log")


# --- what the kernel says about a record


def _same(pid: int | None, start: int | None, flat: dict) -> bool:
    return (pid is not None and flat.get("boot") == dirs.boot_id()
            and start is not None and dirs.start_time(pid) == start)


def pid1_alive(flat: dict) -> bool:
    return _same(flat.get("pid"), flat.get("pid_start"), flat)


def monitor_alive(flat: dict) -> bool:
    return _same(flat.get("monitor"), flat.get("monitor_start"), flat)


def status(flat: dict) -> str:
    """created, running or exited, as now: a record whose monitor and PID 1 are both gone
    without writing an exit (a SIGKILL, a reboot) has exited. A kept container the images
    branch records (no monitor) runs while its runner does."""
    if not detached(flat):
        return "running" if _record(flat).running else "exited"
    if flat.get("state") == "exited":
        return "exited"
    if monitor_alive(flat) or pid1_alive(flat):
        return flat.get("state")
    return "exited"


def pidfd(flat: dict) -> int:
    """A pidfd of the running container's PID 1 (checked to be that process)."""
    try:
        fd = os.pidfd_open(flat.get("pid") or 0)
    except OSError:
        fd = None
    if fd is not None and pid1_alive(flat):
        return fd
    if fd is not None:
        os.close(fd)
    raise NsmagicError(f"the container {flat['name']} is not running; start it with "
                       f"`nsmagic start {flat['name']}`.")


def namespace(flat: dict, kind: str) -> int:
    """An fd of one namespace of the running container (net, mnt, pid...)."""
    fd = pidfd(flat)
    try:
        ns = os.open(f"/proc/{flat['pid']}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        if not pid1_alive(flat):   # opened from the pid it had: still that process?
            os.close(ns)
            raise NsmagicError(f"the container {flat['name']} stopped meanwhile.")
        return ns
    finally:
        os.close(fd)


def network_namespace(name: str) -> int:
    """--network container:NAME: the fd of NAME's network namespace."""
    try:
        flat = load(name)
    except NoSuchContainer:
        raise SpecError(f"--network container:{name}: there is no container {name!r}; "
                        "start it with `nsmagic run -d --name NAME ...` first.") from None
    if not detached(flat) or status(flat) != "running":
        raise SpecError(f"--network container:{name}: {name} is not running; start it "
                        f"with `nsmagic start {name}`.")
    return namespace(flat, "net")
