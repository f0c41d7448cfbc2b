"""What a run did: one Result, built in one place (build), and one function (rows) that makes
the rows every view formats: the summary line, the HTML table, the last frame's header, the
CLI's JSON."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from .cgroups import Usage

EXIT_SETUP = 125


@dataclass(frozen=True)
class Stop:
    """How a run was ended from outside, if it was."""
    timed_out: bool = False
    interrupted: bool = False
    by: str | None = None                # "SIGINT", "SIGTERM" or "SIGKILL"


@dataclass(frozen=True)
class Result:
    """What a run did, in the fields `docker inspect`/`docker stats` would show."""

    id: str
    name: str
    exit_code: int | None = None
    error: str | None = None              # why it could not run, or why it exited 125-127
    oom_kills: int = 0
    timed_out: bool = False
    interrupted: bool = False
    stopped_by: str | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    throttled_s: float = 0.0
    memory_peak: int | None = None
    memory_limit: int | None = None
    pids_peak: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    io_read_bytes: int | None = None       # block I/O, where the run's group counted it
    io_write_bytes: int | None = None
    io_limits: tuple[str, ...] = ()        # "write 1.0 MiB/s on /dev/loop3", ...
    cgroup_version: str | None = None
    limits_enforced: bool = True
    stdout: str | None = None             # --out / --err: the captured text
    stderr: str | None = None
    samples: tuple[Usage, ...] = field(default=(), repr=False)
    profile: list = field(default_factory=list, repr=False)   # [(step, monotonic seconds)]

    @property
    def oom_killed(self) -> bool:
        return self.oom_kills > 0

    @property
    def signal(self) -> int | None:
        code = self.exit_code
        return code - 128 if code is not None and 128 < code < 128 + 65 else None

    def summary(self) -> str:
        """The one-line summary after a run."""
        if self.error and self.exit_code in (EXIT_SETUP, None):
            return f"nsmagic: {self.error}"
        return " · ".join(row.phrase for row in rows(self))

    def profile_table(self) -> str:
        """Each step's cost: where a container's start-up and teardown time goes."""
        if not self.profile:
            return "no profile: run with --profile"
        marks = sorted(self.profile, key=lambda m: m[1])
        start = next((t for step, t in marks if step == "start"), marks[0][1])
        ahead = [m for m in marks if m[1] < start]
        lines = [f"{'step (done)':<32} {'ms':>8} {'total':>8}"]
        if len(ahead) > 1:   # a ready spare's steps, done before this run was asked for
            lines += ["made ahead, while no run waited:", *_steps(ahead), "the run:"]
        return "\n".join(lines + _steps([m for m in marks if m[1] >= start]))

    def to_dict(self) -> dict:
        skip = ("samples", "profile")
        d = {k: v for k, v in self.__dict__.items() if k not in skip}
        d["oom_killed"] = self.oom_killed
        return d


def build(run, usage: Usage | None, samples: list[Usage], stop: Stop,
          stdout: str | None = None, stderr: str | None = None) -> Result:
    """The Result of a run (runtime.launcher.Run) that has ended; `usage` is its group's
    last reading (read before the group goes: v1 keeps OOM kills only there)."""
    spec = run.spec
    pids_peak = None
    if usage is not None:
        pids_peak = usage.pids_peak
        if pids_peak is None and samples:
            pids_peak = max(s.pids_current for s in samples)
    return Result(
        run.id, run.name, exit_code=run.exit_code, error=run.error,
        oom_kills=usage.oom_kills if usage else 0,
        timed_out=stop.timed_out, interrupted=stop.interrupted, stopped_by=stop.by,
        wall_s=(run.ended or run.started) - run.started,
        cpu_s=usage.cpu_usec / 1e6 if usage else 0.0,
        throttled_s=usage.throttled_usec / 1e6 if usage else 0.0,
        memory_peak=((usage.memory_peak if usage.memory_peak is not None
                      else usage.memory_current) if usage else None),
        memory_limit=spec.memory, pids_peak=pids_peak, cpus=spec.cpus, pids_limit=spec.pids,
        io_read_bytes=usage.io_read_bytes if usage else None,
        io_write_bytes=usage.io_write_bytes if usage else None, io_limits=io_limits(spec),
        cgroup_version=run.cgroup.version if run.cgroup else None,
        limits_enforced=run.limits_enforced, stdout=stdout, stderr=stderr,
        samples=tuple(samples), profile=run.marks)


@dataclass(frozen=True)
class Row:
    label: str           # the table's left column
    value: str           # the table's right column
    phrase: str          # the same, as a phrase of the one-line summary
    alert: bool = False  # shown in red


def rows(r: Result) -> list[Row]:
    """The rows of every view of a result, in order."""
    from .spec import format_size
    signal_name = f" ({_signal_name(r.signal)})" if r.signal else ""
    out = [Row("exit code", f"{r.exit_code}{signal_name}"
               + (" (OOM killed)" if r.oom_killed else ""),
               f"exit {r.exit_code}{signal_name}", alert=r.exit_code not in (0, None)),
           Row("wall time", f"{r.wall_s:.2f} s", f"{r.wall_s:.2f} s wall")]
    share = f" ({r.cpu_s / r.wall_s * 100:.0f} % of one core)" if r.wall_s > 0 else ""
    out.append(Row("CPU time", f"{r.cpu_s:.2f} s{share}", f"{r.cpu_s:.2f} s CPU"))
    if r.cpus or r.throttled_s:
        quota = f" (--cpus {r.cpus:g})" if r.cpus else ""
        out.append(Row("throttled", f"{r.throttled_s:.2f} s{quota}",
                       f"throttled {r.throttled_s:.2f} s"))
    memory = format_size(r.memory_peak) + (f" of {format_size(r.memory_limit)}"
                                           if r.memory_limit else "")
    out.append(Row("memory peak", memory, f"peak {memory}"))
    out.append(Row("OOM kills", str(r.oom_kills),
                   f"OOM killed ({r.oom_kills})" if r.oom_killed else "no OOM kill",
                   alert=r.oom_killed))
    if r.pids_peak is not None:
        of = f" of {r.pids_limit}" if r.pids_limit else ""
        out.append(Row("pids peak", f"{r.pids_peak}{of}", f"{r.pids_peak} pids peak{of}"))
    if r.io_read_bytes or r.io_write_bytes or r.io_limits:
        done = (f"read {format_size(r.io_read_bytes or 0)}, "
                f"written {format_size(r.io_write_bytes or 0)}")
        limits = f" ({'; '.join(r.io_limits)})" if r.io_limits else ""
        out.append(Row("disk I/O", done + limits, f"disk {done}{limits}"))
    if r.timed_out:
        out.append(Row("stopped", "timed out", "timed out", alert=True))
    elif r.interrupted:
        by = f" ({r.stopped_by})" if r.stopped_by else ""
        out.append(Row("stopped", f"interrupted{by}", f"interrupted{by}", alert=True))
    if not r.limits_enforced:
        out.append(Row("limits", "NOT enforced", "limits NOT enforced", alert=True))
    return out


def io_limits(spec) -> tuple[str, ...]:
    """The run's --device-* and --blkio-weight, as phrases."""
    from .spec import format_size
    phrases = []
    for name, unit in (("read_bps", ""), ("write_bps", ""), ("read_iops", " IOPS"),
                       ("write_iops", " IOPS")):
        direction = name.split("_")[0]
        for rate in getattr(spec, "device_" + name):
            value = f"{format_size(rate.value)}/s" if not unit else f"{rate.value}{unit}"
            phrases.append(f"{direction} {value} on {rate.path}")
    if spec.blkio_weight is not None:
        phrases.append(f"weight {spec.blkio_weight}")
    return tuple(phrases)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _steps(marks: list) -> list[str]:
    t0 = prev = marks[0][1]
    lines = [f"{marks[0][0]:<32} {'':>8} {0:8.2f}"]
    for step, t in marks[1:]:
        lines.append(f"{step:<32} {(t - prev) * 1e3:8.2f} {(t - t0) * 1e3:8.2f}")
        prev = t
    return lines


__all__ = ["Result", "Row", "Stop", "build", "rows"]
