"""Small files kept between the runner's processes (each `nsmagic run` is a new one), so a
cold start does not redo work whose result has not changed: the compiled seccomp filter, the
list of the host's secrets.

Only in a private runtime directory: /run/nsmagic as root, $XDG_RUNTIME_DIR/nsmagic for a user;
without one, nothing is kept. Never in a home or /tmp: a volume of the home is common, and
through it a container could plant what the next run trusts. (A volume of /run exposes more
than this: the Docker socket, systemd's.) A file is used only if it and its directory belong
to this user and no one else may write them, opened without following links. Stdlib only."""

from __future__ import annotations

import os
import stat


def directory() -> str | None:
    """Where files are kept for this user, or None where there is no private place."""
    if os.geteuid() == 0:
        return "/run/nsmagic"
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/") and _private(runtime):
        return os.path.join(runtime, "nsmagic")
    return None


def read(filename: str, max_bytes: int) -> bytes | None:
    """What is kept under `filename`, or None (nothing kept, or not to be trusted)."""
    where = directory()
    if where is None or not _private(where):
        return None
    try:
        fd = os.open(os.path.join(where, filename), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                or st.st_mode & 0o022 or not 0 < st.st_size <= max_bytes):
            return None
        data = os.pread(fd, st.st_size, 0)
    finally:
        os.close(fd)
    return data if len(data) == st.st_size else None


def write(filename: str, data: bytes) -> None:
    """Keep `data` for later processes; silently not where it cannot be kept safely."""
    where = directory()
    if where is None:
        return
    try:
        os.makedirs(where, mode=0o700, exist_ok=True)
        if not _private(where):
            return
        temporary = os.path.join(where, f".{filename}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(temporary, os.path.join(where, filename))   # whole or not at all
    except OSError:
        pass


def _private(path: str) -> bool:
    """A real directory of this user that no one else may write to or list."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & 0o077)
