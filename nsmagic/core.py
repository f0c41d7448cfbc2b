"""One run from start to result: the API the magic, the CLI and the benchmark share.

    result = run(Spec.from_argv("--mem 100M -- /bin/true"), out=sys.stdout, err=sys.stderr)

Output is streamed as it arrives (UTF-8 decoded incrementally, a split character is never
mangled); the cgroup is sampled on the same loop, so peaks are seen even without a plot."""

from __future__ import annotations

import codecs
import io
import os
import selectors
import sys
import time
from collections.abc import Callable

from .cgroups import Usage
from .runtime.launcher import Result, Run
from .runtime.spares import Endings
from .spec import Spec

__all__ = ["run", "start", "Run", "Result"]


def start(spec: Spec, out=None, err=None) -> Run:
    """Start a run and return at once (for detached or many containers); stop() or close()."""
    return Run(spec, out, err).start()


class _Sink:
    """Writes a pipe's bytes to a text stream (decoded incrementally) or a binary one."""

    def __init__(self, target):
        self.target = target
        self.text = isinstance(target, io.TextIOBase)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, data: bytes) -> None:
        if self.text:
            chunk = self.decoder.decode(data, final=not data)
            if chunk:
                self.target.write(chunk)
        elif data:
            self.target.write(data)
        self.target.flush()


def run(spec: Spec, out=None, err=None,
        on_sample: Callable[[Usage, Run], None] | None = None) -> Result:
    """Run to the end. KeyboardInterrupt stops the container (SIGINT, SIGTERM, SIGKILL),
    cleans up, and is raised again with the result attached as `.result`."""
    container = Run(spec, out, err)
    container.start()
    if container.warning:   # a banner before the cell runs, never a silent downgrade
        print(f"nsmagic: {container.warning}", file=sys.stderr, flush=True)
    try:
        result = _follow(container, out, err, on_sample)
    except KeyboardInterrupt:
        container.close()
        Endings.settle()   # the cell will say that all of it is gone: make sure first
        raise
    finally:
        container.close()
        container.mark("run closed, teardown handed off")
    return result


def _follow(container: Run, out, err, on_sample) -> Result:
    spec, proc = container.spec, container.process
    sel = selectors.DefaultSelector()
    sinks = {}
    for pipe, target in ((proc.stdout, out), (proc.stderr, err)):
        if pipe is not None:
            os.set_blocking(pipe.fileno(), False)
            sinks[pipe.fileno()] = _Sink(target)
            sel.register(pipe.fileno(), selectors.EVENT_READ)
    sel.register(container.status_fd, selectors.EVENT_READ)
    script = (spec.script or "").encode()
    stdin_fd = proc.stdin.fileno() if proc.stdin is not None else None
    if stdin_fd is not None:
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE)
    deadline = container.started + spec.timeout if spec.timeout else None
    samples: list[Usage] = []
    # A live view wants a first point at once; without one the first sample can wait an
    # interval (a short run then reads its counters once, at the end).
    next_sample = time.monotonic() + (0 if on_sample else spec.interval)
    status_open, timed_out, stopped_by = True, False, None
    pidfd = None
    interrupted = None
    try:
        while status_open or sinks:
            now = time.monotonic()
            if container.cgroup and now >= next_sample:
                samples.append(container.cgroup.usage())
                if on_sample:
                    on_sample(samples[-1], container)
                next_sample = now + spec.interval
            if deadline and now >= deadline and not timed_out:
                timed_out = True
                stopped_by = container.stop(grace=0.5)
            wait = spec.interval if container.cgroup else 1.0
            if deadline:
                wait = min(wait, max(0.0, deadline - now))
            if not status_open:
                wait = 0.5      # PID 1 is gone, so every writer is gone; drain what is left
            events = sel.select(min(wait, max(0.0, next_sample - now)) if container.cgroup
                                else wait)
            if not events and not status_open:
                break
            for key, _ in events:
                fd = key.fd
                if fd == pidfd:   # PID 1 is gone: every writer in the container is dead
                    for done in (fd, *sinks):
                        sel.unregister(done)
                    _drain(sinks)
                    if status_open:
                        container.read_status()
                        sel.unregister(container.status_fd)
                        status_open = False
                elif fd == container.status_fd:
                    if not container.read_status():
                        sel.unregister(fd)
                        status_open = False
                    if container.reported and pidfd is None:
                        # Done when the pipes end, or else when PID 1 is gone: a copy of a
                        # pipe's write end in some fork of this process must not hold us.
                        pidfd = proc.pidfd
                        sel.register(pidfd, selectors.EVENT_READ)
                elif fd == stdin_fd:
                    script = _feed(proc, sel, script)
                else:
                    data = _read(fd)
                    if data is None:
                        continue
                    sinks[fd].write(data)
                    if not data:
                        sel.unregister(fd)
                        del sinks[fd]
    except KeyboardInterrupt:
        interrupted = container.stop()
        _drain(sinks)   # what it printed on its way out (a trap's last words)
    finally:
        sel.close()
    container.wait()
    container.ended = time.monotonic()
    container.mark("exit reported, output drained")
    for sink in sinks.values():
        sink.write(b"")
    if container.cgroup:
        samples.append(container.cgroup.usage())
        if on_sample:
            on_sample(samples[-1], container)
    result = container.result(samples[-1] if container.cgroup else None)
    result.samples = samples
    result.profile = container.marks   # the same list: close() adds its step later
    result.timed_out, result.stopped_by = timed_out, stopped_by
    if result.pids_peak is None and samples:
        result.pids_peak = max(s.pids_current for s in samples)
    if interrupted:
        result.interrupted, result.stopped_by = True, interrupted
        error = KeyboardInterrupt()
        error.result = result
        raise error
    return result


def _drain(sinks: dict) -> None:
    """After a stop every writer is dead: read each pipe to its end."""
    for fd, sink in list(sinks.items()):
        while True:
            data = _read(fd)
            if not data:
                break
            sink.write(data)
        sinks.pop(fd)
        sink.write(b"")


def _read(fd: int) -> bytes | None:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _feed(proc, sel, script: bytes) -> bytes:
    """Write what the pipe takes now; close stdin at the end so the program sees EOF."""
    try:
        if script:
            script = script[os.write(proc.stdin.fileno(), script[:65536]):]
    except BrokenPipeError:
        script = b""
    except BlockingIOError:
        return script
    if not script:
        sel.unregister(proc.stdin.fileno())
        try:
            proc.stdin.close()
        except OSError:
            pass
    return script
