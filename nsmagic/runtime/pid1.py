"""The runner's handle on a run's PID 1: a pidfd, since PID 1 is the fork server's child, not
ours (in the CLI it is our own child, and close() reaps it)."""

from __future__ import annotations

import os
import select
import signal


class Pid1:
    def __init__(self, pid: int, pidfd: int, own_child: bool, stdin=None, stdout=None,
                 stderr=None):
        self.pid, self.pidfd, self.own_child = pid, pidfd, own_child
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.exited = False

    def with_stdio(self, stdin=None, stdout=None, stderr=None) -> Pid1:
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        return self

    def wait(self, timeout: float | None = None) -> None:
        """Until PID 1 has exited; TimeoutError after `timeout` seconds."""
        if not self.exited:
            if not select.select([self.pidfd], [], [], timeout)[0]:
                raise TimeoutError(f"nsmagic-init still runs after {timeout} s")
            self.exited = True

    def running(self) -> bool:
        try:
            self.wait(0)
        except TimeoutError:
            return True
        return False

    def signal(self, sig: int) -> None:
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def close_stdio(self) -> None:
        for f in (self.stdin, self.stdout, self.stderr):
            if f:
                try:
                    f.close()
                except OSError:
                    pass

    def close(self) -> None:
        """Our ends of its pipes and its pidfd; reaped if it is our own child."""
        self.close_stdio()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
            if self.own_child:
                try:
                    os.waitpid(self.pid, 0)
                except ChildProcessError:
                    pass
