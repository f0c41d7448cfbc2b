"""The compiled seccomp filter, kept between processes. Each `nsmagic run` is a new process:
compiling Docker's profile costs it ~20 ms (the profile's data, libseccomp, the compile) where
reading the program back costs well under 1 ms. A notebook kernel compiles once anyway.

Only in a private runtime directory: /run/nsmagic as root, $XDG_RUNTIME_DIR/nsmagic for a user;
without one, no cache. Never in a home or /tmp: a volume of the home is common, and through it
a container could plant a weaker filter for the next run. (A volume of /run exposes more than
this: the Docker socket, systemd's.) A file is used only if it and its directory belong to
this user and no one else may write them, opened without following links.

A file's name holds all its program depends on: the architecture, the kernel's major.minor
(rules have a min_kernel), libseccomp's version, the capabilities kept, and a checksum of the
profile's and the compiler's sources. Stdlib only."""

from __future__ import annotations

import os
import stat
import zlib

MAX_BYTES = 8 * 4096        # the kernel's limit: 4096 instructions of 8 bytes
_SOURCES = ("profile.py", "seccomp.py")


def directory() -> str | None:
    """Where filters are kept for this user, or None where there is no private place."""
    if os.geteuid() == 0:
        return "/run/nsmagic"
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/") and _private(runtime):
        return os.path.join(runtime, "nsmagic")
    return None


def name(caps_mask: int, arch: str, kernel: tuple[int, int], libseccomp: str) -> str:
    """The file name of one filter."""
    here = os.path.dirname(os.path.abspath(__file__))
    checksum = 0
    for source in _SOURCES:
        with open(os.path.join(here, source), "rb") as f:
            checksum = zlib.crc32(f.read(), checksum)
    return (f"seccomp-{arch}-{kernel[0]}.{kernel[1]}-libseccomp{libseccomp}-caps{caps_mask:x}"
            f"-{checksum:08x}.bpf")


def read(filename: str) -> bytes | None:
    """The program kept under `filename`, or None (none kept, or not to be trusted)."""
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
                or st.st_mode & 0o022 or not 0 < st.st_size <= MAX_BYTES
                or st.st_size % 8):
            return None
        program = os.pread(fd, st.st_size, 0)
    finally:
        os.close(fd)
    return program if len(program) == st.st_size else None


def write(filename: str, program: bytes) -> None:
    """Keep `program` for later processes; silently not where it cannot be kept safely."""
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
            view = memoryview(program)
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
