"""Images that need no network, made in the store the first time they are asked for:

- hello-world: one layer holding /hello, a static ELF program assembled here (x86_64 or
  aarch64; no compiler, no download) that writes what just happened and exits;
- busybox: the host's busybox-static and its applet links (Debian: busybox-static);
- scratch: the empty image, for `FROM scratch`; nothing in it runs;
- host: the host's own /usr, /etc, /opt read-only (the default; not in the store).

Everything is reproducible (owner 0, mtime 0, fixed created time): the same bytes, so the
same image id, on every machine of one architecture."""

from __future__ import annotations

import os
import platform
import shutil
import struct
import subprocess

from ..errors import NsmagicError
from . import compose
from . import store as st

HOST, SCRATCH = "host", "scratch"
BUSYBOX = "/usr/bin/busybox"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

HELLO = """
Hello from nsmagic!
This text was written by /hello, a static program of about a kilobyte (most of it this
text) that makes two system calls: write and exit.

To get here, nsmagic:
 1. found the image hello-world in its local store, where it was made on this machine
    (nothing downloaded): one layer holding /hello, and a config whose Cmd is /hello;
 2. unpacked that layer once into the store and stacked it as the read-only lower layer
    of an overlay file system, with a fresh, empty writable layer on top;
 3. cloned a PID 1 into new pid, mount, uts, ipc and network namespaces, in a cgroup of
    its own, which pivoted into that overlay root and started /hello;
 4. streamed /hello's output to you. When /hello exited, PID 1 and its namespaces
    went with it; the container's record and writable layer stay when it is kept
    (nsmagic run keeps it unless --rm): nsmagic ps -a lists them.

Something with more in it:
    nsmagic run busybox sh -c 'echo I am PID $$ on $(hostname); ps'
And the images here: nsmagic images; one in detail: nsmagic inspect hello-world
"""


class NoBusybox(NsmagicError):
    pass


def is_builtin(name: str) -> bool:
    return name in MAKERS


def make(store: st.Store, name: str) -> st.Image:
    return MAKERS[name](store)


# --- hello-world


def hello_elf(machine: str | None = None, text: str = HELLO) -> bytes:
    """A minimal static ELF64 executable: one PT_LOAD segment (the whole file, read and
    execute) whose code is write(1, text, len) and exit(0)."""
    machine = machine or platform.machine()
    message = text.lstrip("\n").encode()
    header_size, phdr_size, base = 64, 56, 0x400000
    code_at = header_size + phdr_size
    if machine == "x86_64":
        code, e_machine = _x86_64(code_at, len(message)), 62
    elif machine == "aarch64":
        code, e_machine = _aarch64(len(message)), 183
    else:
        raise NsmagicError(f"the built-in hello-world is made for x86_64 and aarch64, not "
                           f"{machine}; load a hello-world image instead (nsmagic load).")
    body = code + message
    size = code_at + len(body)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)          # 64-bit, little-endian
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, e_machine, 1, base + code_at,
                                 header_size, 0, 0, header_size, phdr_size, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)   # R+X
    return header + phdr + body


def _x86_64(code_at: int, length: int) -> bytes:
    code = bytearray()
    code += b"\xb8\x01\x00\x00\x00"                  # mov eax, 1 (write)
    code += b"\xbf\x01\x00\x00\x00"                  # mov edi, 1 (stdout)
    lea_end = len(code) + 7
    code += b"\x48\x8d\x35" + struct.pack("<i", 0)   # lea rsi, [rip + text] (patched below)
    code += b"\xba" + struct.pack("<I", length)      # mov edx, length
    code += b"\x0f\x05"                              # syscall
    code += b"\xb8\x3c\x00\x00\x00"                  # mov eax, 60 (exit)
    code += b"\x31\xff"                              # xor edi, edi
    code += b"\x0f\x05"                              # syscall
    code[lea_end - 4:lea_end] = struct.pack("<i", len(code) - lea_end)
    return bytes(code)


def _aarch64(length: int) -> bytes:
    def movz(reg: int, value: int) -> int:
        return 0xD2800000 | (value << 5) | reg
    words = [movz(0, 1),                 # x0 = 1 (stdout)
             0,                          # adr x1, text (patched below)
             movz(2, length),            # x2 = length
             movz(8, 64),                # x8 = 64 (write)
             0xD4000001,                 # svc #0
             movz(0, 0),                 # x0 = 0
             movz(8, 93),                # x8 = 93 (exit)
             0xD4000001]                 # svc #0
    offset = (len(words) - 1) * 4        # from the adr (word 1) to the text after the code
    words[1] = 0x10000000 | ((offset & 3) << 29) | ((offset >> 2) << 5) | 1
    if length >= 1 << 16:
        raise ValueError("the text is too long for one movz")
    return struct.pack(f"<{len(words)}I", *words)


def make_hello(store: st.Store) -> st.Image:
    tar = compose.tar_of([("hello", "file", 0o755, hello_elf())])
    layer = compose.layer_from_bytes(store, tar, "COPY hello / # a static ELF made by nsmagic")
    return compose.write_image(store, "hello-world:latest", [layer],
                               {"Env": [f"PATH={PATH}"], "Cmd": ["/hello"]})


# --- busybox


def make_busybox(store: st.Store) -> st.Image:
    source = BUSYBOX if os.path.exists(BUSYBOX) else shutil.which("busybox")
    if not source or not is_static(source):
        raise NoBusybox("the built-in busybox image is made from the host's static busybox, "
                        "which is not installed; apt-get install busybox-static (or load a "
                        "busybox image: nsmagic load -i FILE).")
    applets = subprocess.run([source, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    with open(source, "rb") as f:
        binary = f.read()
    entries = [(d, "dir", mode, b"") for d, mode in
               (("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("home", 0o755),
                ("proc", 0o555), ("root", 0o700), ("sys", 0o555), ("tmp", 0o1777),
                ("usr", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755), ("var", 0o755))]
    entries.append(("bin/busybox", "file", 0o755, binary))
    entries += [(f"bin/{a}", "sym", 0o777, "busybox") for a in sorted(set(applets))
                if a != "busybox"]
    entries += [("etc/passwd", "file", 0o644,
                 b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"),
                ("etc/group", "file", 0o644, b"root:x:0:\nnogroup:x:65534:\n")]
    layer = compose.layer_from_bytes(store, compose.tar_of(entries),
                                     f"ADD busybox {len(applets)} applets # from the host's "
                                     "busybox-static")
    return compose.write_image(store, "busybox:latest", [layer],
                               {"Env": [f"PATH={PATH}"], "Cmd": ["sh"]})


def is_static(path: str) -> bool:
    """An ELF file with no PT_INTERP program header (no dynamic loader needed)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                return False
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


MAKERS = {"hello-world": make_hello, "busybox": make_busybox}
