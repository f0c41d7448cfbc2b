"""`exec -t`: the container's side of a pseudo-terminal is the command's controlling
terminal; this side is relayed to ours, which is put in raw mode meanwhile (so Ctrl-C,
Ctrl-Z and the line editing are the container's terminal's), and its size follows ours."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import sys
import termios


def relay(run, interactive: bool) -> None:
    """Copy between our terminal and the container's until the command's side closes."""
    master, ours = run.terminal, sys.stdin.fileno()
    _copy_size(ours, master)
    previous = signal.signal(signal.SIGWINCH, lambda *_: _copy_size(ours, master))
    inputs = [master, ours] if interactive else [master]
    with _raw(ours if interactive and os.isatty(ours) else None):
        try:
            while True:
                for fd in select.select(inputs, [], [])[0]:
                    try:
                        data = os.read(fd, 65536)
                    except OSError:     # EIO: every process of the terminal's side is gone
                        data = b""
                    if fd == master:
                        if not data:
                            return
                        os.write(sys.stdout.fileno(), data)
                    elif data:
                        os.write(master, data)
                    else:
                        inputs.remove(ours)
        finally:
            signal.signal(signal.SIGWINCH, previous)


@contextlib.contextmanager
def _raw(fd: int | None):
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
    oflag &= ~termios.OPOST
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    lflag &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    # tty.setraw's, but TCSANOW: what was typed before nsmagic started is kept, not flushed
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _copy_size(source: int, target: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(target, termios.TIOCSWINSZ, size)
