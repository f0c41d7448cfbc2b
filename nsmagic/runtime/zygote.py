"""The fork server: one small interpreter per runner, started once, that clones each run's
PID 1 straight into its namespaces. That costs ~1 ms where a fresh interpreter costs ~20 ms,
and its pages are shared by every PID 1 (copy-on-write), so an idle container adds little.

Protocol (a SOCK_SEQPACKET socket pair): the runner sends a PID 1's boot settings as JSON with
two fds (a control socket, where PID 1 later gets its run, and the status pipe; then, for a
spare made whole ahead, its stdin, stdout and stderr); the zygote answers {"pid": pid} with a
pidfd, or {"error": sentence}. The runner closing its end ends the zygote; so does the
runner's death (PDEATHSIG). Stdlib only."""

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

from ..errors import SetupError  # noqa: E402
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
    linux.cap_last_cap()                             # read once here, for every PID 1
    alive_r, _alive_w = os.pipe()                    # EOF for every PID 1 when we die
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_CONFIG, 8)
        except InterruptedError:
            continue
        if not data:
            os._exit(0)
        try:
            pid = child.start(json.loads(data), fds, alive_r)
        except SetupError as err:
            reply, pidfds = {"error": str(err)}, []
        else:
            # A pidfd taken before we reap it names this PID 1 and no other, ever; the runner
            # watches and signals it through that (it is not the runner's child).
            reply, pidfds = {"pid": pid}, [os.pidfd_open(pid)]
        finally:
            for fd in fds:
                os.close(fd)
        socket.send_fds(sock, [json.dumps(reply).encode()], pidfds)
        for fd in pidfds:
            os.close(fd)


def _reap(_signum, _frame) -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
