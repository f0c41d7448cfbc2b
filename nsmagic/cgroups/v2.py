"""cgroup v2 backend: one unified directory per run. As root, runs live under a top-level
`nsmagic` group; as a user with a delegated subtree, under the caller's own group, once the
processes of that group are moved to a leaf (a group that hands controllers to its children
may not hold processes itself: cgroup v2's "no internal processes" rule)."""

from __future__ import annotations

import os
import signal
import time

from ..config import CgroupMount
from ..errors import CgroupError
from .base import (
    CPU_PERIOD_USEC,
    Cgroup,
    Limits,
    Usage,
    make_dir,
    read_int,
    read_keyed,
    read_limit,
    subtree_pids,
    write,
)
from .layout import WANTED_V2, Layout

IO_MAX_KEYS = (("rbps", "read_bps"), ("wbps", "write_bps"), ("riops", "read_iops"),
               ("wiops", "write_iops"))
# The leaf a delegated group's own processes move to (the runner, and whatever else the
# group held: a Jupyter server, other kernels). Never swept: it holds live processes.
LEAF = "nsmagic-leaf"


def make_run_group(layout: Layout, name: str) -> tuple[str, str]:
    """(parent, group): the run's group made in its parent. The shared parent goes when its
    last run leaves it (remove_shared_parent, in another run's teardown): made again if it
    went between the two mkdirs."""
    for attempt in range(5):
        parent = run_parent(layout)
        group = os.path.join(parent, name)
        try:
            make_dir(group)
        except CgroupError as err:
            if isinstance(err.__cause__, FileNotFoundError) and attempt < 4:
                continue
            raise
        return parent, group


def run_parent(layout: Layout) -> str:
    """The directory a run's group is made in; enables the controllers it needs on the way."""
    mount = layout.v2_mount
    if os.geteuid() == 0:
        parent = os.path.join(mount, "nsmagic")
        make_dir(parent)
        _enable(mount, layout.v2_controllers())
        _enable(parent, layout.v2_controllers())
        return parent
    own = layout.v2_dir()
    if layout.delegated_v2 and not _within(own, layout.delegated_v2):
        from .delegation import outside_message
        raise CgroupError(outside_message(layout.delegated_v2, own))
    if os.path.basename(own) == LEAF:
        # Put here by root (a spawner's join) or by an earlier runner of this user: the
        # parent may not hand its controllers down yet.
        parent = os.path.dirname(own)
        _enable(parent, _available(parent))
        return parent
    if not os.access(os.path.join(own, "cgroup.subtree_control"), os.W_OK):
        from .delegation import setup_command
        raise CgroupError(f"the cgroup {own} is not delegated to this user; run as root, have "
                          f"root delegate one to you ({setup_command()}), or start the kernel "
                          "in a delegated scope (systemd-run --user --scope -p Delegate=yes "
                          "...).")
    leaf = os.path.join(own, LEAF)
    make_dir(leaf)
    for pid in _read_words(os.path.join(own, "cgroup.procs")):
        try:
            write(os.path.join(leaf, "cgroup.procs"), pid)
        except CgroupError:
            pass  # a process that left meanwhile
    _enable(own, _available(own))
    return own


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _read_words(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except OSError:
        return []


def _available(path: str) -> list[str]:
    return _read_words(os.path.join(path, "cgroup.controllers"))


def _enable(path: str, available: list[str]) -> None:
    wanted = [c for c in WANTED_V2 if c in available]
    current = _read_words(os.path.join(path, "cgroup.subtree_control"))
    missing = [c for c in wanted if c not in current]
    if missing:
        write(os.path.join(path, "cgroup.subtree_control"), " ".join("+" + c for c in missing))


class CgroupV2(Cgroup):
    version = "v2"

    def __init__(self, name: str, limits: Limits, layout: Layout):
        super().__init__(name, limits)
        self.layout = layout
        self.parent: str | None = None
        self.dir: str | None = None

    @classmethod
    def attach(cls, name: str, path: str, layout: Layout) -> CgroupV2:
        """A handle on an existing group (another runner's), to read it."""
        cg = cls(name, Limits(), layout)
        cg.dir, cg.parent = path, os.path.dirname(path)
        cg.limits = cg.read_limits()
        return cg

    def read_limits(self) -> Limits:
        quota, period = (_read_words(f"{self.dir}/cpu.max") + ["max", "100000"])[:2]
        try:
            cpus = int(quota) / int(period) if quota != "max" else None
        except (ValueError, ZeroDivisionError):
            raise CgroupError(f"cannot read the limit in {self.dir}/cpu.max: "
                              f"{quota} {period!r} is not a quota and a period.")
        return Limits(memory=read_limit(f"{self.dir}/memory.max"), cpus=cpus,
                      pids=read_limit(f"{self.dir}/pids.max"))

    def directories(self) -> list[str]:
        return [self.dir] if self.dir else []

    def clone_into(self) -> str | None:
        return self.dir

    def join_files(self) -> list[str]:
        return []     # cloned into its group

    def mounts_inside(self) -> tuple[CgroupMount, ...]:
        return (CgroupMount("cgroup2", "", ""),)

    def make(self) -> None:
        self.parent, self.dir = make_run_group(self.layout, self.name)

    def apply(self) -> None:
        enabled = _available(self.dir)
        m = self.limits
        for flag, value, controller in (("--mem", m.memory, "memory"), ("--cpus", m.cpus, "cpu"),
                                        ("--pids", m.pids, "pids"),
                                        ("--device-* and --blkio-weight",
                                         m.io or m.io_weight, "io")):
            if value is not None and controller not in enabled:
                raise CgroupError(f"the {controller} controller is not available in "
                                  f"{self.parent}; enable it in its cgroup.subtree_control "
                                  f"or drop {flag}.")
        # --- memory: the limit, and swap held at zero so the limit is real
        if m.memory is not None:
            write(f"{self.dir}/memory.max", str(m.memory))
            if os.path.exists(f"{self.dir}/memory.swap.max"):
                write(f"{self.dir}/memory.swap.max", "0")
        # --- cpu: quota per period
        if m.cpus is not None:
            write(f"{self.dir}/cpu.max", f"{int(m.cpus * CPU_PERIOD_USEC)} {CPU_PERIOD_USEC}")
        # --- pids
        if m.pids is not None:
            write(f"{self.dir}/pids.max", str(m.pids))
        # --- block I/O: one io.max line per device, and a weight
        for limit in m.io:
            keys = [f"{key}={getattr(limit, field)}" for key, field in IO_MAX_KEYS
                    if getattr(limit, field) is not None]
            write(f"{self.dir}/io.max", f"{limit.device} {' '.join(keys)}")
        if m.io_weight is not None:
            write(*_weight(self.dir, m.io_weight))

    def procs_files(self) -> list[str]:
        return [f"{self.dir}/cgroup.procs"]

    def usage(self) -> Usage:
        d = self.dir
        u = Usage(time=time.monotonic())
        # --- memory
        u.memory_current = read_int(self._read(f"{d}/memory.current")) or 0
        u.memory_peak = read_int(self._read(f"{d}/memory.peak"))
        u.inactive_file = read_keyed(self._read(f"{d}/memory.stat")).get("inactive_file", 0)
        u.oom_kills = read_keyed(self._read(f"{d}/memory.events")).get("oom_kill", 0)
        # --- cpu
        stat = read_keyed(self._read(f"{d}/cpu.stat"))
        u.cpu_usec = stat.get("usage_usec", 0)
        u.throttled_usec = stat.get("throttled_usec", 0)
        # --- pids
        u.pids_current = read_int(self._read(f"{d}/pids.current")) or 0
        u.pids_peak = read_int(self._read(f"{d}/pids.peak"))
        # --- block I/O
        u.io_read_bytes, u.io_write_bytes = _io_bytes(self._read(f"{d}/io.stat"))
        return u

    def pids(self) -> list[int]:
        return sorted(subtree_pids(self.dir)) if self.dir else []

    def kill(self) -> None:
        if os.path.exists(f"{self.dir}/cgroup.kill"):     # 5.14+: one write kills the group
            write(f"{self.dir}/cgroup.kill", "1")
            for _ in range(200):
                if not self.pids():
                    return
                time.sleep(0.005)
            raise CgroupError(f"cannot kill the processes of {self.dir}: they did not die.")
        for _ in range(100):                                # older: freeze, kill, thaw
            pids = self.pids()
            if not pids:
                return
            write(f"{self.dir}/cgroup.freeze", "1")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            write(f"{self.dir}/cgroup.freeze", "0")
            time.sleep(0.005)
        raise CgroupError(f"cannot kill the processes of {self.dir}: they kept coming back "
                          "while frozen and killed 100 times.")

    def destroy(self) -> None:
        super().destroy()
        if self.parent:
            remove_shared_parent(self.parent)


def remove_shared_parent(parent: str) -> None:
    """The shared `nsmagic` parent (root's) goes when the last run leaves it; a busy one
    stays."""
    if os.geteuid() == 0 and os.path.basename(parent) == "nsmagic":
        try:
            os.rmdir(parent)
        except OSError:
            pass


def _io_bytes(text: str | None) -> tuple[int, int]:
    """io.stat: "8:0 rbytes=4096 wbytes=0 rios=1 ..." per device, summed."""
    read = written = 0
    for line in (text or "").splitlines():
        for pair in line.split()[1:]:
            key, _, value = pair.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                written += int(value)
    return read, written


def _weight(d: str, weight: int) -> tuple[str, str]:
    """BFQ's io.bfq.weight takes Docker's 10-1000 as it is; io.weight (the iocost
    controller) has 1-10000, mapped from 10-1000 linearly as runc maps it."""
    if os.path.exists(f"{d}/io.bfq.weight"):
        return f"{d}/io.bfq.weight", str(weight)
    if os.path.exists(f"{d}/io.weight"):
        return f"{d}/io.weight", f"default {1 + (weight - 10) * 9999 // 990}"
    raise CgroupError("--blkio-weight needs a proportional I/O controller, and this kernel has "
                      "none for cgroups (io.bfq.weight and io.weight are missing); load BFQ "
                      "(modprobe bfq) and select it for the disk, or drop --blkio-weight.")
