"""The container state store, shared with the images branch's layout: one directory per
container under <store>/containers/<id>/ holding container.json (the record) and
container.log (its output), and a name index, <store>/containers/.names/<name>, a symlink
to the id made with symlink(2): a name is taken by one container only, whoever races.

A record is a plain dict, written whole by rename:
    id, name, image, command, created, state (created | running | exited), exit_code,
    error, oom_killed, started_at, finished_at, pid + pid_start (its PID 1), monitor +
    monitor_start (its monitor process), boot (the boot they ran in), network, ip, ports,
    hostname, cgroup, argv (the options it was run with: `start` runs it again), env,
    auto_remove (--rm), image_digest (None: the host's directories or --rootfs)
Its state as seen now (`status`) also asks the kernel: a record that says running whose
monitor and PID 1 are gone (killed, a reboot) is exited. Stdlib only."""

from __future__ import annotations

import json
import os
import random
import shutil
import time

from .. import dirs
from ..errors import NsmagicError, SpecError

# Docker's generated names are an adjective and a scientist; these are a few of each.
_ADJECTIVES = ("brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid",
               "merry", "nimble", "proud", "quiet", "sharp", "tender", "vivid", "wise", "zen")
_NAMES = ("curie", "darwin", "hopper", "kepler", "lovelace", "meitner", "noether", "pasteur",
          "ritchie", "thompson", "turing", "wozniak", "shannon", "torvalds", "bell", "lamarr")


class NoSuchContainer(NsmagicError):
    pass


def base() -> str:
    return dirs.store("containers")


def _names() -> str:
    return dirs.store("containers", ".names")


def new(name: str | None, **fields) -> dict:
    """A record for a container about to start, its name reserved (generated if None)."""
    cid = os.urandom(16).hex()
    for _attempt in range(50):
        chosen = name or f"{random.choice(_ADJECTIVES)}_{random.choice(_NAMES)}"
        try:
            os.symlink(cid, os.path.join(_names(), chosen))
            break
        except FileExistsError:
            if name:
                taken = _read_name(chosen)
                if taken is not None:
                    raise NsmagicError(f"the name {name!r} is in use by container "
                                       f"{taken[:12]}; choose another, or remove it with "
                                       f"`nsmagic rm {name}`.") from None
                _drop_name(chosen)   # a name left by a record gone: free again
    else:
        raise NsmagicError("no free container name was found; give one with --name.")
    record = {"id": cid, "name": chosen, "created": time.time(), "state": "created",
              "exit_code": None, "error": None, "oom_killed": False, "started_at": None,
              "finished_at": None, "pid": None, "pid_start": None, "monitor": None,
              "monitor_start": None, "boot": dirs.boot_id(), "ports": [], "ip": None,
              "image_digest": None, **fields}
    os.makedirs(os.path.join(base(), cid), mode=0o700)
    save(record)
    return record


def save(record: dict) -> None:
    path = os.path.join(base(), record["id"], "container.json")
    staged = f"{path}.{os.getpid()}"
    with open(staged, "w") as f:
        json.dump(record, f, indent=1)
    os.rename(staged, path)


def update(record: dict, **fields) -> dict:
    record.update(fields)
    save(record)
    return record


def load(ref: str) -> dict:
    """A container by name, full id or unique id prefix; NoSuchContainer with one sentence."""
    cid = _read_name(ref)
    if cid is None and len(ref) >= 3:
        matches = [c for c in _ids() if c.startswith(ref)]
        if len(matches) > 1:
            raise NoSuchContainer(f"{ref!r} names {len(matches)} containers; give more of "
                                  "the id, or the name.")
        cid = matches[0] if matches else None
    record = _read(cid) if cid else None
    if record is None:
        raise NoSuchContainer(f"there is no container {ref!r}; `nsmagic ps -a` lists them.")
    return record


def _read(cid: str) -> dict | None:
    try:
        with open(os.path.join(base(), cid, "container.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _ids() -> list[str]:
    return [c for c in os.listdir(base()) if not c.startswith(".")]


def _read_name(name: str) -> str | None:
    try:
        cid = os.readlink(os.path.join(_names(), name))
    except OSError:
        return None
    return cid if os.path.isfile(os.path.join(base(), cid, "container.json")) else None


def _drop_name(name: str) -> None:
    try:
        os.unlink(os.path.join(_names(), name))
    except FileNotFoundError:
        pass


def all_records() -> list[dict]:
    """Every kept container, newest first."""
    found = [r for r in (_read(c) for c in _ids()) if r is not None]
    return sorted(found, key=lambda r: r.get("created", 0), reverse=True)


def remove(record: dict) -> None:
    """The record, its log and its name go (the container must have exited)."""
    if _read_name(record["name"]) == record["id"]:
        _drop_name(record["name"])
    shutil.rmtree(os.path.join(base(), record["id"]), ignore_errors=True)


def log_path(record: dict) -> str:
    return os.path.join(base(), record["id"], "container.log")


# --- what the kernel says about a record


def _same(pid: int | None, start: int | None, record: dict) -> bool:
    return (pid is not None and record.get("boot") == dirs.boot_id()
            and start is not None and dirs.start_time(pid) == start)


def pid1_alive(record: dict) -> bool:
    return _same(record.get("pid"), record.get("pid_start"), record)


def monitor_alive(record: dict) -> bool:
    return _same(record.get("monitor"), record.get("monitor_start"), record)


def status(record: dict) -> str:
    """created, running or exited, as now: a record whose monitor and PID 1 are both gone
    without writing an exit (a SIGKILL, a reboot) has exited."""
    state = record.get("state")
    if state == "exited":
        return "exited"
    if monitor_alive(record) or pid1_alive(record):
        return state
    return "exited"


def pidfd(record: dict) -> int:
    """A pidfd of the running container's PID 1 (checked to be that process)."""
    try:
        fd = os.pidfd_open(record.get("pid") or 0)
    except OSError:
        fd = None
    if fd is not None and pid1_alive(record):
        return fd
    if fd is not None:
        os.close(fd)
    raise NsmagicError(f"the container {record['name']} is not running; start it with "
                       f"`nsmagic start {record['name']}`.")


def namespace(record: dict, kind: str) -> int:
    """An fd of one namespace of the running container (net, mnt, pid...)."""
    fd = pidfd(record)
    try:
        ns = os.open(f"/proc/{record['pid']}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        if not pid1_alive(record):   # opened from the pid it had: still that process?
            os.close(ns)
            raise NsmagicError(f"the container {record['name']} stopped meanwhile.")
        return ns
    finally:
        os.close(fd)


def network_namespace(name: str) -> int:
    """--network container:NAME: the fd of NAME's network namespace."""
    try:
        record = load(name)
    except NoSuchContainer:
        raise SpecError(f"--network container:{name}: there is no container {name!r}; "
                        "start it with `nsmagic run -d --name NAME ...` first.") from None
    if status(record) != "running":
        raise SpecError(f"--network container:{name}: {name} is not running; start it "
                        f"with `nsmagic start {name}`.")
    return namespace(record, "net")
