"""A run's accounting as a time series: cgroup samples in, plottable numbers out.

Pure data, stdlib only, no plotting: `display.py` draws it, tests and the benchmark read it.

    series = Series(start=run.started)
    series.add(usage)               # a nsmagic.cgroups.Usage, every spec.interval seconds
    series.t, series.cpu, series.memory, series.oom_times, series.io_read, series.io_write

Counters that only grow (CPU time, throttled time, bytes read and written) become rates over
each interval: CPU as a percent of one core (100 = one core busy the whole interval, 200 =
two), throttled time in the same unit (the CFS bandwidth timer accounts it per CPU, so it is
"core-time held back"), block I/O in MiB/s.
Levels (memory, working set, pids) are kept as read. An OOM kill is where `oom_kills` grows.

Long runs stay cheap: past `max_points` samples, neighbours are merged in pairs (rates
averaged, levels kept at their maximum, so a peak never disappears from the plot)."""

from __future__ import annotations

import math

MiB = 1024 * 1024
NAN = float("nan")

__all__ = ["Series", "MiB"]


class Series:
    """Samples of one run, aligned lists: t[i] goes with cpu[i], memory[i], ..."""

    def __init__(self, start: float | None = None, max_points: int = 4096):
        self.start = start            # monotonic time of t = 0 (the run's start); None: 1st sample
        self.max_points = max(16, max_points)
        self.t: list[float] = []                 # seconds since start
        self.cpu: list[float] = []               # % of one core over the interval ending at t
        self.throttled: list[float] = []         # throttled core-time over the interval, in %
        self.memory: list[float] = []            # MiB charged (page cache included)
        self.working_set: list[float] = []       # MiB, usage - inactive file (docker stats)
        self.peak: list[float] = []              # MiB, high-water mark so far (the kernel's,
                                                 # which sees what falls between samples)
        self.pids: list[int] = []
        self.io_read: list[float] = []           # MiB/s read from block devices
        self.io_write: list[float] = []          # MiB/s written to them
        self.oom_times: list[float] = []         # t of each OOM kill (one entry per kill)
        self.oom_kills = 0
        self.memory_peak = 0                     # bytes: the kernel's peak where it keeps one
        self.pids_peak = 0
        self.cpu_s = 0.0                         # totals from the counters, not the plot
        self.throttled_s = 0.0
        self.io_read_bytes = 0
        self.io_write_bytes = 0
        self.samples = 0                         # how many add() calls, merging aside
        self._last = None                        # the previous Usage

    def __len__(self) -> int:
        return len(self.t)

    # --- in

    def add(self, usage) -> None:
        """Take one cgroup sample (nsmagic.cgroups.Usage). Samples must come in time order;
        a repeated timestamp is ignored."""
        prev = self._last
        if self.start is None:
            self.start = usage.time
        if prev is not None and usage.time <= prev.time:
            return
        t = usage.time - self.start
        if prev is None:
            cpu = throttled = read = written = NAN          # a rate needs two samples
        else:
            dt_usec = (usage.time - prev.time) * 1e6
            cpu = max(0, usage.cpu_usec - prev.cpu_usec) / dt_usec * 100.0
            throttled = max(0, usage.throttled_usec - prev.throttled_usec) / dt_usec * 100.0
            read = max(0, usage.io_read_bytes - prev.io_read_bytes) / MiB / dt_usec * 1e6
            written = max(0, usage.io_write_bytes - prev.io_write_bytes) / MiB / dt_usec * 1e6
        kills = usage.oom_kills - (prev.oom_kills if prev is not None else 0)
        if kills > 0:
            self.oom_times.extend([t] * kills)
        self.oom_kills = max(self.oom_kills, usage.oom_kills)
        self.t.append(t)
        self.cpu.append(cpu)
        self.throttled.append(throttled)
        self.memory.append(usage.memory_current / MiB)
        self.working_set.append(usage.working_set / MiB)
        self.pids.append(usage.pids_current)
        self.io_read.append(read)
        self.io_write.append(written)
        self.memory_peak = max(self.memory_peak, usage.memory_current, usage.memory_peak or 0)
        self.peak.append(self.memory_peak / MiB)
        self.pids_peak = max(self.pids_peak, usage.pids_current, usage.pids_peak or 0)
        self.cpu_s = usage.cpu_usec / 1e6
        self.throttled_s = usage.throttled_usec / 1e6
        self.io_read_bytes = usage.io_read_bytes
        self.io_write_bytes = usage.io_write_bytes
        self.samples += 1
        self._last = usage
        if len(self.t) > self.max_points:
            self._halve()

    def extend(self, usages) -> None:
        for usage in usages:
            self.add(usage)

    def mark_oom(self, total_kills: int, t: float | None = None) -> None:
        """The result knows of more kills than the samples saw (a kill after the last
        sample): mark the missing ones at `t` (default: the last sample)."""
        missing = total_kills - len(self.oom_times)
        if missing > 0:
            when = t if t is not None else (self.t[-1] if self.t else 0.0)
            self.oom_times.extend([when] * missing)
            self.oom_kills = max(self.oom_kills, total_kills)

    def _halve(self) -> None:
        """Merge neighbours in pairs; the first point (rate NaN) stays as it is."""
        def pairs(values, merge):
            head, rest = values[:1], values[1:]
            out = [merge(rest[i], rest[i + 1]) for i in range(0, len(rest) - 1, 2)]
            if len(rest) % 2:
                out.append(rest[-1])
            return head + out

        def mean(a, b):
            return (a + b) / 2

        self.t = pairs(self.t, lambda a, b: b)
        self.cpu = pairs(self.cpu, mean)
        self.throttled = pairs(self.throttled, mean)
        self.memory = pairs(self.memory, max)
        self.working_set = pairs(self.working_set, max)
        self.peak = pairs(self.peak, max)
        self.pids = pairs(self.pids, max)
        self.io_read = pairs(self.io_read, mean)
        self.io_write = pairs(self.io_write, mean)

    # --- out

    @property
    def duration(self) -> float:
        return self.t[-1] if self.t else 0.0

    @property
    def io_seen(self) -> bool:
        """The run read or wrote a block device (buffered writes count under v2 only)."""
        return self.io_read_bytes > 0 or self.io_write_bytes > 0

    def current(self) -> dict:
        """The numbers of the stats line: the latest sample and the peaks so far."""
        if not self.t:
            return {"t": 0.0, "cpu": None, "memory": 0.0, "working_set": 0.0,
                    "memory_peak": 0.0, "pids": 0, "pids_peak": 0, "oom_kills": 0,
                    "throttled_s": 0.0, "cpu_s": 0.0, "io_read": None, "io_write": None,
                    "io_read_bytes": 0, "io_write_bytes": 0}
        return {"t": self.t[-1], "cpu": _number(self.cpu[-1]),
                "memory": self.memory[-1], "working_set": self.working_set[-1],
                "memory_peak": self.memory_peak / MiB, "pids": self.pids[-1],
                "pids_peak": self.pids_peak, "oom_kills": self.oom_kills,
                "throttled_s": self.throttled_s, "cpu_s": self.cpu_s,
                "io_read": _number(self.io_read[-1]), "io_write": _number(self.io_write[-1]),
                "io_read_bytes": self.io_read_bytes, "io_write_bytes": self.io_write_bytes}

    def cpu_median(self, since: float = 0.0, until: float | None = None) -> float | None:
        """Median CPU % of the intervals ending in [since, until]; None without any."""
        values = sorted(c for t, c in zip(self.t, self.cpu)
                        if not math.isnan(c) and t >= since and (until is None or t <= until))
        if not values:
            return None
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    def max_of(self, name: str) -> float:
        values = [v for v in getattr(self, name) if not math.isnan(v)]
        return max(values) if values else 0.0


def _number(rate: float) -> float | None:
    return None if math.isnan(rate) else rate
