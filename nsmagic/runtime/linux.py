"""The system calls Python 3.11's os module lacks (unshare, mount, pivot_root, prctl, capset),
through ctypes. Each raises OSError with errno, like the os module does."""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

SYS_pivot_root = 155   # x86_64
SYS_capget = 125
SYS_capset = 126

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


def _check(result: int, *paths) -> int:
    if result < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), *paths[:1])
    return result


def _b(s):
    return None if s is None else os.fsencode(s)


# Calls through PyDLL keep the GIL, so a clone()d child is born holding it, as after os.fork.
_libc_gil = ctypes.PyDLL(None, use_errno=True)
SYS_clone = 56   # x86_64


SYS_clone3 = 435
CLONE_INTO_CGROUP = 0x200000000


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


def clone(flags: int, cgroup_fd: int | None = None) -> int:
    """fork() straight into new namespaces: with CLONE_NEWPID the child is PID 1 of a new PID
    namespace and our own child (unshare would only put the *next* child there). With a
    cgroup v2 directory fd, clone3 starts the child inside that group: no migration, which
    costs an RCU grace period. The same bookkeeping as os.fork around it, through the C API
    os.fork itself uses."""
    import signal
    ctypes.pythonapi.PyOS_BeforeFork()
    if cgroup_fd is None:
        pid = _libc_gil.syscall(SYS_clone, ctypes.c_ulong(flags | signal.SIGCHLD), None, None,
                                None, None)
    else:
        args = _CloneArgs(flags=flags | CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD,
                          cgroup=cgroup_fd)
        pid = _libc_gil.syscall(SYS_clone3, ctypes.byref(args), ctypes.sizeof(args))
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    e = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    return _check(pid) if pid > 0 else _raise(e)


def _raise(e: int):
    raise OSError(e, os.strerror(e))


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags))


def mount(source, target, fstype, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), target)


def umount(target, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), target)


def pivot_root(new_root, put_old) -> None:
    _check(_libc.syscall(SYS_pivot_root, _b(new_root), _b(put_old)), new_root)


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, 0, 0))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_CAP_V3 = 0x20080522


def cap_last_cap(cache=[]) -> int:  # noqa: B006 - read once per fork server, on purpose
    if not cache:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            cache.append(int(f.read()))
    return cache[0]


def limit_capabilities(keep: set[int]) -> None:
    """Drop every capability not in `keep` from the bounding, inheritable and ambient sets,
    so that neither exec (even as root) nor a file capability can bring them back."""
    last = cap_last_cap()
    for cap in range(last + 1):
        if cap not in keep:
            try:
                prctl(PR_CAPBSET_DROP, cap)
            except OSError:
                pass  # not in the bounding set to begin with
    try:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass
    header = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(SYS_capget, ctypes.byref(header), ctypes.byref(data)))
    mask = [sum(1 << c for c in keep if c // 32 == i) for i in (0, 1)]
    for i in (0, 1):
        data[i].inheritable &= mask[i]
    _check(_libc.syscall(SYS_capset, ctypes.byref(header), ctypes.byref(data)))


def set_name(name: str) -> None:
    """The process name `ps` shows in its COMMAND column (comm, 15 bytes)."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _libc.prctl(PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0)


def loopback_up() -> None:
    """Bring `lo` up with one ioctl: no need for pyroute2 (+300 ms of imports) for this."""
    import fcntl
    import socket
    import struct
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
