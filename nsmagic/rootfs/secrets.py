"""The host's secrets, which the default root hides: under /etc, every file that is not
world-readable and every directory that is not world-searchable (shadow, gshadow, ssh host
keys, /etc/ssl/private, sudoers...). A user without root could not read them on the host; a
container's root could, since it is the host's root. PID 1 puts a whiteout over each.

Scanning /etc costs ~6 ms (about 1,300 entries here), too much for every start. A notebook's
runner keeps the list and scans again after a run, off the run's path (runtime/teardown.py),
at most every REFRESH_EVERY seconds. A new process (`nsmagic run`) reads the list kept by the
last one (nsmagic.kept) with the times each directory last changed, and scans again only if
one did (~0.3 ms to check). What that misses until the next scan: a file already there made
secret by chmod (its directory does not change); a new secret file always changes one."""

from __future__ import annotations

import json
import os
import stat
import threading
import time

from .. import kept

SCANNED = ("/etc",)
REFRESH_EVERY = 5.0
KEPT_AS = "host-secrets.json"

_cached: tuple[str, ...] | None = None
_scanned_at = 0.0
_lock = threading.Lock()


def hidden() -> tuple[str, ...]:
    """The paths to hide: this process's list, or the one kept by an earlier process if no
    directory changed since, or a new scan."""
    global _cached, _scanned_at
    with _lock:
        if _cached is None:
            _cached = _read_kept()
            if _cached is None:
                _cached = _scan_and_keep()
            _scanned_at = time.monotonic()
        return _cached


def refresh() -> None:
    """Scan again, if the list is in use and old enough (after a run, in the background)."""
    global _cached, _scanned_at
    if _cached is None or time.monotonic() - _scanned_at < REFRESH_EVERY:
        return
    found = _scan_and_keep()
    with _lock:
        _cached, _scanned_at = found, time.monotonic()


def scan() -> tuple[str, ...]:
    return _walk()[0]


def _walk() -> tuple[tuple[str, ...], dict[str, int]]:
    """The hidden paths, and the directories walked with when each last changed."""
    found: list[str] = []
    walked: dict[str, int] = {}
    stack = list(SCANNED)
    while stack:
        where = stack.pop()
        try:
            walked[where] = os.stat(where).st_mtime_ns
            entries = os.scandir(where)
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
    return tuple(sorted(found)), walked


def _scan_and_keep() -> tuple[str, ...]:
    found, walked = _walk()
    kept.write(KEPT_AS, json.dumps({"hidden": found, "walked": walked}).encode())
    return found


def _read_kept() -> tuple[str, ...] | None:
    data = kept.read(KEPT_AS, 1 << 20)
    if data is None:
        return None
    try:
        record = json.loads(data)
        walked, found = record["walked"], tuple(record["hidden"])
        for where, mtime in walked.items():
            if os.stat(where).st_mtime_ns != mtime:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not all(isinstance(p, str) and p.startswith("/") for p in found):
        return None
    return found
