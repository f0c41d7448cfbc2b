"""The system calls Python's os module lacks (clone into namespaces, mount, pivot_root, prctl,
capset, keyctl) and the process title, through ctypes. Each raises OSError with errno, as the
os module does.

System call numbers differ between architectures: one table per architecture, and an
architecture without one is refused with a sentence, never guessed."""

from __future__ import annotations

import ctypes
import os

from ..errors import SetupError

_libc = ctypes.CDLL(None, use_errno=True)
# Calls through PyDLL keep the GIL, so a clone()d child is born holding it, as after os.fork.
_libc_gil = ctypes.PyDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_PIDFD = 0x00001000
CLONE_INTO_CGROUP = 0x200000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# Numbers of the calls used here that os lacks. Calls added since 5.x (>= 424) share one
# number on every architecture; older ones differ. aarch64 and riscv64 use the generic table.
_GENERIC = {"clone": 220, "pivot_root": 41, "capget": 90, "capset": 91, "seccomp": 277,
            "keyctl": 219}
SYSCALL_TABLES = {
    "x86_64": {"clone": 56, "pivot_root": 155, "capget": 125, "capset": 126, "seccomp": 317,
               "keyctl": 250},
    "aarch64": _GENERIC,
    "riscv64": _GENERIC,
}
_COMMON = {"clone3": 435, "pidfd_open": 434, "open_tree": 428, "move_mount": 429,
           "openat2": 437, "mount_setattr": 442}
MACHINE = os.uname().machine


def syscall_number(name: str) -> int:
    if name in _COMMON:
        return _COMMON[name]
    table = SYSCALL_TABLES.get(MACHINE)
    if table is None:
        raise SetupError(f"nsmagic knows the system call numbers of {', '.join(SYSCALL_TABLES)}, "
                         f"not of this machine's {MACHINE}; run on one of those, or add its "
                         "table to nsmagic/inside/linux.py.")
    return table[name]


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


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


def clone(flags: int, cgroup_fd: int | None = None) -> tuple[int, int]:
    """fork() straight into new namespaces: with CLONE_NEWPID the child is PID 1 of a new PID
    namespace and our own child (unshare would only put the *next* child there). With a
    cgroup v2 directory fd, clone3 starts the child inside that group: no migration, which
    costs an RCU grace period. Returns (pid, pidfd) in the parent, (0, -1) in the child: the
    pidfd comes from clone itself (CLONE_PIDFD), so it names the child even if the child
    dies and is reaped before we look. The same bookkeeping as os.fork around it, through
    the C API os.fork itself uses."""
    import signal
    pidfd = ctypes.c_int(-1)
    flags |= CLONE_PIDFD
    if cgroup_fd is None:
        number = syscall_number("clone")   # flags, stack, parent_tid (gets the pidfd), ...
        args = (ctypes.c_ulong(flags | signal.SIGCHLD), None, ctypes.byref(pidfd), None, None)
    else:
        number = syscall_number("clone3")
        request = _CloneArgs(flags=flags | CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD,
                             pidfd=ctypes.addressof(pidfd), cgroup=cgroup_fd)
        args = (ctypes.byref(request), ctypes.sizeof(request))
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _libc_gil.syscall(number, *args)
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0, -1
    e = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(e, os.strerror(e))
    return pid, pidfd.value


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags))


def mount(source, target, fstype, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), target)


def umount(target, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), target)


def pivot_root(new_root, put_old) -> None:
    _check(_libc.syscall(syscall_number("pivot_root"), _b(new_root), _b(put_old)), new_root)


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, 0, 0))


# --- capabilities, as bit masks (bit n = capability n; names: security/capabilities.py)


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


def limit_bounding_set(keep: int) -> None:
    """Drop every capability whose bit is not in `keep` from the bounding set, and empty the
    ambient set: then no exec, even as root or of a file with capabilities, brings the rest
    back. Needs CAP_SETPCAP, so it comes before any other capability is given up."""
    for cap in range(cap_last_cap() + 1):
        if not keep >> cap & 1:
            try:
                prctl(PR_CAPBSET_DROP, cap)
            except OSError:
                pass  # not in the bounding set to begin with
    try:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass  # a kernel before 4.3 has no ambient set


def set_capabilities(permitted: int, inheritable: int = 0) -> None:
    """This process's permitted and effective sets become `permitted` (less what it no
    longer holds: a set can only shrink), its inheritable set `inheritable`."""
    header = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(syscall_number("capget"), ctypes.byref(header), ctypes.byref(data)))
    for i in (0, 1):
        keep = permitted >> (32 * i) & 0xFFFFFFFF
        data[i].permitted &= keep
        data[i].effective = data[i].permitted
        data[i].inheritable = inheritable >> (32 * i) & 0xFFFFFFFF & data[i].permitted
    _check(_libc.syscall(syscall_number("capset"), ctypes.byref(header), ctypes.byref(data)))


# --- keyrings

KEYCTL_JOIN_SESSION_KEYRING = 1


def join_new_session_keyring() -> None:
    """Replace this process's session keyring with a new anonymous one, which its children
    inherit: the keys of whoever started nsmagic stay out of reach."""
    _check(_libc.syscall(ctypes.c_long(syscall_number("keyctl")),
                         ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), None))


# --- the process's name and command line

def release_free_memory() -> None:
    """Give the heap's free pages back to the kernel (malloc_trim): every PID 1's pages are
    the fork server's until written, and setup writes and frees some (its config, say)."""
    try:
        _libc.malloc_trim(0)
    except AttributeError:   # not glibc
        pass


def set_name(name: str) -> None:
    """The process name `ps` shows in its COMMAND column (comm, 15 bytes)."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _libc.prctl(PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0)


_areas: list[tuple[int, int, int, int]] = []


def set_title(title: str) -> None:
    """`title` as this process's whole command line (/proc/<pid>/cmdline), its environment
    wiped: a clone of a Python process keeps that process's argv and environ
    in its memory (the venv's path, volumes, -e values), readable by anyone through /proc.

    Both areas are overwritten in place, as setproctitle does: prctl(PR_SET_MM) could move
    them, but it needs CAP_SYS_RESOURCE in the host's user namespace. The area's last byte
    stays non-zero: the kernel then shows the area up to its first NUL (the setproctitle
    case), where it would otherwise show every NUL byte after the title too."""
    if not _areas:   # where argv and environ are: fields 48-51 of /proc/self/stat
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()    # fields[0] is field 3
        _areas.append(tuple(int(n) for n in fields[45:49]))
        _libc.clearenv()   # environ's pointers point into the area wiped below
    arg_start, arg_end, env_start, env_end = _areas[0]
    size = arg_end - arg_start
    if size < 2:
        return
    text = title.encode()[:size - 2]
    ctypes.memset(arg_start, 0, size - 1)
    ctypes.memmove(arg_start, text, len(text))
    ctypes.memset(arg_end - 1, ord(" "), 1)
    if env_end > env_start:
        ctypes.memset(env_start, 0, env_end - env_start)


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


# --- paths resolved by the kernel inside a root, and mounts made through fds (5.2+, 5.12+)

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_RDONLY = 0x01
MOUNT_ATTR_NOSUID = 0x02
MOUNT_ATTR_NODEV = 0x04
MOUNT_ATTR_NOEXEC = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """open(2) with the kernel resolving `path` under `dir_fd` as `resolve` says (with
    RESOLVE_IN_ROOT, "/" and ".." stop at dir_fd and absolute symlinks start there)."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return _check(_libc.syscall(syscall_number("openat2"), dir_fd, _b(path), ctypes.byref(how),
                                ctypes.sizeof(how)), path)


def open_tree(path: str, flags: int, dir_fd: int = -100) -> int:
    """A detached copy of the mount at `path` (OPEN_TREE_CLONE; AT_RECURSIVE: with its
    submounts), to set attributes on and move into place."""
    return _check(_libc.syscall(syscall_number("open_tree"), dir_fd, _b(path),
                                flags | os.O_CLOEXEC), path)


def move_mount(tree_fd: int, target_fd: int) -> None:
    """Attach a detached tree on the directory or file `target_fd` names."""
    _check(_libc.syscall(syscall_number("move_mount"), tree_fd, b"", target_fd, b"",
                         MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH))


def mount_setattr(fd: int, attr_set: int, recursive: bool = True) -> None:
    """Set mount attributes (read-only, nosuid, nodev) on the mount `fd` names, and with
    `recursive` on every mount under it, in one call."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    _check(_libc.syscall(syscall_number("mount_setattr"), fd, b"",
                         AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0),
                         ctypes.byref(attr), ctypes.sizeof(attr)))


def fd_path(fd: int) -> str:
    """A path the kernel resolves to exactly what `fd` names (a mount target chosen by fd)."""
    return f"/proc/self/fd/{fd}"
