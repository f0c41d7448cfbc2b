"""The runner's ends of PID 1s' pipes and sockets, and what a fork of the runner does with
them. A copy of a waiting interpreter's stdin in a fork (multiprocessing's workers, say)
would keep the cell it gets from ever seeing its end."""

from __future__ import annotations

import os
import weakref

# File and socket objects, so a closed one is known as closed and its number never mistaken
# for a newer fd's.
_HELD: weakref.WeakSet = weakref.WeakSet()


def hold(f):
    """Register one of our ends (see forget_in_child); returns it."""
    _HELD.add(f)
    return f


def pipes(stdin: bool, stdout: bool, stderr: bool) -> tuple[dict, list[int]]:
    """Pipes for the streams wanted (/dev/null for the others): our ends as unbuffered
    files by name, and the child's three fds in order."""
    ours, theirs = {}, []
    try:
        for name, wanted, mode in (("stdin", stdin, "wb"), ("stdout", stdout, "rb"),
                                   ("stderr", stderr, "rb")):
            if not wanted:
                theirs.append(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
                continue
            r, w = os.pipe2(os.O_CLOEXEC)
            mine, child_end = (w, r) if mode == "wb" else (r, w)
            ours[name] = hold(os.fdopen(mine, mode, buffering=0))
            theirs.append(child_end)
    except BaseException:
        for f in ours.values():
            f.close()
        for fd in theirs:
            os.close(fd)
        raise
    return ours, theirs


def forget_in_child() -> None:
    """In a fork of the runner: each held fd becomes /dev/null, so its file objects stay
    valid but no container's pipe is kept open by the fork."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for held in list(_HELD):
        fd = -1 if getattr(held, "closed", False) else held.fileno()
        if fd >= 0:
            os.dup2(null, fd, inheritable=False)
    os.close(null)
