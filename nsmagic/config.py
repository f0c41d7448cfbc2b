"""What crosses from the runner into the fork server and PID 1: frozen dataclasses, encoded
in one place (encode/decode) and checked on arrival (decode builds them field by field from
their declared types, and each class's __post_init__ checks what a type cannot say).

Both sides import this module, so it stays stdlib only and cheap to import."""

import binascii
import dataclasses
import json
import os
import socket
import types
from dataclasses import dataclass

from .errors import SetupError

# --- the container's root: what plan() decides in the runner and root.py builds in PID 1


@dataclass(frozen=True)
class Layer:
    """A read-only lower layer of an overlay mounted at `target`."""
    source: str
    target: str

    def __post_init__(self):
        _absolute("layer source", self.source)
        _absolute("layer target", self.target)


@dataclass(frozen=True)
class Bind:
    """A bind mount of a host path (a volume, the Python environment)."""
    source: str
    target: str
    read_only: bool
    is_dir: bool        # decided in the runner: the source may be under /tmp, covered in PID 1
    dev: bool = False   # device nodes in it open devices (nodev unless asked)
    suid: bool = False  # set-id bits count (nosuid unless asked)

    def __post_init__(self):
        _absolute("volume source", self.source)
        _absolute("volume target", self.target)


@dataclass(frozen=True)
class Link:
    """A symlink at the top of the root (bin -> usr/bin on merged-/usr hosts)."""
    path: str
    text: str

    def __post_init__(self):
        if "/" in self.path or self.path in ("", ".", ".."):
            raise SetupError(f"the top-level link {self.path!r} is not a plain name.")


@dataclass(frozen=True)
class Dir:
    """An empty directory the root gets (tmp, home, proc...), relative to the root."""
    path: str
    mode: int

    def __post_init__(self):
        if self.path.startswith("/") or ".." in self.path.split("/"):
            raise SetupError(f"the directory {self.path!r} is not inside the root.")


@dataclass(frozen=True)
class RootPlan:
    layers: tuple[Layer, ...]
    links: tuple[Link, ...]
    dirs: tuple[Dir, ...]
    binds: tuple[Bind, ...]
    read_only: bool
    storage: int                  # bytes the run may write to its root (the upper layers)
    hidden: tuple[str, ...] = ()  # host paths the default root does not show (secrets)
    resolv_conf: str = ""         # the container's /etc/resolv.conf
    # A host directory (made by the runner, in the image store) that the root's writable
    # layer is copied into, as upper/, when the workload exits (a container that stays, a
    # build's RUN; see inside/keep.py). "" for none.
    keep_dir: str = ""

    def __post_init__(self):
        if self.keep_dir:
            _absolute("directory the writable layer is kept in", self.keep_dir)
        for path in self.hidden:
            _absolute("hidden path", path)
            if ".." in path.split("/"):
                raise SetupError(f"the hidden path {path!r} is not a plain path.")


@dataclass(frozen=True)
class CgroupMount:
    """A hierarchy mounted at /sys/fs/cgroup/<name> inside ("" for the unified one)."""
    fstype: str         # "cgroup2" or "cgroup"
    name: str
    options: str        # v1: the controllers of that hierarchy, comma-separated

    def __post_init__(self):
        if self.fstype not in ("cgroup", "cgroup2") or "/" in self.name:
            raise SetupError(f"the cgroup mount {self.fstype} {self.name!r} is not valid.")


# --- a run and the boot of its PID 1


@dataclass(frozen=True)
class RunConfig:
    """What PID 1 needs to build the container and start its workload."""
    hostname: str
    network: str
    rootless: bool
    plan: RootPlan
    cgroup_namespace: bool                 # the run has a group: it is the root inside
    cgroup_mounts: tuple[CgroupMount, ...]
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    workdir: str
    user: tuple[int, int] | None
    python_cell: bool
    custom_root: bool
    unconfined: bool
    profile: bool
    # Docker's profile as a BPF program (compiled by the runner, loaded by PID 1 last before
    # the workload); None with --security-opt seccomp=unconfined or --unconfined.
    seccomp: bytes | None = None

    def __post_init__(self):
        if not self.argv or not self.argv[0]:
            raise SetupError("the run has no command to start.")
        if self.seccomp is not None and (len(self.seccomp) % 8 or not
                                         0 < len(self.seccomp) <= 8 * 4096):
            raise SetupError(f"the seccomp filter sent is malformed ({len(self.seccomp)} "
                             "bytes, not 1 to 4096 instructions of 8).")
        _absolute("working directory", self.workdir)
        for text in (*self.argv, *(k + v for k, v in self.env)):
            if "\0" in text:
                raise SetupError("an argument or environment value holds a NUL byte; "
                                 "remove it.")


@dataclass(frozen=True)
class BootConfig:
    """What must be known when PID 1 is cloned: its namespaces, its user, its cgroup. A
    ready spare (a Python cell's container made ahead) also carries its whole run."""
    uid: int
    gid: int
    rootless: bool
    network: str
    unconfined: bool
    cgroup_procs: tuple[str, ...]          # files PID 1 writes "0" into to join (v1: tasks)
    cgroup_dir: str | None                 # cgroup2: cloned straight into it (CLONE_INTO_CGROUP)
    run: RunConfig | None = None


def _absolute(what: str, path: str) -> None:
    if not path.startswith("/") or "\0" in path:
        raise SetupError(f"the {what} {path!r} is not an absolute path.")


# --- the wire: JSON of plain values, rebuilt and checked by type on arrival. `bytes` (the
# seccomp program, a few KiB) travel as base64 text: one encoding for every field, in the one
# memfd, checked like the rest. (A sealed memfd of its own would save ~10 µs of encoding but
# take one more fd through the fork server and a spare's boot, and a check of its own.)

def encode(obj) -> bytes:
    return json.dumps(_plain(obj), separators=(",", ":")).encode()


def decode(cls, data: bytes):
    """Rebuild a `cls` from encode()'s bytes; SetupError if anything is not as declared."""
    try:
        value = json.loads(data)
    except ValueError as err:
        raise SetupError(f"the run's configuration is garbled ({err}).") from None
    return _build(cls, value, cls.__name__)


def _plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_plain(v) for v in obj]
    if isinstance(obj, bytes):
        return binascii.b2a_base64(obj, newline=False).decode()
    return obj


_SCALARS = (str, int, bool, float)


def _build(tp, value, where: str):
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict) or set(value) != {f.name for f in
                                                         dataclasses.fields(tp)}:
            raise SetupError(f"the run's configuration has a malformed {where}.")
        return tp(**{f.name: _build(f.type, value[f.name], f"{where}.{f.name}")
                     for f in dataclasses.fields(tp)})
    if isinstance(tp, types.UnionType):
        for option in tp.__args__:
            if option is type(None) and value is None:
                return None
        options = [o for o in tp.__args__ if o is not type(None)]
        return _build(options[0], value, where)
    if getattr(tp, "__origin__", None) is tuple:
        args = tp.__args__
        if not isinstance(value, list):
            raise SetupError(f"the run's configuration has a malformed {where}.")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise SetupError(f"the run's configuration has a malformed {where}.")
        return tuple(_build(a, v, where) for a, v in zip(args, value))
    if tp in _SCALARS and type(value) is tp:
        return value
    if tp is bytes and type(value) is str:
        try:   # canonical base64 only (strict_mode= needs Python 3.11)
            data = binascii.a2b_base64(value)
            if binascii.b2a_base64(data, newline=False).decode() == value:
                return data
        except binascii.Error:
            pass
    raise SetupError(f"the run's configuration has a malformed {where}.")



# --- the channel: a config goes in a memfd, passed with the run's fds over a socket, so its
# size is bounded by the kernel's exec limits, not by a socket buffer

def send(sock, obj, fds=()) -> None:
    data = encode(obj)
    fd = os.memfd_create("nsmagic-config", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        socket.send_fds(sock, [b"config"], [fd, *fds])
    finally:
        os.close(fd)


def receive(sock, cls, max_fds: int = 0):
    """(config, fds) from send(); (None, []) when the other end closed the socket."""
    message, fds, _, _ = socket.recv_fds(sock, 16, max_fds + 1)
    if not message:
        for fd in fds:
            os.close(fd)
        return None, []
    if not fds:
        raise SetupError("the run's configuration came without its data.")
    config_fd, *rest = fds
    try:
        size, chunks, done = os.fstat(config_fd).st_size, [], 0
        while done < size:
            chunk = os.pread(config_fd, size - done, done)
            if not chunk:
                break
            chunks.append(chunk)
            done += len(chunk)
    finally:
        os.close(config_fd)
    try:
        return decode(cls, b"".join(chunks)), rest
    except BaseException:
        for fd in rest:
            os.close(fd)
        raise


__all__ = ["Bind", "BootConfig", "CgroupMount", "Dir", "Layer", "Link", "RootPlan",
           "RunConfig", "decode", "encode", "receive", "send"]
