"""Helper programs that must die with this process (pasta, for a rootless run's network):
started from one thread that lives as long as the process, under `setpriv --pdeathsig
KILL`. PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so a program
started from a short-lived thread (a spare's maker, a user's thread) would die too early;
and a process SIGKILLed has no teardown to stop them: the kernel's signal does."""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading

_requests: queue.Queue = queue.Queue()
_thread: threading.Thread | None = None
_lock = threading.Lock()


def spawn(argv: list[str], **popen) -> subprocess.Popen:
    """Popen(argv) from the long-lived thread, killed when this process dies."""
    global _thread
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_serve, name="nsmagic-tied", daemon=True)
            _thread.start()
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    answer: queue.Queue = queue.Queue()
    _requests.put(([setpriv, "--pdeathsig", "KILL", "--", *argv], popen, answer))
    result = answer.get()
    if isinstance(result, BaseException):
        raise result
    return result


def _serve() -> None:
    while True:
        argv, popen, answer = _requests.get()
        try:
            answer.put(subprocess.Popen(argv, **popen))
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            answer.put(err)


def forget_in_child() -> None:
    """In a fork of the runner: the thread is the parent's."""
    global _thread, _lock, _requests
    _thread, _lock, _requests = None, threading.Lock(), queue.Queue()
