"""Spares: a run's PID 1 made before the run is asked for, in the background, so that a cell
does not pay for it.

A spare is a PID 1 cloned into its namespaces and joined to its cgroup, whose group is made
and given its device allow-list (v1) while no run waits. A ready spare, for a Python cell, goes on
to build the whole container and start the interpreter, which waits for the cell on its
stdin: the next cell like it only writes its code there."""

from __future__ import annotations

import fcntl
import os
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

from .. import cgroups
from ..config import BootConfig
from ..errors import CgroupError, SetupError
from ..spec import Spec
from . import forkserver, stdio
from .pid1 import Pid1
from .runconfig import run_config

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass(frozen=True)
class SpareKind:
    """What must be known when PID 1 is cloned: runs of one kind can share spares."""
    rootless: bool
    network: str        # the namespace PID 1 is cloned with: private, host, join (net/modes)
    unconfined: bool
    # A Python cell's whole container (see ready_spec): with it the spare also builds the
    # root and starts the interpreter, which then waits for the cell on its stdin.
    ready: Spec | None = None


def ready_spec(spec: Spec) -> Spec | None:
    """The container part of a Python cell whose container can be made whole before the
    cell is run. Not with --rootfs or -v: their sources may change between cells (a layer
    rebuilt, a directory recreated, an image re-tagged), and a container made earlier would
    show the old ones."""
    if (spec.command or spec.script is None or spec.rootfs or spec.image or spec.volumes
            or spec.unconfined):
        return None
    if spec.network not in ("none", "host"):   # its network is set up for its run only
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
    """A PID 1 waiting on its control socket for a run (or, ready, for "go")."""
    kind: SpareKind
    id: str
    cgroup: cgroups.Cgroup | None
    cgroup_error: CgroupError | None
    pid1: Pid1
    control: socket.socket
    status_r: int
    stdio: dict = field(default_factory=dict)   # a ready spare's: our ends of its pipes
    fingerprint: tuple = ()
    status_read: bytes = b""                     # what a ready spare said while it got ready
    was_spare: bool = False
    owner: int = field(default_factory=os.getpid)

    def usable(self) -> bool:
        """Ours, alive, and (ready) made with the Python environment as it is now."""
        return (self.owner == os.getpid() and self.pid1.running()
                and (not self.kind.ready or self.fingerprint == _python_fingerprint()))

    def drop(self) -> None:
        """Unused: PID 1 sees its control socket close and exits; then its group goes."""
        self.control.close()
        try:
            self.pid1.wait(1.0)
        except TimeoutError:
            self.pid1.kill()
            try:
                self.pid1.wait(2.0)
            except TimeoutError:
                pass
        self.pid1.close()
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
    cgroup, error = _make_group(kind, run_id, layout)
    ready = kind.ready
    run = (run_config(ready, ready.hostname or run_id, kind.rootless, cgroup, layout)
           if ready else None)
    boot = BootConfig(
        uid=os.geteuid(), gid=os.getegid(), rootless=kind.rootless, network=kind.network,
        unconfined=kind.unconfined, cgroup_procs=tuple(cgroup.join_files()) if cgroup else (),
        cgroup_dir=cgroup.clone_into() if cgroup else None, run=run)
    ours = theirs = status_r = status_w = None
    pipes, child_ends = {}, []
    try:
        if ready:
            pipes, child_ends = stdio.pipes(True, True, True)
            if ready.ipython:   # its program, for the interpreter to start on (cell/host.py)
                _prime(pipes["stdin"])
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stdio.hold(ours)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        pid1 = forkserver.spawn(boot, [theirs.fileno(), status_w, *child_ends])
    except BaseException:
        for f in (ours, *pipes.values()):
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
    spare = Spare(kind, run_id, cgroup, error, pid1, ours, status_r, pipes,
                  _python_fingerprint() if ready else ())
    if ready:
        try:
            spare.status_read = _await_ready(status_r, pid1.pidfd)
        except BaseException:
            spare.drop()
            raise
    return spare


def _prime(stdin) -> None:
    """The cell's host program in the stdin pipe before the interpreter starts, so that it
    imports IPython and gets ready before it blocks reading the cell: the pipe is made
    large enough to take it all now."""
    from ..cell.host import program
    source = program()
    fcntl.fcntl(stdin.fileno(), F_SETPIPE_SZ, max(len(source), 65536))
    stdin.write(source)


def _make_group(kind: SpareKind, run_id: str, layout: cgroups.Layout):
    """The spare's group, made (its limits come with its run; a ready spare's now). A
    group that cannot be made is kept as an error for the run to report or to pass over."""
    ready = kind.ready
    limits = cgroups.Limits.of(ready) if ready else cgroups.Limits()
    cgroup = None
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
        return None, err
    return cgroup, None


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
        if spare is None:
            return None
        if not spare.usable():
            if spare.owner == os.getpid():
                spare.drop()
            return None
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
            # Started under the lock: close() (at exit, from another thread) must never find
            # a worker it cannot join yet. The worker takes the lock only once it has made.
            try:
                worker.start()
            except RuntimeError:   # the interpreter is shutting down: no new threads
                return
            cls._making[kind] = worker

    @classmethod
    def _make(cls, kind: SpareKind, layout: cgroups.Layout) -> None:
        try:
            try:
                spare = make_spare(kind, layout)
            except Exception:  # noqa: BLE001 - a spare only saves time: the run that finds
                spare = None   # none makes its own PID 1 and reports what fails
            for unused in cls._keep(kind, spare):
                unused.drop()
        finally:   # only now: settle() waits for this thread while it is listed here
            with cls._lock:
                cls._making.pop(kind, None)

    @classmethod
    def _keep(cls, kind: SpareKind, spare: Spare | None) -> list[Spare]:
        """Keep a new spare if it is still wanted; returns the spares to drop."""
        if spare is None:
            return []
        with cls._lock:
            wanted = (not cls._closed and kind not in cls._ready
                      and (not kind.ready or kind == cls._latest_ready))
            if not wanted:
                return [spare]
            unused = []
            if kind.ready:   # the one container made ahead is the latest cell's
                unused = [cls._ready.pop(k) for k in list(cls._ready) if k.ready]
            cls._ready[kind] = spare
            return unused

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
    def close(cls) -> None:
        """No new spares from now on (the process is exiting); drop those there are."""
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
        """In a fork of the runner the spares are the parent's."""
        cls._lock, cls._ready, cls._making = threading.Lock(), {}, {}
