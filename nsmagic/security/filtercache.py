"""The compiled seccomp filter, kept between processes. Each `nsmagic run` is a new process:
compiling Docker's profile costs it ~20 ms (the profile's data, libseccomp, the compile) where
reading the program back costs well under 1 ms. A notebook kernel compiles once anyway. Kept
where nsmagic.kept keeps files: a private runtime directory, never a home or /tmp, where a
container with a volume could plant a weaker filter.

A file's name holds all its program depends on: the architecture, the kernel's major.minor
(rules have a min_kernel), libseccomp's version, the capabilities kept, and a checksum of the
profile's and the compiler's sources. Stdlib only."""

from __future__ import annotations

import os
import zlib

from .. import kept

MAX_BYTES = 8 * 4096        # the kernel's limit: 4096 instructions of 8 bytes
_SOURCES = ("profile.py", "seccomp.py")


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
    program = kept.read(filename, MAX_BYTES)
    return program if program and len(program) % 8 == 0 else None


def write(filename: str, program: bytes) -> None:
    """Keep `program` for later processes (see nsmagic.kept)."""
    kept.write(filename, program)
