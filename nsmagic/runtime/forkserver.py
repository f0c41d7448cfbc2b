"""How the runner gets a PID 1: from the fork server (inside/zygote.py), a small interpreter
started once per runner that clones each PID 1 into its namespaces; or, in a small
single-threaded runner (the CLI), by cloning it itself (~1 ms, no server to start).

The notebook kernel is never forked: it is large (fork costs grow with its memory) and
multi-threaded (zmq, the heartbeat)."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading

from .. import config
from ..config import BootConfig
from ..errors import SetupError
from . import stdio
from .pid1 import Pid1

ZYGOTE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "inside", "zygote.py")

_in_process = False
_parent_alive_r: int | None = None   # in-process: its writer is this process (see init.start)


def use_in_process() -> None:
    """Clone PID 1s in this process from now on. Only for a small single-threaded process
    (the CLI); never a notebook kernel."""
    global _in_process
    _in_process = True


def in_process() -> bool:
    return _in_process


def spawn(boot: BootConfig, fds: list[int]) -> Pid1:
    """Clone one run's PID 1 (see inside/init.start); returns the handle on it."""
    if _in_process:
        global _parent_alive_r
        from ..inside import init
        if _parent_alive_r is None:
            _parent_alive_r, _ = os.pipe()
        pid, pidfd = init.start(boot, fds, _parent_alive_r)
        return Pid1(pid, pidfd, own_child=True)
    return ForkServer.spawn(boot, fds)


class ForkServer:
    """Client of the fork server. Started on first use, from a thread of its own that lives
    as long as the process: PDEATHSIG fires when the *thread* that forked a child exits."""

    _current: ForkServer | None = None
    _lock = threading.Lock()

    def __init__(self):
        self.owner = os.getpid()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        started: list = []
        ready = threading.Event()

        def start_and_stay():
            try:
                import subprocess
                started.append(subprocess.Popen(
                    [sys.executable, "-I", "-S", ZYGOTE, str(theirs.fileno()),
                     str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                    start_new_session=True, env={}))
            except OSError as err:
                started.append(err)
            ready.set()
            threading.Event().wait()          # park: this thread is the zygote's parent

        threading.Thread(target=start_and_stay, name="nsmagic-zygote", daemon=True).start()
        ready.wait()
        theirs.close()
        if isinstance(started[0], OSError):
            ours.close()
            raise SetupError(f"can't start the fork server {sys.executable}: "
                             f"{started[0].strerror.lower()}")
        self.process, self.sock = started[0], stdio.hold(ours)

    @classmethod
    def spawn(cls, boot: BootConfig, fds: list[int]) -> Pid1:
        with cls._lock:
            for _attempt in (1, 2):
                server = cls._current
                if server is None or server.owner != os.getpid() or \
                        server.process.poll() is not None:
                    server = cls._current = cls()
                try:
                    config.send(server.sock, boot, fds)
                    data, pidfds, _, _ = socket.recv_fds(server.sock, 65536, 1)
                    reply = json.loads(data) if data else {}
                    if "error" in reply:
                        raise SetupError(reply["error"])
                    if pidfds:
                        return Pid1(reply["pid"], pidfds[0], own_child=False)
                except OSError:
                    pass
                cls._current = None               # it died: start a new one, once
        raise SetupError("the nsmagic fork server died twice; run `nsmagic info` to see "
                         "what this machine allows.")

    @classmethod
    def forget_in_child(cls) -> None:
        cls._lock, cls._current = threading.Lock(), None
