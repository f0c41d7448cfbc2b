"""The host image's /etc for a user: a copy of the host's /etc in the user's store, owned by
the user, so that the container's root (the user, mapped) can change any file of it, as it
can in any image of the user's store. The host's own /etc is owned by the host's root, who
is not mapped into a user's namespace: there its files cannot be written, only read.

The copy holds what the user can read (the host's secrets, which the user cannot read, are
not in it), and is made again when a directory of the host's /etc changed since (its
fingerprint: every directory's change time, ~170 directories here). Root runs use the host's
/etc itself."""

from __future__ import annotations

import hashlib
import os

from .store import Store, remove

SOURCE = "/etc"


def fingerprint(top: str = SOURCE) -> str:
    h = hashlib.sha256()
    stack = [top]
    while stack:
        path = stack.pop()
        try:
            st = os.stat(path)
            entries = os.scandir(path)
        except OSError:
            continue
        h.update(f"{path}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode())
        with entries:
            stack += sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))
    return h.hexdigest()[:24]


def snapshot(store: Store | None = None) -> str | None:
    """The directory to use as the user's /etc layer; None where no store can be made (the
    host's /etc is then used, read-only in effect, as before)."""
    try:
        store = (store or Store()).ensure()
    except Exception:   # noqa: BLE001 - no store: the run goes on with the host's /etc
        return None
    base = store.path("host")
    current = os.path.join(base, f"etc-{fingerprint()}")
    if os.path.isdir(current):
        return current
    os.makedirs(base, mode=0o700, exist_ok=True)
    stage = store.staging("etc-")
    try:
        _copy(SOURCE, os.path.join(stage, "etc"))
        os.rename(os.path.join(stage, "etc"), current)
    except OSError:
        if not os.path.isdir(current):
            return None
    finally:
        remove(stage)
    for old in os.listdir(base):
        if os.path.join(base, old) != current:
            remove(os.path.join(base, old))
    return current


def _copy(src: str, dst: str) -> None:
    """What the user can read of src: directories, files, links, with their modes and times
    (never following a link)."""
    import shutil
    st = os.lstat(src)
    os.mkdir(dst, 0o700)
    for entry in os.scandir(src):
        target = os.path.join(dst, entry.name)
        try:
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            elif entry.is_dir(follow_symlinks=False):
                if os.access(entry.path, os.R_OK | os.X_OK):
                    _copy(entry.path, target)
            elif entry.is_file(follow_symlinks=False) and os.access(entry.path, os.R_OK):
                shutil.copy2(entry.path, target, follow_symlinks=False)
        except OSError:
            continue   # unreadable, or gone meanwhile: not in the copy
    os.chmod(dst, st.st_mode & 0o7777)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
