"""Where nsmagic keeps state: the store (kept across reboots: networks, containers kept after
they exit, images) and the runtime directory (gone at reboot: sockets of helper processes).
Stdlib only. With them, what names a process across time (pid, start time, boot).

The store is the images branch's: root's /var/lib/nsmagic, a user's $XDG_DATA_HOME/nsmagic
(NSMAGIC_STORE overrides both), mode 0700."""

from __future__ import annotations

import functools
import os


def store_root() -> str:
    if os.environ.get("NSMAGIC_STORE"):
        return os.path.abspath(os.environ["NSMAGIC_STORE"])
    if os.geteuid() == 0:
        return "/var/lib/nsmagic"
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data, "nsmagic")


def store(*parts: str) -> str:
    """A directory of the store, made (0700) where missing."""
    root = store_root()
    if not os.path.isdir(root):
        os.makedirs(root, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
    path = os.path.join(root, *parts)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def runtime(*parts: str) -> str:
    """A private directory that goes at reboot (kept.py's: /run/nsmagic as root, else
    $XDG_RUNTIME_DIR/nsmagic), or one under the store where there is none."""
    from . import kept
    base = kept.directory() or os.path.join(store_root(), "run")
    path = os.path.join(base, *parts)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


@functools.lru_cache(maxsize=None)
def boot_id() -> str:
    """This boot's id: a pid and a start time name a process only within one boot."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def pid_exists(pid: int | None) -> bool:
    """Whether a process with this pid runs (one we may not signal counts)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None if there is no such pid:
    with the pid, it names one process (a pid is reused, a pid and start time are not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None
