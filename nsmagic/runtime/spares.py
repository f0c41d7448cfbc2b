"""Spares: a run's PID 1 made before the run is asked for, and runs' teardown after they
are over, both in the background, so that a cell pays for neither.

A spare is a PID 1 cloned into its namespaces and joined to its cgroup (the join costs an
RCU grace period per v1 hierarchy). A ready spare, for a Python cell, goes on to build the
whole container and start the interpreter, which waits for the cell on its stdin."""

from __future__ import annotations

import atexit
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

from .. import cgroups
from ..errors import CgroupError, NsmagicError, SetupError
from ..spec import Spec
from .pid1 import _HELD, Init, Zygote, forget_held_fds, run_config, stdio_pipes


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
            stdio, child_ends = stdio_pipes(True, True, True)
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
        parent's: see pid1.forget_held_fds."""
        cls._lock, cls._ready, cls._making = threading.Lock(), {}, {}




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
    forget_held_fds()
    Spares.forget_in_child()
    Endings.forget_in_child()
    Zygote.forget_in_child()


os.register_at_fork(after_in_child=_forget_in_child)
