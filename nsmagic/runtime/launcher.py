"""Parent side of a run: cgroup, helper process, status channel, stop, result.

The notebook kernel is never forked (it is large and multi-threaded): each run starts a
small fresh interpreter (`child.main`) through subprocess, which uses vfork."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from .. import cgroups
from ..errors import CgroupError, NsmagicError, SetupError
from ..rootfs import plan as plan_root
from ..spec import Spec
from . import child

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELPER_CODE = ("import sys; sys.path.insert(0, sys.argv[1]); "
               "from nsmagic.runtime.child import main; main(int(sys.argv[2]), int(sys.argv[3]))")
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8", "TERM": "xterm"}


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
        d = {k: v for k, v in self.__dict__.items() if k != "samples"}
        d["oom_killed"] = self.oom_killed
        return d


class Run:
    """A live container: its cgroup, its helper process and the pipes to it."""

    def __init__(self, spec: Spec, out=None, err=None):
        self.spec = spec
        self.id = secrets.token_hex(6)
        self.name = spec.name or f"nsmagic-{self.id}"
        self.hostname = spec.hostname or self.id
        self.rootless = spec.rootless if spec.rootless is not None else os.geteuid() != 0
        self.cgroup: cgroups.Cgroup | None = None
        self.limits_enforced = True
        self.process: subprocess.Popen | None = None
        self.pid1: int | None = None
        self.exit_code: int | None = None
        self.error: str | None = None
        self.started = self.ended = 0.0
        self._status_buf = b""
        self._out, self._err = out, err
        self.warning: str | None = None

    # --- start

    def start(self) -> Run:
        _swept_once()
        spec = self.spec
        limits = cgroups.Limits(spec.memory, spec.cpus, spec.pids)
        layout = cgroups.detect()
        try:
            self.cgroup = cgroups.open_cgroup(self.id, limits, layout)
            self.cgroup.create()
        except CgroupError as err:
            if self.cgroup:
                self.cgroup.destroy()
            self.cgroup = None
            if limits.any and (spec.strict or not self.rootless):
                raise
            self.limits_enforced = not limits.any
            if limits.any:
                self.warning = (f"limits NOT enforced: {err} (--strict makes this an error)")
        config = {
            "runner_pid": os.getpid(),
            "rootless": self.rootless,
            "network": spec.network,
            "hostname": self.hostname,
            "plan": plan_root(spec),
            "cgroup_procs": self.cgroup.procs_files() if self.cgroup else [],
            "cgroup_mounts": _cgroup_mounts(layout) if self.cgroup else [],
            "argv": self._argv(),
            "env": self._env(),
            "workdir": spec.workdir,
            "user": list(spec.user) if spec.user else None,
            "python_cell": spec.is_python_cell,
            "custom_root": spec.rootfs is not None,
            "unconfined": spec.unconfined,
        }
        if spec.unconfined:
            self.warning = ((self.warning + "; ") if self.warning else "") + (
                "running UNCONFINED: no namespaces and no overlay, so writes reach the host")
        if spec.user and self.rootless and spec.user[0] != 0:
            self.close()
            raise SetupError("--user needs root: without it only root (uid 0) is mapped "
                             "into the container; drop --user or run as root.")
        config_r, config_w = os.pipe()
        os.write(config_w, json.dumps(config).encode())   # small: fits in the pipe buffer
        os.close(config_w)
        status_r, status_w = os.pipe()
        self.started = time.monotonic()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", HELPER_CODE, PACKAGE_PARENT,
                 str(config_r), str(status_w)],
                stdin=subprocess.PIPE if spec.script is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE if self._out is not None else subprocess.DEVNULL,
                stderr=subprocess.PIPE if self._err is not None else subprocess.DEVNULL,
                pass_fds=(config_r, status_w), start_new_session=True, env={})
        except OSError as err:
            self.close()
            raise SetupError(f"can't start the helper process {sys.executable}: "
                             f"{err.strerror.lower()}") from err
        finally:
            os.close(config_r)
            os.close(status_w)
        self.status_fd = status_r
        return self

    def _argv(self) -> list[str]:
        if self.spec.command:
            return list(self.spec.command)
        return [sys.executable, "-u", "-"]

    def _env(self) -> list[list[str]]:
        env = dict(BASE_ENV, HOSTNAME=self.hostname, PYTHONUNBUFFERED="1")
        env.update(dict(self.spec.env))
        return [[k, v] for k, v in env.items()]

    # --- status messages from the helper and PID 1

    def read_status(self) -> bool:
        """Read what is there; False once the helper and PID 1 have both closed the channel."""
        data = os.read(self.status_fd, 65536)
        if not data:
            return False
        self._status_buf += data
        *lines, self._status_buf = self._status_buf.split(b"\n")
        for line in lines:
            msg = json.loads(line)
            if "pid1" in msg:
                self.pid1 = msg["pid1"]
            if "error" in msg and self.error is None:
                self.error = msg["error"]
            if "exit" in msg:
                self.exit_code = msg["exit"]
        return True

    # --- stop

    def send_signal(self, sig: int) -> None:
        """To the workload (PID 1 forwards it); SIGKILL goes to PID 1, which takes all along."""
        target = self.pid1
        if target is None and self.process is not None:
            target = self.process.pid
        if target is not None:
            try:
                os.kill(target, sig)
            except ProcessLookupError:
                pass

    def kill_all(self) -> None:
        self.send_signal(signal.SIGKILL)
        if self.cgroup:
            try:
                self.cgroup.kill()
            except CgroupError:
                pass
        if self.process and self.process.poll() is None:
            self.process.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

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
        except subprocess.TimeoutExpired:
            return False

    # --- end

    def wait(self) -> int:
        code = self.process.wait()
        if self.exit_code is None:
            self.exit_code = code
        return self.exit_code

    def result(self) -> Result:
        r = Result(self.id, self.name, exit_code=self.exit_code, error=self.error,
                   memory_limit=self.spec.memory, cpus=self.spec.cpus,
                   pids_limit=self.spec.pids, limits_enforced=self.limits_enforced)
        r.wall_s = (self.ended or time.monotonic()) - self.started
        if self.cgroup:
            r.cgroup_version = self.cgroup.version
            u = self.cgroup.usage()   # read before the group is removed: v1 keeps OOM only here
            r.cpu_s = u.cpu_usec / 1e6
            r.throttled_s = u.throttled_usec / 1e6
            r.oom_kills = u.oom_kills
            r.memory_peak = u.memory_peak if u.memory_peak is not None else u.memory_current
            r.pids_peak = u.pids_peak
        return r

    def close(self) -> None:
        """Everything the run made goes: processes, cgroup, fds. Safe to call twice."""
        if self.process is not None:
            if self.process.poll() is None:
                self.kill_all()
                self.process.wait()
            for f in (self.process.stdin, self.process.stdout, self.process.stderr):
                if f:
                    try:
                        f.close()
                    except OSError:
                        pass
        if getattr(self, "status_fd", None) is not None:
            os.close(self.status_fd)
            self.status_fd = None
        if self.cgroup:
            self.cgroup.destroy()
            self.cgroup = None


def _cgroup_mounts(layout: cgroups.Layout) -> list[dict]:
    """What to mount at /sys/fs/cgroup inside: the same hierarchies, seen from the run's group."""
    if layout.kind == "v2":
        return [{"type": "cgroup2", "name": "", "options": ""}]
    by_mount: dict[str, list[str]] = {}
    for controller, point in layout.v1_mounts.items():
        if not controller.startswith("name="):
            by_mount.setdefault(point, []).append(controller)
    return [{"type": "cgroup", "name": os.path.basename(p), "options": ",".join(c)}
            for p, c in sorted(by_mount.items())]


__all__ = ["Run", "Result", "child"]
