"""A run followed to its end, in the runner: its script fed to its stdin, its output streamed
as it arrives (UTF-8 decoded incrementally, a split character is never mangled), its status
read, its cgroup sampled on the same loop (so peaks are seen even without a plot), and a
timeout or an interrupt turned into a stop."""

from __future__ import annotations

import codecs
import fcntl
import io
import os
import selectors
import signal
import time

from ..cgroups import Usage
from ..result import Stop


class Sink:
    """Writes a pipe's bytes to a text stream (decoded incrementally) or a binary one. A
    target that breaks (a reader gone: `nsmagic run -- yes | head -1`) is marked broken,
    and what comes after is dropped."""

    def __init__(self, target):
        self.target = target
        self.text = isinstance(target, io.TextIOBase)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.broken = False

    def write(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            if self.text:
                data = self.decoder.decode(data, final=not data)
            if not data:    # nothing written, nothing to flush (a kernel's flush waits for
                return      # its I/O thread: ~1 ms at the end of every run)
            self.target.write(data)
            self.target.flush()
        except BrokenPipeError:
            self.broken = True


class Follower:
    """One pass over a started run: follow() returns when PID 1 has reported the end and
    every pipe is drained (or PID 1 is gone); samples and stop say what happened."""

    def __init__(self, run, out, err, on_sample=None, channel=None):
        self.run, self.on_sample = run, on_sample
        self.samples: list[Usage] = []
        self.stop = Stop()
        self.sel = selectors.DefaultSelector()
        self.sinks: dict[int, Sink] = {}
        pid1 = run.pid1
        # A Python cell run through IPython (cell/channel.py): its stdout is the channel,
        # its stdin stays open for the replies to input(); its stderr is the host's own.
        self.channel = channel
        for pipe, target in ((pid1.stdout, out), (pid1.stderr, err)):
            if pipe is not None:
                os.set_blocking(pipe.fileno(), False)
                self.sinks[pipe.fileno()] = (channel if channel and pipe is pid1.stdout
                                             else Sink(target))
                self.sel.register(pipe.fileno(), selectors.EVENT_READ)
        self.sel.register(run.status_fd, selectors.EVENT_READ)
        self.status_open = True
        # what is to go to stdin, as views of the buffers it is in (a 10 MB --input is
        # written from its own bytes, never copied)
        self.pending = [memoryview(b) for b in (channel.opening(run, out, err) if channel
                                                else [(run.spec.script or "").encode()]) if b]
        self.stdin_fd = pid1.stdin.fileno() if pid1.stdin is not None else None
        self.feeding = False
        if self.stdin_fd is not None:
            os.set_blocking(self.stdin_fd, False)
            if sum(len(b) for b in self.pending) > 1 << 16:   # fewer, larger writes
                _grow_pipe(self.stdin_fd)
            self._feed_again()
        if channel and run.spec.outputs and pid1.stdout is not None:
            _grow_pipe(pid1.stdout.fileno())
        self.pidfd: int | None = None
        timeout = run.spec.timeout
        self.deadline = run.started + timeout if timeout else None
        # A live view wants a first point at once; without one the first sample can wait an
        # interval (a short run then reads its counters once, at the end).
        self.interval = run.spec.sample_interval
        self.next_sample = time.monotonic() + (0 if on_sample else self.interval)

    def follow(self) -> None:
        """KeyboardInterrupt stops the run (SIGINT, SIGTERM, SIGKILL) and is raised again
        once its output is drained."""
        try:
            while (self.status_open or self.sinks) and not self.run.told:
                events = self.sel.select(self._tick(time.monotonic()))
                if not events and not self.status_open:
                    break    # PID 1 is gone, so every writer is gone: the rest is drained
                for key, _ in events:
                    self._dispatch(key.fd)
        except KeyboardInterrupt:
            self.stop = Stop(interrupted=True, by=self.run.stop())
            self._drain()   # what it printed on its way out (a trap's last words)
            raise
        finally:
            self.sel.close()
            for sink in self.sinks.values():
                sink.write(b"")

    def last_sample(self) -> Usage | None:
        """The group read once more, now that the run is over (before the group goes)."""
        if self.run.cgroup is None:
            return None
        self._sample()
        return self.samples[-1]

    def _tick(self, now: float) -> float:
        """Sample and enforce the timeout when due; returns how long select may wait."""
        has_group = self.run.cgroup is not None
        if has_group and now >= self.next_sample:
            self._sample()
            self.next_sample = now + self.interval
        if self.deadline and now >= self.deadline and not self.stop.timed_out:
            self.stop = Stop(timed_out=True, by=self.run.stop(grace=0.5))
        if not self.status_open:
            return 0.5
        wait = self.interval if has_group else 1.0
        if self.deadline:
            wait = min(wait, max(0.0, self.deadline - now))
        return min(wait, max(0.0, self.next_sample - now)) if has_group else wait

    def _sample(self) -> None:
        self.samples.append(self.run.cgroup.usage())
        if self.on_sample:
            self.on_sample(self.samples[-1], self.run)

    def _dispatch(self, fd: int) -> None:
        if fd == self.pidfd:
            self._pid1_gone()
        elif fd == self.run.status_fd:
            self._status()
        elif fd == self.stdin_fd:
            self._feed()
        else:
            data = _read(fd)
            if data is not None:
                sink = self.sinks[fd]
                sink.write(data)
                if sink is self.channel and self.channel.outbox:   # an input() answered
                    self.pending.append(memoryview(self.channel.take_outbox()))
                    self._feed_again()
                if sink is self.channel and self.channel.exit is not None:
                    # The host said how the cell ended, as it leaves: the run is over for
                    # the caller; the rest of its exit (~2 ms: a large process's memory
                    # unmapped, PID 1 reaping it) goes on off the cell's path.
                    self.run.tell_exit(self.channel.exit)
                    self._drain_now()
                if sink.broken and not self.stop.by:
                    # As a pipeline's writer would get it: SIGPIPE, through PID 1.
                    self.run.signal(signal.SIGPIPE)
                    self.stop = Stop(by="SIGPIPE")
                if not data:
                    self.sel.unregister(fd)
                    del self.sinks[fd]

    def _pid1_gone(self) -> None:
        """Every writer in the container is dead: drain what is left."""
        for fd in (self.pidfd, *self.sinks):
            self.sel.unregister(fd)
        self._drain()
        if self.status_open:
            self.run.read_status()
            self.sel.unregister(self.run.status_fd)
            self.status_open = False

    def _status(self) -> None:
        if not self.run.read_status():
            self.sel.unregister(self.run.status_fd)
            self.status_open = False
        if self.run.reported and self.pidfd is None:
            # Done when the pipes end, or else when PID 1 is gone: a copy of a pipe's write
            # end in some fork of this process must not hold us.
            self.pidfd = self.run.pid1.pidfd
            self.sel.register(self.pidfd, selectors.EVENT_READ)

    def _feed_again(self) -> None:
        if not self.feeding and self.stdin_fd is not None:
            self.sel.register(self.stdin_fd, selectors.EVENT_WRITE)
            self.feeding = True

    def _feed(self) -> None:
        """Write what the pipe takes now; at the end close stdin so the program sees EOF
        (a channel's stays open: more may go there)."""
        try:
            if self.pending:
                self._advance(os.writev(self.stdin_fd, self.pending[:64]))
        except BrokenPipeError:
            self.pending = []
        except BlockingIOError:
            return
        if self.pending:
            return
        self.sel.unregister(self.stdin_fd)
        self.feeding = False
        if self.channel is not None:
            self.channel.sent()
            return
        try:
            self.run.pid1.stdin.close()
        except OSError:
            pass
        self.stdin_fd = None

    def _drain_now(self) -> None:
        """What the pipes hold now, without waiting for their ends."""
        for fd, sink in list(self.sinks.items()):
            while (data := _read(fd)):
                sink.write(data)

    def _advance(self, written: int) -> None:
        while written and self.pending:
            first = self.pending[0]
            if written >= len(first):
                written -= len(first)
                self.pending.pop(0)
            else:
                self.pending[0], written = first[written:], 0

    def _drain(self) -> None:
        """After a stop every writer is dead: read each pipe to its end."""
        for fd, sink in list(self.sinks.items()):
            while True:
                data = _read(fd)
                if not data:
                    break
                sink.write(data)
            self.sinks.pop(fd)
            sink.write(b"")


def _grow_pipe(fd: int, size: int = 1 << 20) -> None:
    """A pipe of 1 MiB (the default most-a-user-may, /proc/sys/fs/pipe-max-size) for a large
    --input or --output: 16 times fewer wake-ups than 64 KiB ones."""
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except OSError:
        pass   # over the user's pipe quota: the default size works, a little slower


def _read(fd: int) -> bytes | None:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""
