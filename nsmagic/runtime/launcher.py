"""A run from the runner's side: take a spare (or clone a PID 1), hand it the run, read its
status, stop it, and gather its result."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import time
from dataclasses import dataclass, field

from .. import cgroups
from ..errors import CgroupError, NsmagicError, SetupError
from ..spec import Spec
from .pid1 import Init, Zygote, run_config, stdio_pipes
from .spares import Endings, Spare, SpareKind, Spares, make_spare, ready_spec

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WARM_SPARES = True   # keep one PID 1 ready per kind of run (see Spares)
READY_SPARES = True  # and for the latest Python cell, its whole container (see ready_spec)


def _swept_once():
    """Remove what runners killed earlier left behind, once per process."""
    if not getattr(_swept_once, "done", False):
        _swept_once.done = True
        try:
            cgroups.sweep()
        except (OSError, NsmagicError):
            pass


@dataclass
class Result:
    """What a run did, in the fields `docker inspect`/`docker stats` would show."""

    id: str
    name: str
    exit_code: int | None = None
    error: str | None = None              # why nsmagic itself could not run it
    oom_kills: int = 0
    timed_out: bool = False
    interrupted: bool = False
    stopped_by: str | None = None         # "SIGINT", "SIGTERM" or "SIGKILL" when we stopped it
    wall_s: float = 0.0
    cpu_s: float = 0.0
    throttled_s: float = 0.0
    memory_peak: int | None = None
    memory_limit: int | None = None
    pids_peak: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    cgroup_version: str | None = None
    limits_enforced: bool = True
    stdout: str | None = None
    stderr: str | None = None
    samples: list = field(default_factory=list, repr=False)
    profile: list = field(default_factory=list, repr=False)   # [(step, monotonic seconds)]

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

    @property
    def oom_killed(self) -> bool:
        return self.oom_kills > 0

    @property
    def signal(self) -> int | None:
        code = self.exit_code
        return code - 128 if code is not None and 128 < code < 128 + 65 else None

    def summary(self) -> str:
        from ..spec import format_size
        if self.error and self.exit_code in (125, None):
            return f"nsmagic: {self.error}"
        parts = [f"exit {self.exit_code}"]
        if self.signal:
            parts[0] += f" ({signal.Signals(self.signal).name})"
        parts.append(f"{self.wall_s:.2f} s wall")
        parts.append(f"{self.cpu_s:.2f} s CPU")
        mem = f"peak {format_size(self.memory_peak)}"
        if self.memory_limit:
            mem += f" of {format_size(self.memory_limit)}"
        parts.append(mem)
        parts.append(f"OOM killed ({self.oom_kills})" if self.oom_killed else "no OOM kill")
        if self.pids_peak is not None:
            parts.append(f"{self.pids_peak} pids peak"
                         + (f" of {self.pids_limit}" if self.pids_limit else ""))
        if self.timed_out:
            parts.append("timed out")
        elif self.interrupted:
            parts.append(f"interrupted, stopped with {self.stopped_by}")
        if not self.limits_enforced:
            parts.append("limits NOT enforced")
        return " · ".join(parts)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("samples", "profile")}
        d["oom_killed"] = self.oom_killed
        return d


class Run:
    """A live container: its cgroup, its PID 1 and the pipes to it."""

    def __init__(self, spec: Spec, out=None, err=None):
        self.spec = spec
        self.id = os.urandom(6).hex()
        self.name = spec.name or f"nsmagic-{self.id}"
        self.hostname = spec.hostname or self.id
        self.rootless = spec.rootless if spec.rootless is not None else os.geteuid() != 0
        self.cgroup: cgroups.Cgroup | None = None
        self.limits_enforced = True
        self.process: Init | None = None
        self.pid1: int | None = None
        self.exit_code: int | None = None
        self.reported = False      # PID 1 said how the run ended (and then it exits)
        self.error: str | None = None
        self.started = self.ended = 0.0
        self._status_buf = b""
        self._out, self._err = out, err
        self.warning: str | None = None
        self.marks: list[tuple[str, float]] = []
        self._refill: list[tuple[SpareKind, cgroups.Layout]] = []

    def mark(self, step: str) -> None:
        """--profile: the end of a step, on CLOCK_MONOTONIC (child processes use it too)."""
        if self.spec.profile:
            self.marks.append((step, time.monotonic()))

    # --- start

    def start(self) -> Run:
        self.mark("start")
        _swept_once()
        spec = self.spec
        limits = cgroups.Limits(spec.memory, spec.cpus, spec.pids)
        layout = cgroups.detect()
        if spec.user and self.rootless and spec.user[0] != 0:
            raise SetupError("--user needs root: without it only root (uid 0) is mapped "
                             "into the container; drop --user or run as root.")
        kind = SpareKind(self.rootless, spec.network, spec.cpus is not None, spec.unconfined)
        ready = (ready_spec(spec) if READY_SPARES and self._out is not None
                 and self._err is not None else None)
        ready_kind = dataclasses.replace(kind, ready=ready) if ready else None
        spare = None
        try:   # a spare taken is handed to PID 1's run or dropped, whatever happens
            spare = (ready_kind and Spares.take(ready_kind)) or Spares.take(kind)
            if spare is None:
                spare = make_spare(kind, layout)
            self.mark("ready spare taken" if spare.kind.ready else
                      "spare taken" if spare.was_spare else "PID 1 cloned (runner)")
            self.id, self.cgroup = spare.id, spare.cgroup
            self.name = spec.name or f"nsmagic-{self.id}"
            self.hostname = spec.hostname or self.id
            if WARM_SPARES and not spec.unconfined and not Zygote.fork_in_process:
                self._refill = [(k, layout) for k in (ready_kind, kind) if k]
            if spare.kind.ready:   # all is set up and the interpreter waits: let it go
                return self._go(spare)
            error = spare.cgroup_error
            if self.cgroup and limits.any:
                self.cgroup.limits = limits
                self.cgroup.apply()
            if error and limits.any:
                if spec.strict or not self.rootless:
                    raise error
                self.limits_enforced = False
                self.warning = f"limits NOT enforced: {error} (--strict makes this an error)"
            if spec.unconfined:
                self.warning = ((self.warning + "; ") if self.warning else "") + (
                    "running UNCONFINED: no namespaces and no overlay, so writes reach the host")
            ours = self._send_run(spare, layout)
        except BaseException:
            if spare is not None and self.process is None:
                spare.drop()
            self.cgroup = None
            raise
        self.process = Init(spare.pid, spare.pidfd, **ours)
        self.pid1, self.status_fd = spare.pid, spare.status_r
        self.mark("run handed to PID 1")
        return self

    def _go(self, spare: Spare) -> Run:
        """A ready spare: its PID 1 hears "go" (from then on it is this run's, not a spare);
        the cell then goes to the interpreter's stdin like any other run's script."""
        self.started = time.monotonic()
        try:
            spare.control.send(b"go")
        except OSError:
            raise SetupError("the container made ahead for this cell died before it ran; "
                             "run the cell again.") from None
        self.mark("run handed to PID 1")
        spare.control.close()
        self.process = Init(spare.pid, spare.pidfd, **spare.stdio)
        self.pid1, self.status_fd = spare.pid, spare.status_r
        self._status_buf = spare.status_read
        return self

    def _send_run(self, spare: Spare, layout) -> dict:
        """The run's config and stdio to the waiting PID 1; returns our ends of the pipes."""
        spec = self.spec
        config = run_config(spec, self.hostname, self.rootless, self.cgroup, layout)
        ours, theirs = stdio_pipes(spec.script is not None, self._out is not None,
                                    self._err is not None)
        try:
            self.started = time.monotonic()
            socket.send_fds(spare.control, [json.dumps(config).encode()], theirs)
        except BaseException:
            for f in ours.values():
                f.close()
            raise
        finally:
            for fd in theirs:
                os.close(fd)
            spare.control.close()
        return ours

    # --- status messages from PID 1 (and its workload, until exec)

    def read_status(self) -> bool:
        """Read what is there; False once PID 1 (and its workload) closed the channel."""
        try:
            data = os.read(self.status_fd, 65536)
        except BlockingIOError:
            return False
        if not data:
            return False
        self._status_buf += data
        *lines, self._status_buf = self._status_buf.split(b"\n")
        for line in lines:
            msg = json.loads(line)
            if "error" in msg and self.error is None:
                self.error = msg["error"]
                self.exit_code = msg.get("code", self.exit_code)
                self.reported = self.exit_code is not None
            if "exit" in msg:
                self.exit_code = msg["exit"]
                self.reported = True
            if "mark" in msg and self.spec.profile:   # a ready spare marks its steps always
                self.marks.append(tuple(msg["mark"]))
        return True

    # --- stop

    def send_signal(self, sig: int) -> None:
        """To the workload (PID 1 forwards it); SIGKILL goes to PID 1, which takes all along."""
        if self.process is not None:
            self.process.send_signal(sig)

    def kill_all(self) -> None:
        self.send_signal(signal.SIGKILL)
        if self.cgroup:
            try:
                self.cgroup.kill()
            except CgroupError:
                pass
        if self.process and self.process.poll():
            self.process.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll()

    def stop(self, grace: float = 0.3) -> str:
        """SIGINT, then SIGTERM, then SIGKILL for everything, each after `grace` seconds;
        returns the signal that ended it."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.send_signal(sig)
            if self._wait_exit(grace):
                return sig.name
        self.kill_all()
        self._wait_exit(2.0)
        return "SIGKILL"

    def _wait_exit(self, timeout: float) -> bool:
        try:
            self.process.wait(timeout)
            return True
        except TimeoutError:
            return False

    # --- end

    def wait(self) -> int:
        """The workload's exit status. PID 1 reports it and closes its fds, then exits; the
        rest of its exit (its namespaces torn down, ~1 ms) does not hold the run up. Only a
        PID 1 that could not report is waited for."""
        while self.status_fd is not None and self.read_status():
            pass
        if not self.reported:
            self.process.wait()
            # PID 1 is gone, and its namespace with it: what it said is all in the pipe now.
            while self.status_fd is not None and self.read_status():
                pass
        if self.exit_code is None:   # PID 1 itself was killed before it could report
            self.exit_code = 128 + signal.SIGKILL
        return self.exit_code

    def result(self, usage: cgroups.Usage | None = None) -> Result:
        """The result; `usage` is the group's last reading, if the caller has just taken one
        (each costs ~0.25 ms on v1)."""
        r = Result(self.id, self.name, exit_code=self.exit_code, error=self.error,
                   memory_limit=self.spec.memory, cpus=self.spec.cpus,
                   pids_limit=self.spec.pids, limits_enforced=self.limits_enforced)
        r.wall_s = (self.ended or time.monotonic()) - self.started
        if self.cgroup:
            r.cgroup_version = self.cgroup.version
            # read before the group is removed: v1 keeps OOM kills only here
            u = usage or self.cgroup.usage()
            r.cpu_s = u.cpu_usec / 1e6
            r.throttled_s = u.throttled_usec / 1e6
            r.oom_kills = u.oom_kills
            r.memory_peak = u.memory_peak if u.memory_peak is not None else u.memory_current
            r.pids_peak = u.pids_peak
        return r

    def close(self) -> None:
        """Everything the run made goes: processes, cgroup, fds. Safe to call twice. A PID 1
        that reported the end is left to finish exiting, and its group then removed, in the
        background (see Endings)."""
        if self.process is not None and self.process.poll() and not self.reported:
            self.kill_all()
            self.process.wait()
        if getattr(self, "status_fd", None) is not None:
            os.close(self.status_fd)
            self.status_fd = None
        if self.process is not None or self.cgroup or self._refill:
            Endings.add(self.process, self.cgroup, self._refill)
            self.process = self.cgroup = None
            self._refill = []


def _steps(marks: list) -> list[str]:
    t0 = prev = marks[0][1]
    lines = [f"{marks[0][0]:<32} {'':>8} {0:8.2f}"]
    for step, t in marks[1:]:
        lines.append(f"{step:<32} {(t - prev) * 1e3:8.2f} {(t - t0) * 1e3:8.2f}")
        prev = t
    return lines


__all__ = ["Run", "Result"]
