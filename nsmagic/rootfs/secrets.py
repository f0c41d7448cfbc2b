"""The host's secrets, which the default root hides: under /etc, every file that is not
world-readable and every directory that is not world-searchable (shadow, gshadow, ssh host
keys, /etc/ssl/private, sudoers...). A user without root could not read them on the host; a
container's root could, since it is the host's root. PID 1 puts a whiteout over each.

Scanning /etc costs ~6 ms (about 1,300 entries here), too much for every cell: a runner
keeps the list, and refreshes it after a run, off the run's path (runtime/teardown.py), at
most every REFRESH_EVERY seconds. A file made secret on the host while a notebook runs is
hidden from its cells within that time, after a cell has run."""

from __future__ import annotations

import os
import stat
import threading
import time

SCANNED = ("/etc",)
REFRESH_EVERY = 5.0

_cached: tuple[str, ...] | None = None
_scanned_at = 0.0
_lock = threading.Lock()


def hidden() -> tuple[str, ...]:
    """The paths to hide: the list from the last scan (scanned now if there is none)."""
    global _cached, _scanned_at
    with _lock:
        if _cached is None:
            _cached, _scanned_at = scan(), time.monotonic()
        return _cached


def refresh() -> None:
    """Scan again, if the list is in use and old enough (after a run, in the background)."""
    global _cached, _scanned_at
    if _cached is None or time.monotonic() - _scanned_at < REFRESH_EVERY:
        return
    found = scan()
    with _lock:
        _cached, _scanned_at = found, time.monotonic()


def scan() -> tuple[str, ...]:
    found: list[str] = []
    stack = list(SCANNED)
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    mode = entry.stat(follow_symlinks=False).st_mode
                except OSError:
                    continue
                if stat.S_ISDIR(mode):
                    if mode & stat.S_IROTH and mode & stat.S_IXOTH:
                        stack.append(entry.path)
                    else:
                        found.append(entry.path)
                elif stat.S_ISREG(mode) and not mode & stat.S_IROTH:
                    found.append(entry.path)
    return tuple(sorted(found))
