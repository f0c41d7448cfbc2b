"""The fork server: one small interpreter per runner, started once (`python -I -S` running
this file), that clones each run's PID 1 straight into its namespaces. That costs ~1 ms where
a fresh interpreter costs ~20 ms, and its pages are shared by every PID 1 (copy-on-write), so
an idle container adds little.

Protocol (a SOCK_SEQPACKET socket pair; see config.send): the runner sends a PID 1's
BootConfig with two fds (a control socket, where PID 1 later gets its run, and the status
pipe; then, for a spare made whole ahead, its stdin, stdout and stderr); the zygote answers
{"pid": pid} with a pidfd, or {"error": sentence}. The runner closing its end ends the
zygote; so does the runner's death (PDEATHSIG). Stdlib only."""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import sys

if __name__ == "__main__":   # run as a file, so `ps` inside shows a readable command line
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    from nsmagic.inside.zygote import serve
    serve(int(sys.argv[1]), int(sys.argv[2]))

from .. import config  # noqa: E402
from ..config import BootConfig  # noqa: E402
from ..errors import SetupError  # noqa: E402
from . import init, linux  # noqa: E402

MAX_FDS = 5


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
    # Every PID 1 shares this process's pages until it writes them, and a garbage collection
    # writes to every object it walks: what is here now is frozen out of its reach (and PID
    # 1 does not collect at all: see init._become_init).
    gc.freeze()
    while True:
        try:
            boot, fds = config.receive(sock, BootConfig, MAX_FDS)
        except InterruptedError:
            continue
        except SetupError as err:
            _reply(sock, {"error": str(err)})
            continue
        if boot is None:
            os._exit(0)
        pidfds = []
        try:
            pid, pidfd = init.start(boot, fds, alive_r)
            reply, pidfds = {"pid": pid}, [pidfd]
        except SetupError as err:
            reply = {"error": str(err)}
        finally:
            for fd in fds:
                os.close(fd)
        _reply(sock, reply, pidfds)


def _reply(sock: socket.socket, reply: dict, fds: list[int] = ()) -> None:
    socket.send_fds(sock, [json.dumps(reply).encode()], fds)
    for fd in fds:
        os.close(fd)


def _reap(_signum, _frame) -> None:
    """PID 1s are ours; the runner watches each through its pidfd."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
