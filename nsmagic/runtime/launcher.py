"""Parent side of a run: cgroup, PID 1, status channel, stop, result.

The notebook kernel is never forked (it is large and multi-threaded): a small fork server
(zygote.py) is started once per process, and clones each run's PID 1 into its namespaces."""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field

from .. import cgroups
from ..errors import CgroupError, NsmagicError, SetupError
from ..rootfs.plan import plan as plan_root
from ..spec import Spec
from . import child

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ZYGOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zygote.py")
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


_ALIVE_R: int | None = None


class Zygote:
    """Client of the fork server. Started on first use, from a thread of its own that lives
    as long as the process: PDEATHSIG fires when the *thread* that forked a child exits."""

    _current: Zygote | None = None
    _lock = threading.Lock()
    # A small single-threaded process (the CLI) clones PID 1 itself: ~1 ms, and no fork
    # server to start. Never set in a notebook kernel: it is large and multi-threaded.
    fork_in_process = False

    def __init__(self):
        self.owner = os.getpid()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        started: list = []
        ready = threading.Event()

        def start_and_stay():
            try:
                import subprocess  # here: the CLI never starts a fork server
                started.append(subprocess.Popen(
                    [sys.executable, "-I", "-S", ZYGOTE, str(theirs.fileno()),
                     str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                    start_new_session=True, env={}))
            except OSError as err:
                started.append(err)
            ready.set()
            threading.Event().wait()          # park: this thread is the zygote's parent

        threading.Thread(target=start_and_stay, name="nsmagic-zygote", daemon=True).start()
        ready.wait()
        theirs.close()
        if isinstance(started[0], OSError):
            ours.close()
            raise SetupError(f"can't start the fork server {sys.executable}: "
                             f"{started[0].strerror.lower()}")
        self.process, self.sock = started[0], ours
        _HELD.add(ours)

    @classmethod
    def forget_in_child(cls) -> None:
        cls._lock, cls._current = threading.Lock(), None

    @classmethod
    def spawn(cls, config: dict, fds: list[int]) -> tuple[int, int]:
        """Clone one run's PID 1; returns its pid and a pidfd for it."""
        if cls.fork_in_process:
            global _ALIVE_R
            if _ALIVE_R is None:   # its writer is this process: EOF for PID 1 when we die
                _ALIVE_R, _ = os.pipe()
            pid = child.start(config, fds, _ALIVE_R)
            return pid, os.pidfd_open(pid)
        with cls._lock:
            for _attempt in (1, 2):
                z = cls._current
                if z is None or z.owner != os.getpid() or z.process.poll() is not None:
                    z = cls._current = cls()
                try:
                    socket.send_fds(z.sock, [json.dumps(config).encode()], fds)
                    data, pidfds, _, _ = socket.recv_fds(z.sock, 65536, 1)
                    reply = json.loads(data) if data else {}
                    if "error" in reply:
                        raise SetupError(reply["error"])
                    if pidfds:
                        return reply["pid"], pidfds[0]
                except OSError:
                    pass
                cls._current = None               # it died: start a new one, once
        raise SetupError("the nsmagic fork server died twice; run `nsmagic info` to see "
                         "what this machine allows.")


class Init:
    """A run's PID 1, watched through a pidfd (it is the zygote's child, not ours)."""

    def __init__(self, pid: int, pidfd: int, stdin=None, stdout=None, stderr=None):
        self.pid, self.pidfd = pid, pidfd
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.exited = False

    def wait(self, timeout: float | None = None) -> None:
        if not self.exited:
            if not select.select([self.pidfd], [], [], timeout)[0]:
                raise TimeoutError(f"nsmagic-init still runs after {timeout} s")
            self.exited = True

    def poll(self) -> bool:
        """True while it runs."""
        try:
            self.wait(0)
        except TimeoutError:
            return True
        return False

    def send_signal(self, sig: int) -> None:
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        for f in (self.stdin, self.stdout, self.stderr):
            if f:
                try:
                    f.close()
                except OSError:
                    pass
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
            if Zygote.fork_in_process:     # our own child: reap it
                try:
                    os.waitpid(self.pid, 0)
                except ChildProcessError:
                    pass


WARM_SPARES = True   # keep one PID 1 ready per kind of run (see Spares)
READY_SPARES = True  # and for the latest Python cell, its whole container (see ready_spec)


@dataclass(frozen=True)
class SpareKind:
    """What must be known when PID 1 is cloned: runs of one kind can share spares."""
    rootless: bool
    network: str
    cpu_quota: bool          # cgroup v1 joins the cpu hierarchy only for runs with --cpus
    unconfined: bool
    # A Python cell's whole container (see ready_spec): with it the spare also builds the
    # root and starts the interpreter, which then waits for the cell on its stdin.
    ready: Spec | None = None


def ready_spec(spec: Spec) -> Spec | None:
    """The container part of a Python cell whose container can be made whole before the
    cell is run: the next cell like it then only writes its code to a waiting interpreter.
    Not with --rootfs or -v: their sources may change between cells (a layer rebuilt, a
    directory recreated), and a container made earlier would show the old ones."""
    if spec.command or spec.script is None or spec.rootfs or spec.volumes or spec.unconfined:
        return None
    return spec.container_part()


def _python_fingerprint() -> tuple:
    """When each directory Python imports from last changed: an interpreter started before
    a `pip install` would not have seen its .pth files. ("" is the notebook's folder, which
    a container does not see.)"""
    stamps = []
    for path in filter(None, sys.path):
        try:
            stamps.append(os.stat(path).st_mtime_ns)
        except OSError:
            stamps.append(None)
    return tuple(stamps)


@dataclass
class Spare:
    """A PID 1 cloned into its namespaces and joined to its (not yet limited) cgroup, waiting
    on its control socket for a run. Made ahead of time, it takes the cost of joining a cgroup
    (an RCU grace period per v1 hierarchy, ~10 ms here) off the next run's start. A ready
    spare (SpareKind.ready) has gone on to make its whole container and waits for "go"."""
    kind: SpareKind
    id: str
    cgroup: cgroups.Cgroup | None
    cgroup_error: CgroupError | None
    pid: int
    pidfd: int
    control: socket.socket
    status_r: int
    stdio: dict = field(default_factory=dict)   # a ready spare's: our ends of its pipes
    fingerprint: tuple = ()
    status_read: bytes = b""                     # what a ready spare said while it got ready
    was_spare: bool = False
    owner: int = field(default_factory=os.getpid)

    def alive(self) -> bool:
        return not select.select([self.pidfd], [], [], 0)[0]

    def fresh(self) -> bool:
        return not self.kind.ready or self.fingerprint == _python_fingerprint()

    def drop(self) -> None:
        """Unused: PID 1 sees its control socket close and exits; then its group goes."""
        self.control.close()
        if not select.select([self.pidfd], [], [], 1.0)[0]:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            select.select([self.pidfd], [], [], 2.0)
        if Zygote.fork_in_process:   # our own child: reap it
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        os.close(self.pidfd)
        os.close(self.status_r)
        for f in self.stdio.values():
            f.close()
        if self.cgroup:
            try:
                self.cgroup.destroy()
            except CgroupError:
                pass


def make_spare(kind: SpareKind, layout: cgroups.Layout) -> Spare:
    """Clone a PID 1 for a run of this kind, joined to its cgroup; for a ready kind, also
    with its limits, root, host name and interpreter, all before the run is asked for."""
    run_id = os.urandom(6).hex()
    ready = kind.ready
    limits = (cgroups.Limits(ready.memory, ready.cpus, ready.pids) if ready else
              cgroups.Limits(cpus=1.0 if kind.cpu_quota else None))
    cgroup, error = None, None
    try:
        cgroup = cgroups.open_cgroup(run_id, limits, layout)
        cgroup.make()
        if ready:   # limits first: the interpreter starts under them, as in any other run
            cgroup.apply()
    except CgroupError as err:
        if cgroup:
            cgroup.destroy()
        if ready:     # made only where the run would have all it asks for
            raise
        cgroup, error = None, err
    boot = {"uid": os.geteuid(), "gid": os.getegid(), "rootless": kind.rootless,
            "network": kind.network, "unconfined": kind.unconfined,
            "cgroup_procs": cgroup.procs_files() if cgroup else [],
            "cgroup_dir": cgroup.directories()[0] if cgroup and cgroup.version == "v2" else None}
    ours = theirs = status_r = status_w = None
    stdio, child_ends = {}, []
    try:
        if ready:
            boot["run"] = run_config(ready, ready.hostname or run_id, kind.rootless, cgroup,
                                     layout)
            stdio, child_ends = _stdio_pipes(True, True, True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        _HELD.add(ours)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        pid, pidfd = Zygote.spawn(boot, [theirs.fileno(), status_w, *child_ends])
    except BaseException:
        for f in (ours, *stdio.values()):
            if f is not None:
                f.close()
        if status_r is not None:
            os.close(status_r)
        if cgroup:
            cgroup.destroy()
        raise
    finally:
        for fd in (status_w, *child_ends):
            if fd is not None:
                os.close(fd)
        if theirs is not None:
            theirs.close()
    spare = Spare(kind, run_id, cgroup, error, pid, pidfd, ours, status_r, stdio,
                  _python_fingerprint() if ready else ())
    if ready:
        try:
            spare.status_read = _await_ready(status_r, pidfd)
        except BaseException:
            spare.drop()
            raise
    return spare


def _await_ready(status_r: int, pidfd: int, timeout: float = 10.0) -> bytes:
    """A ready spare's status until it says its interpreter is started (a spare that failed
    is not kept: the run that would have taken it reports the failure itself)."""
    said, deadline = b"", time.monotonic() + timeout
    while b'"ready"' not in said:
        left = deadline - time.monotonic()
        readable = select.select([status_r, pidfd], [], [], max(left, 0))[0]
        if status_r in readable:
            data = os.read(status_r, 65536)
            said += data
            if data and b'"error"' not in said:
                continue
        raise SetupError("a container made ahead did not get ready: "
                         + (said.decode(errors="replace").strip() or "no word from it"))
    return said


def run_config(spec: Spec, hostname: str, rootless: bool, cgroup: cgroups.Cgroup | None,
               layout: cgroups.Layout) -> dict:
    """What PID 1 needs to build the container and start its workload (JSON)."""
    env = dict(BASE_ENV, HOSTNAME=hostname, PYTHONUNBUFFERED="1")
    env.update(dict(spec.env))
    return {
        "hostname": hostname,
        "network": spec.network,
        "rootless": rootless,
        "plan": plan_root(spec),
        "cgroup_procs": cgroup.procs_files() if cgroup else [],
        "cgroup_mounts": _cgroup_mounts(layout, cgroup) if cgroup else [],
        "argv": list(spec.command) if spec.command else [sys.executable, "-u", "-"],
        "env": [[k, v] for k, v in env.items()],
        "workdir": spec.workdir,
        "user": list(spec.user) if spec.user else None,
        "python_cell": spec.is_python_cell,
        "custom_root": spec.rootfs is not None,
        "unconfined": spec.unconfined,
        "profile": spec.profile,
    }


def _stdio_pipes(stdin: bool, stdout: bool, stderr: bool) -> tuple[dict, list[int]]:
    """Pipes for the streams wanted (/dev/null for the others): our ends as unbuffered
    files by name, and the child's three fds in order."""
    ours, theirs = {}, []
    try:
        for name, wanted, mode in (("stdin", stdin, "wb"), ("stdout", stdout, "rb"),
                                   ("stderr", stderr, "rb")):
            if not wanted:
                theirs.append(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
                continue
            r, w = os.pipe2(os.O_CLOEXEC)
            mine, child_end = (w, r) if mode == "wb" else (r, w)
            ours[name] = os.fdopen(mine, mode, buffering=0)
            _HELD.add(ours[name])
            theirs.append(child_end)
    except BaseException:
        for f in ours.values():
            f.close()
        for fd in theirs:
            os.close(fd)
        raise
    return ours, theirs


class Spares:
    """At most one spare per kind of run, and one ready spare in all (for the latest Python
    cell), made in the background once a run is over. Dropped at exit; a runner killed
    outright takes its spares along (PDEATHSIG), and the next start sweeps their groups."""

    _ready: dict[SpareKind, Spare] = {}
    _making: dict[SpareKind, threading.Thread] = {}
    _latest_ready: SpareKind | None = None
    _lock = threading.Lock()
    _closed = False

    @classmethod
    def take(cls, kind: SpareKind) -> Spare | None:
        with cls._lock:
            spare = cls._ready.pop(kind, None)
        if spare is not None and (spare.owner != os.getpid() or not spare.alive()
                                  or not spare.fresh()):
            if spare.owner == os.getpid():
                spare.drop()
            return None
        if spare is not None:
            spare.was_spare = True
        return spare

    @classmethod
    def refill(cls, kind: SpareKind, layout: cgroups.Layout) -> None:
        with cls._lock:
            if kind.ready:
                cls._latest_ready = kind
            if cls._closed or kind in cls._ready or kind in cls._making:
                return
            worker = threading.Thread(target=cls._make, args=(kind, layout), daemon=True,
                                      name="nsmagic-spare")
            cls._making[kind] = worker
        try:
            worker.start()
        except RuntimeError:   # the interpreter is shutting down: no new threads
            with cls._lock:
                cls._making.pop(kind, None)

    @classmethod
    def _make(cls, kind: SpareKind, layout: cgroups.Layout) -> None:
        try:
            try:
                spare = make_spare(kind, layout)
            except Exception:  # noqa: BLE001 - a spare only saves time: the run that finds
                spare = None   # none makes its own PID 1 and reports what fails
            unused = []
            with cls._lock:
                keep = (spare is not None and not cls._closed and kind not in cls._ready
                        and (not kind.ready or kind == cls._latest_ready))
                if keep:
                    if kind.ready:   # the one container made ahead is the latest cell's
                        unused = [cls._ready.pop(k) for k in list(cls._ready) if k.ready]
                    cls._ready[kind] = spare
                elif spare is not None:
                    unused = [spare]
            for old in unused:
                old.drop()
        finally:   # only now: settle() waits for this thread while it is listed here
            with cls._lock:
                cls._making.pop(kind, None)

    @classmethod
    def settle(cls) -> set[str]:
        """Wait for spares being made; return the group names of the ready ones."""
        with cls._lock:
            making = list(cls._making.values())
        for worker in making:
            worker.join(30)   # a ready spare waits for its interpreter: seconds on a busy host
        with cls._lock:
            return {s.cgroup.name for s in cls._ready.values() if s.cgroup}

    @classmethod
    def drop_all(cls) -> None:
        with cls._lock:
            cls._closed = True
            making = list(cls._making.values())
        for worker in making:
            worker.join(30)
        with cls._lock:
            spares = [s for s in cls._ready.values() if s.owner == os.getpid()]
            cls._ready.clear()
        for spare in spares:
            spare.drop()

    @classmethod
    def forget_in_child(cls) -> None:
        """In a fork of the runner (multiprocessing's workers, say) the spares are the
        parent's. A copy of a ready interpreter's stdin there would keep the cell it gets
        from ever seeing its end: each fd in _HELD becomes /dev/null in the child."""
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        for held in list(_HELD):
            fd = -1 if getattr(held, "closed", False) else held.fileno()
            if fd >= 0:
                os.dup2(null, fd, inheritable=False)
        os.close(null)
        cls._lock, cls._ready, cls._making = threading.Lock(), {}, {}


# The runner's ends of spares' pipes and sockets (file and socket objects, so a closed one is
# known as closed and its number never mistaken for a newer fd's): see forget_in_child.
_HELD: weakref.WeakSet = weakref.WeakSet()


class Endings:
    """Runs whose PID 1 reported the end and is still exiting (its namespaces' teardown:
    unmounting the root takes an RCU grace period, the net namespace more). One worker
    thread waits for each, closes its fds, removes its group, then has the next run's
    spares made: off the run's path, so a cell returns once its exit and output are in.
    Waited for at exit."""

    _queue: queue.Queue | None = None
    _owner = 0
    _lock = threading.Lock()
    _left: list[cgroups.Cgroup] = []   # groups still busy when their run ended: tried again

    @classmethod
    def add(cls, process: Init | None, cgroup: cgroups.Cgroup | None,
            refill: list[tuple[SpareKind, cgroups.Layout]]) -> None:
        with cls._lock:
            if cls._queue is None or cls._owner != os.getpid():
                cls._queue, cls._owner = queue.Queue(), os.getpid()
                threading.Thread(target=cls._work, args=(cls._queue,), daemon=True,
                                 name="nsmagic-endings").start()
            cls._queue.put((process, cgroup, refill))

    @classmethod
    def _work(cls, work: queue.Queue) -> None:
        while True:
            process, cgroup, refill = work.get()
            try:
                cls._finish(process, cgroup)
                for kind, layout in refill:   # the next run's spares, once this one is gone
                    Spares.refill(kind, layout)
            except Exception:  # noqa: BLE001 - this thread must live: settle() waits on it
                pass
            finally:
                work.task_done()

    @classmethod
    def _finish(cls, process: Init | None, cgroup: cgroups.Cgroup | None) -> None:
        if process is not None:
            try:
                process.wait(5.0)
            except TimeoutError:   # stuck exiting: what kill can do, do
                process.kill()
                if cgroup:
                    cgroup.kill()
                try:
                    process.wait(5.0)
                except TimeoutError:
                    pass
            finally:
                process.close()
        for group in ([cgroup] if cgroup else []) + cls._left:
            try:
                group.destroy()
            except (OSError, NsmagicError):
                if group not in cls._left:
                    cls._left.append(group)
            else:
                if group in cls._left:
                    cls._left.remove(group)

    @classmethod
    def settle(cls) -> None:
        work = cls._queue
        if work is not None and cls._owner == os.getpid():
            work.join()
            if cls._left:   # once more, now that their processes had time to go
                cls.add(None, None, [])
                work.join()

    @classmethod
    def forget_in_child(cls) -> None:
        cls._lock, cls._queue, cls._left = threading.Lock(), None, []


def settle() -> set[str]:
    """Wait for background work (ended runs' teardown, spares being made); return the group
    names of the ready spares, which stay by design."""
    Endings.settle()
    return Spares.settle()


@atexit.register
def _at_exit() -> None:
    with Spares._lock:
        Spares._closed = True      # no new spares: the endings below would start some
    Endings.settle()
    Spares.drop_all()


def _forget_in_child() -> None:
    Spares.forget_in_child()
    Endings.forget_in_child()
    Zygote.forget_in_child()


os.register_at_fork(after_in_child=_forget_in_child)


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
        ours, theirs = _stdio_pipes(spec.script is not None, self._out is not None,
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


def _cgroup_mounts(layout: cgroups.Layout, cgroup: cgroups.Cgroup) -> list[dict]:
    """What to mount at /sys/fs/cgroup inside: the hierarchies the run is in, each seen from
    the run's own group (its cgroup namespace). Others would show the host's whole tree."""
    if layout.kind == "v2":
        return [{"type": "cgroup2", "name": "", "options": ""}]
    joined = {layout.v1_mounts[c] for c in getattr(cgroup, "dirs", {}) if c in layout.v1_mounts}
    by_mount: dict[str, list[str]] = {}
    for controller, point in layout.v1_mounts.items():
        if not controller.startswith("name=") and point in joined:
            by_mount.setdefault(point, []).append(controller)
    return [{"type": "cgroup", "name": os.path.basename(p), "options": ",".join(c)}
            for p, c in sorted(by_mount.items())]


__all__ = ["Run", "Result", "child"]
