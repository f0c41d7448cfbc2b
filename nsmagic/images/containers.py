"""Containers that stay after they exit, as Docker keeps them (until `rm`), in the store:

    containers/<id>/
      container.json   the record: id, name, image, command, created, state (running,
                       exited), exit code, the runner's pid, limits; written by rename
      container.log    what it printed: JSON lines {"stream", "time", "log"}, as Docker's
                       json-file log driver keeps them
      upper/           its writable layer, copied there by PID 1's keeper at exit (within
                       the run's storage limit: the layer lived on a size-limited tmpfs)

The record is the state store a detached container (issue 14) also needs: a monitor
process would update the same fields. Names are Docker's adjective_surname form, made
from word lists of nsmagic's own."""

from __future__ import annotations

import codecs
import io
import json
import os
import re
import secrets
import time
from dataclasses import dataclass

from .. import dirs
from ..errors import NsmagicError, SpecError

ADJECTIVES = (
    "agile", "amber", "ardent", "bold", "brisk", "calm", "candid", "clever", "cosmic",
    "crisp", "curious", "daring", "deft", "eager", "earnest", "fearless", "festive", "frank",
    "gentle", "glad", "golden", "hardy", "honest", "humble", "jolly", "keen", "kind",
    "lively", "lucid", "mellow", "merry", "mindful", "modest", "nimble", "noble", "patient",
    "plucky", "polite", "proud", "quiet", "radiant", "rapid", "serene", "sharp", "sincere",
    "sleepy", "snappy", "steady", "sturdy", "sunny", "swift", "tender", "tidy", "upbeat",
    "valiant", "vivid", "warm", "witty", "zealous", "zesty")
# People whose work these containers rest on: Unix, C, file systems, kernels, compilers.
SURNAMES = (
    "allen", "backus", "bellard", "biederman", "bonwick", "bovet", "cerf", "cohen",
    "corbato", "cox", "dijkstra", "engelbart", "feldman", "hamming", "hopper", "joy",
    "kahan", "karels", "kay", "kernighan", "knuth", "kroah", "lamport", "liskov",
    "lovelace", "mckusick", "mcilroy", "menage", "moore", "morris", "ossanna", "pike",
    "plauger", "quinlan", "raymond", "ritchie", "saltzer", "shannon", "stallman",
    "stroustrup", "tanenbaum", "thompson", "torvalds", "turing", "vixie", "wall",
    "weinberger", "wirth", "zimmermann")
NAME_CHECK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ContainerNotFound(NsmagicError):
    pass


@dataclass
class Record:
    """One kept container: its directory and its record."""
    dir: str
    data: dict

    @property
    def id(self) -> str:
        return self.data["Id"]

    @property
    def name(self) -> str:
        return self.data["Name"]

    @property
    def upper(self) -> str:
        return os.path.join(self.dir, "upper")

    @property
    def running(self) -> bool:
        state = self.data["State"]
        return state["Status"] == "running" and dirs.pid_exists(state.get("Pid"))

    def save(self) -> None:
        tmp = os.path.join(self.dir, f"container.json.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, os.path.join(self.dir, "container.json"))

    def status(self, now: float | None = None) -> str:
        """Docker's STATUS column: Up 3 seconds, Exited (0) 2 minutes ago."""
        from .views import ago
        state = self.data["State"]
        if self.running:
            return "Up " + ago(state["StartedAt"], now).removesuffix(" ago")
        if state["Status"] == "running":   # its runner died before it could say
            return "Exited (unknown)"
        return f"Exited ({state.get('ExitCode')}) {ago(state.get('FinishedAt'), now)}"




def records(store) -> list[Record]:
    """Every kept container, newest first."""
    base = store.path("containers")
    found = []
    for cid in os.listdir(base) if os.path.isdir(base) else ():
        try:
            with open(os.path.join(base, cid, "container.json")) as f:
                found.append(Record(os.path.join(base, cid), json.load(f)))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda r: r.data.get("Created", 0), reverse=True)


def kept_images(store) -> set[str]:
    """Manifest digests of the images kept containers were made from."""
    return {r.data["ImageDigest"] for r in records(store) if r.data.get("ImageDigest")}


def find(store, text: str) -> Record:
    """By name, by id, or by a unique prefix of the id."""
    hits = [r for r in records(store) if text in (r.name, r.id)]
    if not hits and len(text) >= 3:
        hits = [r for r in records(store) if r.id.startswith(text)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise SpecError(f"{text!r} matches {len(hits)} containers; give more of the id.")
    raise ContainerNotFound(f"there is no container {text} here; `nsmagic ps -a` lists "
                            "them.")


def new_name(store) -> str:
    taken = {r.name for r in records(store)}
    while True:
        name = f"{secrets.choice(ADJECTIVES)}_{secrets.choice(SURNAMES)}"
        if name not in taken:
            return name


def create(store, spec, image=None) -> Record:
    """A record for a run about to start (its directory made, state running)."""
    store.ensure()
    if spec.name is not None:
        if not NAME_CHECK.match(spec.name):
            raise SpecError(f"--name {spec.name!r} is not a valid name; use letters, digits, "
                            "'_', '.' and '-'.")
        for other in records(store):
            if other.name == spec.name:
                raise SpecError(f"the name {spec.name} is in use by container "
                                f"{other.id[:12]}; remove it (nsmagic rm {spec.name}) or "
                                "choose another.")
    cid = secrets.token_hex(32)
    directory = store.path("containers", cid)
    os.mkdir(directory, 0o700)
    record = Record(directory, {
        "Id": cid, "Name": spec.name or new_name(store),
        "Image": spec.image or "host",
        "ImageDigest": image.image.manifest_digest if image else None,
        "ImageId": image.image.id if image else None,
        "Command": list(image.argv) if image else list(spec.command) or ["python3", "-"],
        "Created": time.time(),
        "State": {"Status": "running", "Pid": os.getpid(), "StartedAt": time.time(),
                  "FinishedAt": None, "ExitCode": None, "OOMKilled": False, "Error": None},
        "HostConfig": {"Memory": spec.memory, "NanoCpus": int(spec.cpus * 1e9)
                       if spec.cpus else None, "PidsLimit": spec.pids,
                       "StorageSize": spec.storage, "NetworkMode": spec.network},
    })
    record.save()
    return record


def finish(record: Record, result) -> None:
    state = record.data["State"]
    state.update(Status="exited", FinishedAt=time.time(), ExitCode=result.exit_code,
                 OOMKilled=bool(result.oom_killed), Error=result.error)
    record.save()


def remove(store, record: Record, force: bool = False) -> None:
    if record.running and not force:
        raise SpecError(f"the container {record.name} is running; stop it first (or rm -f).")
    from .store import remove as remove_tree
    remove_tree(record.dir)


class Log:
    """container.log: each chunk a JSON line, with its stream and time."""

    def __init__(self, record: Record):
        self.file = open(os.path.join(record.dir, "container.log"), "a", encoding="utf-8")

    def add(self, stream: str, text: str) -> None:
        if text:
            self.file.write(json.dumps({"stream": stream, "time": time.time(), "log": text})
                            + "\n")

    def close(self) -> None:
        self.file.close()


def replay(record: Record, out, err) -> None:
    """`logs`: what it printed, each stream to its own."""
    try:
        f = open(os.path.join(record.dir, "container.log"), encoding="utf-8")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            entry = json.loads(line)
            (err if entry["stream"] == "stderr" else out).write(entry["log"])


def tee(target, log: Log, stream: str):
    """`target` (a text or binary stream) that also writes to the log."""
    if isinstance(target, io.TextIOBase):
        return _TextTee(target, log, stream)
    return _BinaryTee(target, log, stream)


class _TextTee(io.TextIOBase):
    def __init__(self, target, log, stream):
        self.target, self.log, self.stream = target, log, stream

    def write(self, text: str) -> int:
        self.log.add(self.stream, text)
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()


class _BinaryTee:
    def __init__(self, target, log, stream):
        self.target, self.log, self.stream = target, log, stream
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, data: bytes) -> int:
        self.log.add(self.stream, self.decoder.decode(data, final=not data))
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


def should_keep(spec, cli: bool) -> bool:
    """Docker's rule on the CLI: every run on an image stays unless --rm; a run on the
    host's own directories (which has no single writable layer to keep) only with --name
    or --keep. In a notebook a cell stays only with --name or --keep."""
    if spec.rm or spec.unconfined:
        return False
    return spec.keep or spec.name is not None or (cli and spec.image is not None)


def run_kept(spec, run, out=None, err=None, **kw):
    """run(spec, out=..., err=..., **kw) (core.run) for a container that stays: its record
    made first, its output also logged, its writable layer copied into its directory by
    PID 1's keeper, its end recorded. Returns (result, record)."""
    from . import runimage
    from .store import Store
    store = Store(spec.store).ensure()
    image = runimage.for_spec(spec, store)
    record = create(store, spec, image)
    spec = spec.replace(keep_dir=record.dir, hostname=spec.hostname or record.id[:12])
    log = Log(record)
    try:
        result = run(spec, out=tee(out, log, "stdout") if out is not None else None,
                     err=tee(err, log, "stderr") if err is not None else None, **kw)
    except KeyboardInterrupt as stop:
        if getattr(stop, "result", None) is not None:
            finish(record, stop.result)
        raise
    finally:
        log.close()
    finish(record, result)
    return result, record
