"""What happens after a run is over, off the run's path: PID 1 finishing its exit (its
namespaces' teardown: unmounting the root takes an RCU grace period, the net namespace more),
its group removed, then the next run's spares made. A cell returns once its exit status and
output are in; this goes on in one worker thread, waited for at exit.

Also the runner process's hooks (installed by the first run, never at import): at exit,
teardown is waited for and spares dropped; in a fork, the runner's handles are forgotten."""

from __future__ import annotations

import atexit
import os
import queue
import signal
import sys
import threading

from .. import cgroups
from ..errors import NsmagicError
from ..rootfs import secrets
from . import forkserver, stdio
from .pid1 import Pid1
from .spares import SpareKind, Spares


class Teardown:
    _queue: queue.Queue | None = None
    _owner = 0
    _lock = threading.Lock()
    _left: list[cgroups.Cgroup] = []   # groups still busy when their run ended: tried again

    @classmethod
    def add(cls, pid1: Pid1 | None, cgroup: cgroups.Cgroup | None,
            refill: list[tuple[SpareKind, cgroups.Layout]]) -> None:
        with cls._lock:
            if cls._queue is None or cls._owner != os.getpid():
                cls._queue, cls._owner = queue.Queue(), os.getpid()
                threading.Thread(target=cls._work, args=(cls._queue,), daemon=True,
                                 name="nsmagic-teardown").start()
            cls._queue.put((pid1, cgroup, refill))

    @classmethod
    def _work(cls, work: queue.Queue) -> None:
        swept = False
        while True:
            pid1, cgroup, refill = work.get()
            try:
                if finish(pid1, cgroup):
                    cls._left = [g for g in cls._left if not _removed(g)]
                else:
                    cls._left.append(cgroup)
                for kind, layout in refill:   # the next run's spares, once this one is gone
                    Spares.refill(kind, layout)
                secrets.refresh()
                if not swept:      # once per process (this thread is its own), after a run
                    swept = True
                    sweep_elsewhere()
            except Exception:  # noqa: BLE001 - this thread must live: settle() waits on it
                pass
            finally:
                work.task_done()

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


def finish(pid1: Pid1 | None, cgroup: cgroups.Cgroup | None, within: float = 5.0) -> bool:
    """Wait for PID 1 to be gone (killing what is left after `within` s), close its handle,
    remove its group; False if the group is still busy (to be tried again)."""
    if pid1 is not None:
        try:
            pid1.wait(within)
        except TimeoutError:   # stuck exiting: what kill can do, do
            pid1.kill()
            if cgroup:
                cgroup.kill()
            try:
                pid1.wait(within)
            except TimeoutError:
                pass
        finally:
            pid1.close()
    return cgroup is None or _removed(cgroup)


def hand_off(pid1: Pid1 | None, cgroup: cgroups.Cgroup | None) -> None:
    """The CLI's teardown: its exit status is known, so the shell should have it now. A
    small fork of this (small, single-threaded) process waits for PID 1 to be gone and
    removes its group; this process goes on at once. A start finding the group after a
    crash of both sweeps it (cgroups.sweep)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM,
                                                     signal.SIGHUP, signal.SIGQUIT})
    if os.fork() == 0:
        try:   # a Ctrl-C meant for the CLI must not stop the cleanup it left behind
            for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
                signal.signal(sig, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            from ..inside.linux import set_name
            set_name("nsmagic-cleanup")
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):        # a pipe to the shell (`| head`) must see its end
                os.dup2(null, fd)
            finish(pid1, cgroup)
            sweep_elsewhere()
        finally:
            os._exit(0)
    signal.pthread_sigmask(signal.SIG_SETMASK, held)
    if pid1 is not None:
        pid1.own_child = False          # reaped by whoever adopts it once we exit
        pid1.close()


def sweep_elsewhere() -> None:
    """What dead runners left in other parts of the cgroup trees (cgroups.sweep_elsewhere):
    a walk of every hierarchy, so here, after a run, never before one."""
    try:
        cgroups.sweep_elsewhere()
    except (OSError, NsmagicError):
        pass


def _removed(cgroup: cgroups.Cgroup) -> bool:
    try:
        cgroup.destroy()
    except (OSError, NsmagicError):
        return False
    return True


def settle() -> set[str]:
    """Wait for background work (ended runs' teardown, their networks' detach by the helper,
    spares being made); return the group names of the ready spares, which stay by design."""
    Teardown.settle()
    from ..net import client
    client.settle()
    return Spares.settle()


_hooks_for = 0


def install_hooks() -> None:
    """Once per process, by its first run."""
    global _hooks_for
    if _hooks_for == os.getpid():
        return
    if _hooks_for == 0:
        atexit.register(_at_exit)
        os.register_at_fork(after_in_child=_forget_in_child)
    _hooks_for = os.getpid()


def _at_exit() -> None:
    if _hooks_for != os.getpid():
        return
    Spares.close()        # first: no teardown below may start a new spare
    Teardown.settle()


def _forget_in_child() -> None:
    """In every fork of the runner (a PID 1 cloned in the CLI too: keep this cheap)."""
    tied = sys.modules.get("nsmagic.runtime.tied")   # only where it was ever used
    if tied is not None:
        tied.forget_in_child()
    stdio.forget_in_child()
    Spares.forget_in_child()
    Teardown.forget_in_child()
    forkserver.ForkServer.forget_in_child()
