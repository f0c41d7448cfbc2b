"""`nsmagic-monitor`: one small process per detached container (the role containerd-shim and
conmon play). `nsmagic run -d` forks it (twice: it is no child of the CLI, nor of the
terminal's session) and returns once it says the container started, or why it did not.

The monitor clones the container's PID 1 itself, so the container lives as long as the
monitor (PDEATHSIG): a monitor killed outright takes its container along, and no container
is ever left without the process that records its end. It holds PID 1's pipes, writes the
container's output to its log, records its exit in the store and goes. `nsmagic stop` and
`kill` signal PID 1 directly; the monitor sees the end like any other.

With --rm the record goes when the container ends; with --rm-on-exit the container is also
stopped when the process that started it ends (a notebook's kernel, a shell)."""

from __future__ import annotations

import os
import signal
import threading
import time

from .. import dirs
from ..errors import NsmagicError, SetupError
from . import logs, records

# The monitor samples the container's group only to read its OOM kills and peaks at the end:
# rarely (a detached container may run for days).
INTERVAL = 10.0


def detach(spec, argv: list[str], *, auto_remove: bool = False,
           watch: int | None = None, record: dict | None = None) -> dict:
    """Start `spec` detached under a monitor of its own; returns its record once running.
    `watch`: a pid whose end stops and removes the container (--rm-on-exit). `record`: an
    exited container's, to run again (start, restart)."""
    fresh = record is None
    if not fresh:
        records.update(record, state="created", exit_code=None, error=None, pid=None,
                       finished_at=None)
    watched = os.pidfd_open(watch) if watch else None
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    first = os.fork()
    if first == 0:   # a session of its own, and the monitor a child of this short-lived one
        try:
            os.close(ready_r)
            os.setsid()
            if os.fork() == 0:
                # The record is the monitor's to make: a CLI killed before this point leaves
                # nothing behind, one killed after it a container that runs (as Docker's).
                mine = records.new(spec, argv, auto_remove) if fresh else record
                # Its writable layer is kept at its end, as a kept container's (diff, commit).
                _monitor(spec.replace(name=mine["name"], keep_dir=mine["_dir"],
                                      hostname=spec.hostname or mine["id"][:12]),
                         mine, ready_w, watched, fresh)
        except NsmagicError as error:   # the name is taken, say
            _tell(ready_w, f"error {error}".encode())
        finally:
            os._exit(0)
    os.close(ready_w)
    if watched is not None:
        os.close(watched)
    os.waitpid(first, 0)
    said = b""
    while chunk := os.read(ready_r, 4096):
        said += chunk
    os.close(ready_r)
    if said.startswith(b"ok "):
        cid, _, name = said[3:].decode().partition(" ")
        try:
            return records.load(cid)
        except records.NoSuchContainer:   # --rm, and it has ended already
            return {"id": cid, "name": name}
    raise SetupError(said.decode(errors="replace").removeprefix("error ")
                     or "the container's monitor died before the container started.")


def _monitor(spec, record: dict, ready: int, watched: int | None, fresh: bool) -> None:
    """The monitor process; never returns."""
    from ..inside import linux
    linux.set_name("nsmagic-monitor")
    linux.set_title(f"nsmagic-monitor {record['name']}")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):           # the CLI's terminal and pipes are not ours to hold
        os.dup2(null, fd)
    os.close(null)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):   # (SIGPIPE: a starter gone)
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)   # stop the container, then record it
    try:
        _follow(spec, record, ready, watched, fresh)
    finally:
        os._exit(0)


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def _follow(spec, record: dict, ready: int, watched: int | None, fresh: bool) -> None:
    from ..result import Stop, build
    from ..runtime import forkserver
    from ..runtime.follow import Follower
    from ..runtime.launcher import Run
    forkserver.use_in_process()   # PID 1 is this process's child: it dies with it
    log = logs.open_log(records.log_path(record))
    out, err = logs.LogWriter(log, "stdout"), logs.LogWriter(log, "stderr")
    run = Run(spec.replace(interval=INTERVAL, plot=False), out, err)
    if not _start(run, record, ready, fresh):
        return
    ended_by_owner = threading.Event()
    if watched is not None:
        threading.Thread(target=_watch, args=(watched, run, ended_by_owner), daemon=True,
                         name="nsmagic-owner").start()
    follower, stop = Follower(run, out, err), Stop()
    try:
        follower.follow()
        stop = follower.stop
    except KeyboardInterrupt:      # SIGTERM to the monitor: the follower stopped the run
        stop = follower.stop
    run.wait()
    result = build(run, follower.last_sample(), follower.samples, stop)
    out.finish()
    err.finish()
    os.close(log)
    run.close()
    records.update(record, state="exited", exit_code=result.exit_code, error=result.error,
                   oom_killed=result.oom_killed, finished_at=time.time())
    if record.get("auto_remove") or ended_by_owner.is_set():
        records.remove(record)


def _start(run, record: dict, ready: int, fresh: bool) -> bool:
    """The container started and its network set up, the record saying so; the CLI hears
    "ok ID", or the sentence why not (and a new container's record goes, a started one's
    says it exited with 125)."""
    try:
        run.start()
        net = None
        if run._network is not None:
            run._network.result()   # a port in use, say: raised here, for the CLI to say
            net = run.network
        from ..runtime.runconfig import BASE_ENV
        env = dict(BASE_ENV, HOSTNAME=run.hostname, PYTHONUNBUFFERED="1", **dict(run.spec.env))
        records.update(record, state="running", pid=run.pid1.pid,
                       pid_start=dirs.start_time(run.pid1.pid), monitor=os.getpid(),
                       monitor_start=dirs.start_time(os.getpid()), started_at=time.time(),
                       cgroup=run.cgroup.name if run.cgroup else None, env=list(env.items()),
                       hostname=run.hostname, ip=net["ip"] if net else None,
                       ports=[_port(p) for p in net["ports"]] if net else [])
    except (NsmagicError, OSError) as error:
        _tell(ready, f"error {error}".encode())
        run.close()
        if fresh:
            records.remove(record)
        else:
            records.update(record, state="exited", exit_code=125, error=str(error),
                           finished_at=time.time())
        return False
    # A starter killed meanwhile does not hear it: the container goes on, as Docker's.
    _tell(ready, f"ok {record['id']} {record['name']}".encode())
    return True


def _tell(ready: int, what: bytes) -> None:
    """The starting CLI hears how the start went, if it is still there to hear it."""
    try:
        os.write(ready, what)
    except OSError:
        pass
    os.close(ready)


def _port(p: list) -> str:
    from ..net.ports import Port
    return str(Port(*p))


def _watch(pidfd: int, run, ended: threading.Event) -> None:
    """--rm-on-exit: when the starting process ends, so does the container."""
    import select
    select.select([pidfd], [], [])
    ended.set()
    run.stop(grace=2.0)
