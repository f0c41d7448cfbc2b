"""The one cgroup interface both backends (v1, v2) implement, and the Usage they both return."""

from __future__ import annotations

import errno
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from ..config import CgroupMount
from ..errors import CgroupError

PREFIX = "nsmagic-"


@dataclass
class Usage:
    """One sample of a run's cgroup counters. Sizes in bytes, times in microseconds."""

    time: float                      # time.monotonic() when read
    cpu_usec: int = 0                # CPU time used by all processes of the group
    throttled_usec: int = 0          # time the CPU quota held the group back
    memory_current: int = 0          # memory charged to the group, page cache included
    memory_peak: int | None = None   # kernel's own high-water mark, where the kernel keeps one
    inactive_file: int = 0           # reclaimable cache: current - inactive_file = working set
    oom_kills: int = 0
    pids_current: int = 0
    pids_peak: int | None = None
    io_read_bytes: int = 0           # block I/O the group did, over every device
    io_write_bytes: int = 0          # (v1 counts direct I/O only: buffered writes are
                                     # charged to the flusher, not to the group)
    net_rx_bytes: int = 0            # network bytes the container received and sent, on
    net_tx_bytes: int = 0            # its veth (no cgroup counts them: the runner adds them)

    @property
    def working_set(self) -> int:
        """What `docker stats` shows as memory usage."""
        return max(0, self.memory_current - self.inactive_file)


@dataclass(frozen=True)
class DeviceLimit:
    """Block I/O limits on one device (a whole disk), by its major:minor."""
    major: int
    minor: int
    read_bps: int | None = None
    write_bps: int | None = None
    read_iops: int | None = None
    write_iops: int | None = None

    @property
    def device(self) -> str:
        return f"{self.major}:{self.minor}"


@dataclass(frozen=True)
class Limits:
    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None
    io: tuple[DeviceLimit, ...] = ()
    io_weight: int | None = None     # 10-1000, Docker's --blkio-weight

    @property
    def any(self) -> bool:
        return bool(self.io) or any(v is not None for v in (self.memory, self.cpus, self.pids,
                                                             self.io_weight))

    @classmethod
    def of(cls, spec) -> Limits:
        """The limits a Spec asks for (its --device-* flags merged per device)."""
        per_device: dict[tuple[int, int], dict] = {}
        for field_name in ("read_bps", "write_bps", "read_iops", "write_iops"):
            for rate in getattr(spec, "device_" + field_name):
                per_device.setdefault((rate.major, rate.minor), {})[field_name] = rate.value
        io = tuple(DeviceLimit(major, minor, **values)
                   for (major, minor), values in sorted(per_device.items()))
        return cls(spec.memory, spec.cpus, spec.pids, io, spec.blkio_weight)


CPU_PERIOD_USEC = 100_000


class Cgroup(ABC):
    """A run's cgroup, in every hierarchy it needs.

    Contract: make() makes the group(s); apply() writes self.limits into them; create() does
    both (a spare makes its group early and gets its limits when its run comes). A new
    process joins by being cloned into clone_into() (where there is one) and by writing "0"
    into each of join_files(); procs_files() take any pid. usage() reads every counter once
    (from files kept open) and never raises once the group exists; kill() ends every process
    in the group and in groups below it, and returns when they are gone; destroy() removes
    the group(s), child groups first, and may be called more than once.
    """

    version: str = ""

    def __init__(self, name: str, limits: Limits):
        self.name = name
        self.limits = limits
        self._fds: dict[str, int] = {}

    def create(self) -> None:
        self.make()
        self.apply()

    @abstractmethod
    def make(self) -> None: ...

    @abstractmethod
    def apply(self) -> None: ...

    @abstractmethod
    def procs_files(self) -> list[str]:
        """Each directory's cgroup.procs: any process written there joins."""

    @abstractmethod
    def join_files(self) -> list[str]:
        """What a new process writes "0" into to join, once cloned into clone_into()."""

    @abstractmethod
    def usage(self) -> Usage: ...

    @abstractmethod
    def pids(self) -> list[int]: ...

    @abstractmethod
    def kill(self) -> None: ...

    @abstractmethod
    def directories(self) -> list[str]: ...

    @abstractmethod
    def clone_into(self) -> str | None:
        """The cgroup2 directory a process can be cloned straight into (CLONE_INTO_CGROUP),
        or None; where that fails (an older kernel), it writes "0" into its cgroup.procs."""

    @abstractmethod
    def mounts_inside(self) -> tuple[CgroupMount, ...]:
        """What the run's PID 1 mounts at /sys/fs/cgroup: the hierarchies the run is in,
        each seen from the run's own group (its cgroup namespace)."""

    @abstractmethod
    def read_limits(self) -> Limits:
        """The limits as the kernel holds them (for groups this process did not make)."""

    def destroy(self) -> None:
        """Processes first (the run's and any in child groups a workload made), then the
        groups, each one's children before it."""
        self.close()
        if self.pids():
            self.kill()
        for path in self.directories():
            remove_tree(path)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # Counters are read with pread on kept-open fds: ~16 µs a file instead of ~120 µs.
    def _read(self, path: str) -> str | None:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            self._fds[path] = fd
        try:
            return os.pread(fd, 65536, 0).decode()
        except OSError:
            return None


def read_keyed(text: str | None) -> dict[str, int]:
    """'key value' lines (memory.stat, cpu.stat, memory.events) into a dict."""
    out = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            pass
    return out


def read_int(text: str | None) -> int | None:
    try:
        return int((text or "").split()[0])
    except (ValueError, IndexError):
        return None


def read_limit(path: str, unlimited_above: int = 1 << 62) -> int | None:
    """A limit file's value; None for 'max', -1 or v1's page-rounded 'no limit'."""
    try:
        with open(path) as f:
            text = f.read().split()
    except OSError:
        return None
    if not text or text[0] in ("max", "-1"):
        return None
    try:
        value = int(text[0])
    except ValueError:
        raise CgroupError(f"cannot read the limit in {path}: {text[0]!r} is not a number.")
    return None if value >= unlimited_above else value


def write(path: str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())   # a cgroup file takes one value or rule a write
        finally:
            os.close(fd)
    except OSError as err:
        raise write_error(path, value, err) from err


def write_error(path: str, value: str, err: OSError) -> CgroupError:
    return CgroupError(f"cannot write {value!r} to {path}: {err.strerror.lower()}; "
                       f"{_hint(err)}")


def _hint(err: OSError) -> str:
    if err.errno == errno.EROFS:
        return ("the cgroup file system is mounted read-only here, as a container's is by "
                "default: limits need the runtime to give this container a writable, delegated "
                "cgroup (docs/kubernetes.md).")
    if err.errno in (errno.EACCES, errno.EPERM):
        if os.geteuid() == 0:
            return "root may not write this cgroup here (a container, or a locked hierarchy)."
        from .delegation import setup_command
        return f"run as root, or have root delegate a cgroup to you: {setup_command()}."
    if err.errno == errno.EBUSY:
        return "a process or a child group still uses it."
    if err.errno == errno.EINVAL:
        return "the kernel refused the value; check the limit."
    return "check the cgroup file system."


def make_dir(path: str) -> None:
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except OSError as err:
        raise CgroupError(f"cannot create cgroup {path}: {err.strerror.lower()}; "
                          f"{_hint(err)}") from err


def subtree(path: str) -> list[str]:
    """A group and every group below it (made by a workload with its own cgroup mount, or by
    a delegated user), deepest first: the order rmdir needs."""
    found = [here for here, _, _ in os.walk(path)]
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def subtree_pids(path: str) -> set[int]:
    """Every process in a group and the groups below it."""
    found: set[int] = set()
    for group in subtree(path):
        try:
            with open(os.path.join(group, "cgroup.procs")) as f:
                found.update(int(p) for p in f.read().split())
        except OSError:
            pass
    return found


def kill_until_empty(pids, what: str) -> None:
    """SIGKILL every process that pids() lists until it lists none (v1 has no cgroup.kill,
    and a process may fork while the others die)."""
    import signal
    for _ in range(200):
        found = pids()
        if not found:
            return
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)
    raise CgroupError(f"cannot kill the processes of {what}: they kept coming back.")


def remove_tree(path: str, tries: int = 50) -> None:
    """Remove a group with its child groups, children first."""
    for group in subtree(path):
        remove_dir(group, tries)


def remove_dir(path: str, tries: int = 50) -> None:
    """rmdir; a group whose last process just died can stay busy for a moment."""
    for attempt in range(tries):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if err.errno != errno.EBUSY:
                raise CgroupError(f"cannot remove cgroup {path}: {err.strerror.lower()}") from err
            if attempt + 1 < tries:
                time.sleep(0.01)
    raise CgroupError(f"cannot remove cgroup {path}: still busy after {tries * 10} ms; "
                      "a process in it did not die.")
