"""cgroup v1 backend: one directory per hierarchy, each run's group nested under the caller's
own group there. A run has a group in every hierarchy that is mounted (as runc does), so
that its cgroup namespace is rooted at its own group everywhere: a cgroup file system
mounted from inside (a nested namespace) shows the run's own group, never the host's tree.
On a hybrid host that includes the controller-less cgroup2.

Joining costs nothing much: PID 1 writes "0" to each `tasks` file, which moves only the
writing thread (PID 1 has one) and so skips the global lock whose every write to
cgroup.procs waits for an RCU grace period (1-10 ms each, measured here). Killing needs no
freezer: a run's processes live in its PID namespace, which dies with its PID 1, and the
pids limit bounds what a kill loop has to chase."""

from __future__ import annotations

import os
import time

from ..config import CgroupMount
from ..errors import CgroupError
from .base import (
    CPU_PERIOD_USEC,
    Cgroup,
    Limits,
    Usage,
    kill_until_empty,
    make_dir,
    read_int,
    read_keyed,
    read_limit,
    subtree_pids,
    write,
    write_error,
)
from .layout import Layout

# Docker's default device allow-list: nothing, then mknod of any node (opening it is what
# counts), null zero full random urandom, tty console ptmx, the pty slaves and tun.
DEVICE_RULES = ("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm",
                "c 1:9 rwm", "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm",
                "c 10:200 rwm")
THROTTLE_FILES = (("read_bps", "blkio.throttle.read_bps_device"),
                  ("write_bps", "blkio.throttle.write_bps_device"),
                  ("read_iops", "blkio.throttle.read_iops_device"),
                  ("write_iops", "blkio.throttle.write_iops_device"))
WEIGHT_FILES = ("blkio.weight", "blkio.bfq.weight")   # CFQ's (before 5.0), then BFQ's
SERVICE_BYTES = ("blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_service_bytes")


class CgroupV1(Cgroup):
    version = "v1"

    def __init__(self, name: str, limits: Limits, layout: Layout):
        super().__init__(name, limits)
        self.layout = layout
        self.dirs: dict[str, str] = {}
        for controller in layout.v1_run_hierarchies():
            parent = layout.v1_dir(controller)
            if parent is not None:
                self.dirs[controller] = os.path.join(parent, name)
        # hybrid: the cgroup2 beside, made as root only (it limits nothing; it is there so
        # that the namespace's root in that hierarchy is the run's too)
        self.unified_parent: str | None = None
        self.unified: str | None = None
        self._io_file = SERVICE_BYTES[0]
        _check_mounted(limits, self.dirs)

    @classmethod
    def attach(cls, name: str, dirs: dict[str, str]) -> CgroupV1:
        """A handle on an existing group (another runner's), to read it."""
        cg = cls.__new__(cls)
        Cgroup.__init__(cg, name, Limits())
        cg.layout = None
        cg.dirs = dict(dirs)
        cg.unified_parent = cg.unified = None
        cg._io_file = SERVICE_BYTES[0]
        cg.limits = cg.read_limits()
        return cg

    def read_limits(self) -> Limits:
        d = self.dirs
        quota = read_limit(f"{d['cpu']}/cpu.cfs_quota_us") if "cpu" in d else None
        period = read_limit(f"{d['cpu']}/cpu.cfs_period_us") if "cpu" in d else None
        return Limits(
            memory=read_limit(f"{d['memory']}/memory.limit_in_bytes") if "memory" in d else None,
            cpus=quota / period if quota and period else None,
            pids=read_limit(f"{d['pids']}/pids.max") if "pids" in d else None)

    def directories(self) -> list[str]:
        v1 = sorted(set(self.dirs.values()))   # co-mounted controllers share one directory
        return v1 + ([self.unified] if self.unified else [])

    def clone_into(self) -> str | None:
        return self.unified

    def join_files(self) -> list[str]:
        return [os.path.join(p, "tasks") for p in sorted(set(self.dirs.values()))]

    def procs_files(self) -> list[str]:
        return [os.path.join(p, "cgroup.procs") for p in self.directories()]

    def mounts_inside(self) -> tuple[CgroupMount, ...]:
        """Every controller's hierarchy, each showing the run's own group."""
        by_point: dict[str, list[str]] = {}
        for controller, point in self.layout.v1_mounts.items():
            if not controller.startswith("name=") and controller in self.dirs:
                by_point.setdefault(point, []).append(controller)
        return tuple(CgroupMount("cgroup", os.path.basename(p), ",".join(c))
                     for p, c in sorted(by_point.items()))

    def make(self) -> None:
        for path in sorted(set(self.dirs.values())):
            make_dir(path)
        self._inherit_cpuset()
        self._allow_devices()
        if self.layout.v2_mount and os.geteuid() == 0:
            from .v2 import make_run_group
            self.unified_parent, self.unified = make_run_group(self.layout, self.name)

    def _inherit_cpuset(self) -> None:
        """A new cpuset group has no CPUs and no memory nodes, and no task may join it
        until it has: the parent's, as runc does."""
        d = self.dirs.get("cpuset")
        for name in ("cpuset.cpus", "cpuset.mems") if d else ():
            if not _read_text(f"{d}/{name}"):
                write(f"{d}/{name}", _read_text(f"{os.path.dirname(d)}/{name}"))

    def _allow_devices(self) -> None:
        """Docker's allow-list, written when the group is made (a spare's: before its run):
        a device node an image or a volume brings opens nothing outside the list."""
        d = self.dirs.get("devices")
        if d is None or os.geteuid() != 0:
            # Only CAP_SYS_ADMIN may write a devices list. A user's run group is made in the
            # group setup-user delegated, and a new group starts with its parent's list: the
            # allow-list root wrote there when delegating.
            return
        write(f"{d}/devices.deny", "a")
        path = f"{d}/devices.allow"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as err:
            raise write_error(path, DEVICE_RULES[0], err) from err
        try:
            for rule in DEVICE_RULES:
                try:
                    os.write(fd, rule.encode())      # one rule a write, one open for all
                except PermissionError:
                    pass   # the caller's own group lacks it (nsmagic inside a container): it
                           # cannot be granted below, so it stays denied, the safe side
                except OSError as err:
                    raise write_error(path, rule, err) from err
        finally:
            os.close(fd)

    def apply(self) -> None:
        m, d = self.limits, self.dirs
        _check_mounted(m, d)
        # --- memory: the limit, and swap held at zero so the limit is real
        if m.memory is not None:
            write(f"{d['memory']}/memory.limit_in_bytes", str(m.memory))
            memsw = f"{d['memory']}/memory.memsw.limit_in_bytes"
            if os.path.exists(memsw):
                write(memsw, str(m.memory))
            else:
                write(f"{d['memory']}/memory.swappiness", "0")
        # --- cpu: CFS quota per period
        if m.cpus is not None:
            write(f"{d['cpu']}/cpu.cfs_period_us", str(CPU_PERIOD_USEC))
            write(f"{d['cpu']}/cpu.cfs_quota_us", str(int(m.cpus * CPU_PERIOD_USEC)))
        # --- pids
        if m.pids is not None:
            write(f"{d['pids']}/pids.max", str(m.pids))
        # --- block I/O: throttles per device, and a weight
        for limit in m.io:
            for key, name in THROTTLE_FILES:
                if getattr(limit, key) is not None:
                    write(f"{d['blkio']}/{name}", f"{limit.device} {getattr(limit, key)}")
        if m.io_weight is not None:
            write(_weight_file(d["blkio"]), str(m.io_weight))

    def usage(self) -> Usage:
        d, now = self.dirs, time.monotonic()
        u = Usage(time=now)
        # --- memory (under v1 the OOM counter lives only in the run's own group)
        if "memory" in d:
            u.memory_current = read_int(self._read(f"{d['memory']}/memory.usage_in_bytes")) or 0
            u.memory_peak = read_int(self._read(f"{d['memory']}/memory.max_usage_in_bytes"))
            stat = read_keyed(self._read(f"{d['memory']}/memory.stat"))
            u.inactive_file = stat.get("total_inactive_file", stat.get("inactive_file", 0))
            u.oom_kills = read_keyed(self._read(f"{d['memory']}/memory.oom_control")).get(
                "oom_kill", 0)
        # --- cpu
        if "cpuacct" in d:
            u.cpu_usec = (read_int(self._read(f"{d['cpuacct']}/cpuacct.usage")) or 0) // 1000
        if "cpu" in d:
            stat = read_keyed(self._read(f"{d['cpu']}/cpu.stat"))
            u.throttled_usec = stat.get("throttled_time", 0) // 1000
        # --- pids
        if "pids" in d:
            u.pids_current = read_int(self._read(f"{d['pids']}/pids.current")) or 0
            u.pids_peak = read_int(self._read(f"{d['pids']}/pids.peak"))
        # --- block I/O
        if "blkio" in d:
            u.io_read_bytes, u.io_write_bytes = self._service_bytes(d["blkio"])
        return u

    def _service_bytes(self, d: str) -> tuple[int, int]:
        text = self._read(f"{d}/{self._io_file}")
        if text is None and self._io_file == SERVICE_BYTES[0]:   # a kernel before 4.17
            self._io_file = SERVICE_BYTES[1]
            text = self._read(f"{d}/{self._io_file}")
        read = written = 0
        for line in (text or "").splitlines():   # "8:0 Read 4096", ..., "Total 8192"
            parts = line.split()
            if len(parts) == 3 and parts[2].isdigit():
                if parts[1] == "Read":
                    read += int(parts[2])
                elif parts[1] == "Write":
                    written += int(parts[2])
        return read, written

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.directories():
            found |= subtree_pids(path)
        return sorted(found)

    def kill(self) -> None:
        """SIGKILL every process, in child groups too, until none is left (v1 has no
        cgroup.kill)."""
        kill_until_empty(self.pids, self.name)

    def destroy(self) -> None:
        super().destroy()
        if self.unified_parent:
            from .v2 import remove_shared_parent
            remove_shared_parent(self.unified_parent)


def _check_mounted(limits: Limits, dirs: dict[str, str]) -> None:
    """Each limit asked for needs its controller's hierarchy."""
    for wanted, controller, flag in ((limits.memory, "memory", "--mem"),
                                     (limits.cpus, "cpu", "--cpus"),
                                     (limits.pids, "pids", "--pids"),
                                     (limits.io or limits.io_weight, "blkio",
                                      "--device-* and --blkio-weight")):
        if wanted and controller not in dirs:
            raise CgroupError(f"the {controller} controller is not mounted; mount cgroup v1 "
                              f"{controller} or drop {flag}.")


def _weight_file(d: str) -> str:
    for name in WEIGHT_FILES:
        if os.path.exists(f"{d}/{name}"):
            return f"{d}/{name}"
    raise CgroupError("--blkio-weight needs a proportional I/O scheduler, and this kernel has "
                      f"none for cgroups ({' and '.join(WEIGHT_FILES)} are missing); load BFQ "
                      "(modprobe bfq) and select it for the disk, or drop --blkio-weight.")


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""
