"""cgroup v1 backend: one directory per controller hierarchy (memory, cpuacct, pids, and cpu
when there is a quota), each run's group nested under the caller's own group there.

Joining a v1 group costs an RCU grace period per hierarchy (1-5 ms each, measured here: the
largest single step of a start), so a run joins only the hierarchies it uses. Killing needs no
freezer: a run's processes live in its PID namespace, which dies with its PID 1, and the
pids limit bounds what a kill loop has to chase."""

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
    write,
)
from .layout import Layout


class CgroupV1(Cgroup):
    version = "v1"

    def __init__(self, name: str, limits: Limits, layout: Layout):
        super().__init__(name, limits)
        self.layout = layout
        self.dirs: dict[str, str] = {}
        wanted = ["memory", "cpuacct", "pids"] + (["cpu"] if limits.cpus is not None else [])
        for controller in wanted:
            parent = layout.v1_dir(controller)
            if parent is not None:
                self.dirs[controller] = os.path.join(parent, name)
        if limits.memory is not None and "memory" not in self.dirs:
            raise CgroupError("the memory controller is not mounted; mount cgroup v1 memory "
                              "or drop --mem.")

    @classmethod
    def attach(cls, name: str, dirs: dict[str, str]) -> CgroupV1:
        """A handle on an existing group (another runner's), to read it."""
        cg = cls.__new__(cls)
        Cgroup.__init__(cg, name, Limits())
        cg.layout = None
        cg.dirs = dict(dirs)
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
        return sorted(set(self.dirs.values()))   # cpu and cpuacct may share one mount

    def clone_into(self) -> str | None:
        return None

    def mounts_inside(self) -> tuple[CgroupMount, ...]:
        """Only the hierarchies the run joined: another would show the host's whole tree."""
        mounts = self.layout.v1_mounts
        joined = {mounts[c] for c in self.dirs if c in mounts}
        by_point: dict[str, list[str]] = {}
        for controller, point in mounts.items():
            if not controller.startswith("name=") and point in joined:
                by_point.setdefault(point, []).append(controller)
        return tuple(CgroupMount("cgroup", os.path.basename(p), ",".join(c))
                     for p, c in sorted(by_point.items()))

    def make(self) -> None:
        for path in self.directories():
            make_dir(path)

    def apply(self) -> None:
        m, d = self.limits, self.dirs
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
            if "cpu" not in d:
                raise CgroupError("the cpu controller is not mounted; mount cgroup v1 cpu "
                                  "or drop --cpus.")
            write(f"{d['cpu']}/cpu.cfs_period_us", str(CPU_PERIOD_USEC))
            write(f"{d['cpu']}/cpu.cfs_quota_us", str(int(m.cpus * CPU_PERIOD_USEC)))
        # --- pids
        if m.pids is not None:
            if "pids" not in d:
                raise CgroupError("the pids controller is not mounted; mount cgroup v1 pids "
                                  "or drop --pids.")
            write(f"{d['pids']}/pids.max", str(m.pids))

    def procs_files(self) -> list[str]:
        return [os.path.join(p, "cgroup.procs") for p in self.directories()]

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
        return u

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.procs_files():
            try:
                with open(path) as f:
                    found.update(int(p) for p in f.read().split())
            except OSError:
                pass
        return sorted(found)

    def kill(self) -> None:
        """SIGKILL every process until none is left (v1 has no cgroup.kill)."""
        for _ in range(200):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)
        raise CgroupError(f"cannot kill the processes of {self.name}: they kept coming back.")
