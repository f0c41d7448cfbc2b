"""The fork server: one small interpreter per runner, started once, that forks a helper for
each run. Forking it costs ~1 ms where a fresh interpreter costs ~20 ms, and its pages are
shared by every helper and PID 1 it forks (copy-on-write), so an idle container adds little.

Protocol (a SOCK_SEQPACKET socket pair): the runner sends the run's config as JSON with four
fds (stdin, stdout, stderr, status); the zygote answers {"pid": helper_pid}. The runner closing
its end ends the zygote; so does the runner's death (PDEATHSIG). Stdlib only."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

if __name__ == "__main__":   # run as a file, so `ps` inside shows a readable command line
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    from nsmagic.runtime.zygote import serve
    serve(int(sys.argv[1]), int(sys.argv[2]))

from . import child, linux  # noqa: E402

MAX_CONFIG = 1 << 20


def serve(sock_fd: int, runner: int) -> None:
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != runner:
        os._exit(1)
    linux.set_name("nsmagic-zygote")
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the runner decides what an interrupt does
    signal.signal(signal.SIGCHLD, _reap)
    sock = socket.socket(fileno=sock_fd)
    zygote = os.getpid()
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_CONFIG, 4)
        except InterruptedError:
            continue
        if not data:
            os._exit(0)
        pid = os.fork()
        if pid == 0:
            sock.close()
            become_helper(json.loads(data), fds, zygote)
        for fd in fds:
            os.close(fd)
        # A pidfd taken before we reap it names this helper and no other, ever; the runner
        # watches and signals the helper through it (it is not the runner's child).
        pidfd = os.pidfd_open(pid)
        socket.send_fds(sock, [json.dumps({"pid": pid}).encode()], [pidfd])
        os.close(pidfd)


def _reap(_signum, _frame) -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def become_helper(cfg: dict, fds: list[int], parent: int) -> None:
    """In a fresh fork: put the run's fds in place and be its helper; never returns."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)   # the helper waits for its PID 1
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.setsid()
        stdin, stdout, stderr, status = fds
        for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
            os.dup2(fd, target)
        os.dup2(status, 4)                              # the workload closes fds above 3
        os.closerange(5, 1 << 16)                       # the received fds and the socket
        child.helper(cfg, 4, parent)
    except BaseException as err:  # noqa: BLE001 - never silent: the runner shows this line
        child.Status(4).send(error=f"nsmagic's helper failed: {err!r}", code=child.EXIT_SETUP)
    finally:
        os._exit(child.EXIT_SETUP)
