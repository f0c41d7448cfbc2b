"""PID 1, before its workload: the kernel's file systems in the new root: a fresh /proc for
the new PID namespace, a minimal /dev, read-only /sys and cgroupfs, and Docker's masks. Every
target is resolved inside the root (see root.Root); an image's /proc, /sys or /dev that is
not a plain directory is refused."""

from __future__ import annotations

import os
import stat

from ..config import CgroupMount
from ..errors import SetupError
from . import linux
from .linux import MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, fd_path, mount
from .root import Root, remount_read_only, step

# Docker's default devices: (name, major, minor).
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0))
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))
# Docker's masked and read-only /proc and /sys paths.
MASKED = ("proc/acpi", "proc/asound", "proc/kcore", "proc/keys", "proc/latency_stats",
          "proc/timer_list", "proc/timer_stats", "proc/sched_debug", "proc/scsi",
          "sys/firmware", "sys/devices/virtual/powercap")
READ_ONLY = ("proc/bus", "proc/fs", "proc/irq", "proc/sys", "proc/sysrq-trigger")
NOSUID_NODEV_NOEXEC = MS_NOSUID | MS_NODEV | MS_NOEXEC
# Paths under the kernel's own file systems: no symlink is followed at all.
EXACT = linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_SYMLINKS


MASKED_PROC = ("can't mount /proc: not permitted: the /proc this runs under has masked "
               "paths (a container's default, as Kubernetes' procMount: Default gives), and the "
               "kernel mounts no fresh /proc beside one that hides something; give the pod "
               "procMount: Unmasked (with hostUsers: false), or Docker/Podman --security-opt "
               "systempaths=unconfined (docs/kubernetes.md)")


def mount_all(root: Root, rootless: bool, cgroup_mounts: tuple[CgroupMount, ...]) -> None:
    _proc(root)
    _dev(root, rootless)
    _sys(root)
    _cgroupfs(root, cgroup_mounts)
    _mask(root)


def _proc(root: Root) -> None:
    try:
        _on(root.kernel_dir("proc"), "/proc", "proc", "proc", NOSUID_NODEV_NOEXEC)
    except SetupError as err:
        if isinstance(err.__cause__, PermissionError) and masked_proc():
            raise SetupError(MASKED_PROC) from err
        raise


def masked_proc(mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Something is mounted over a path in /proc (binfmt_misc aside, an empty directory the
    kernel does not count): the masks a container runtime puts there."""
    with open(mountinfo) as f:
        points = [line.split()[4] for line in f]
    return any(p.startswith("/proc/") and p != "/proc/sys/fs/binfmt_misc" for p in points)


def _on(target_fd: int, user_path: str, source: str, fstype: str | None, flags: int,
        data: str | None = None) -> None:
    """Mount onto the directory or file an fd names, and close the fd."""
    try:
        step("mount", user_path, mount, source, fd_path(target_fd), fstype, flags, data)
    finally:
        os.close(target_fd)


def _dev(root: Root, rootless: bool) -> None:
    """A tmpfs with only Docker's harmless devices, a private devpts, /dev/shm and the IPC
    namespace's own message queues. As root the nodes are made here (mknod): a chmod inside
    changes these, never the host's. In a user namespace mknod is refused, so the host's
    nodes are bound, which the container's root cannot chmod (they are the host root's)."""
    _on(root.kernel_dir("dev"), "/dev", "tmpfs", "tmpfs", MS_NOSUID | MS_NOEXEC,
        "mode=755,size=65536k")
    dev = root.open("dev", os.O_RDONLY | os.O_DIRECTORY, EXACT)
    try:
        for name, major, minor in DEVICES:
            if rootless:
                os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666,
                                 dir_fd=dev))
                step("bind", f"/dev/{name}", mount, f"/dev/{name}", f"{fd_path(dev)}/{name}",
                     None, MS_BIND)
            else:
                step("make", f"/dev/{name}", _mknod, name, os.makedev(major, minor), dev)
                os.chmod(name, 0o666, dir_fd=dev)   # whatever the umask made of it
        for name in ("pts", "shm", "mqueue"):
            os.mkdir(name, 0o755, dir_fd=dev)
        for name, target in DEV_LINKS:
            os.symlink(target, name, dir_fd=dev)
    finally:
        os.close(dev)
    _on(root.open("dev/pts", resolve=EXACT), "/dev/pts", "devpts", "devpts",
        MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    _on(root.open("dev/shm", resolve=EXACT), "/dev/shm", "tmpfs", "tmpfs", NOSUID_NODEV_NOEXEC,
        "mode=1777,size=65536k")
    _on(root.open("dev/mqueue", resolve=EXACT), "/dev/mqueue", "mqueue", "mqueue",
        NOSUID_NODEV_NOEXEC)


def _mknod(name: str, device: int, dir_fd: int) -> None:
    os.mknod(name, stat.S_IFCHR | 0o666, device, dir_fd=dir_fd)


def _sys(root: Root) -> None:
    """Read-only; a fresh sysfs shows the container's own network devices."""
    target = root.kernel_dir("sys")
    try:
        mount("sysfs", fd_path(target), "sysfs", NOSUID_NODEV_NOEXEC | MS_RDONLY)
    except OSError:   # a user namespace without its own network namespace may not
        step("bind", "/sys", mount, "/sys", fd_path(target), None, MS_BIND | MS_REC)
        # `target` still names the directory under the new mount: remounting through it
        # fails (EINVAL, not a mount point); the path resolved again names the mount
        bound = root.kernel_dir("sys")
        try:
            step("make read-only", "/sys", remount_read_only, fd_path(bound))
        finally:
            os.close(bound)
    finally:
        os.close(target)


def _cgroupfs(root: Root, cgroup_mounts: tuple[CgroupMount, ...]) -> None:
    """The run's own cgroup, read-only, at /sys/fs/cgroup (a cgroup namespace makes it the
    root there). Read-only closes the v1 release_agent escape (CVE-2022-0492)."""
    if not cgroup_mounts:
        return
    try:
        where = root.open("sys/fs/cgroup", os.O_PATH | os.O_DIRECTORY, EXACT)
    except FileNotFoundError:
        return    # a sysfs without it (an old kernel): nothing to show there
    flags = NOSUID_NODEV_NOEXEC | MS_RDONLY
    if len(cgroup_mounts) == 1 and cgroup_mounts[0].fstype == "cgroup2":
        return _on(where, "/sys/fs/cgroup", "cgroup2", "cgroup2", flags)
    _on(where, "/sys/fs/cgroup", "tmpfs", "tmpfs", NOSUID_NODEV_NOEXEC, "mode=755")
    for m in cgroup_mounts:
        rel = f"sys/fs/cgroup/{m.name}" if m.name else "sys/fs/cgroup"
        if m.name:
            parent = root.open("sys/fs/cgroup", os.O_RDONLY | os.O_DIRECTORY, EXACT)
            try:
                os.mkdir(m.name, 0o755, dir_fd=parent)
            finally:
                os.close(parent)
        _on(root.open(rel, os.O_PATH | os.O_DIRECTORY, EXACT), f"/{rel}", m.fstype,
            m.fstype, flags, m.options or None)
    where = root.open("sys/fs/cgroup", os.O_PATH | os.O_DIRECTORY, EXACT)
    try:
        step("make read-only", "/sys/fs/cgroup", remount_read_only, fd_path(where))
    finally:
        os.close(where)


def _mask(root: Root) -> None:
    """Hide what leaks host information or allows harm, as Docker does. A mask that cannot
    be applied is an error: the run does not start without it."""
    for rel in MASKED:
        try:
            target = root.open(rel, resolve=EXACT)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(os.stat(fd_path(target)).st_mode):
            _on(target, "/" + rel, "tmpfs", "tmpfs", NOSUID_NODEV_NOEXEC | MS_RDONLY, "size=0")
        else:
            _on(target, "/" + rel, f"{root.path}/dev/null", None, MS_BIND)
    for rel in READ_ONLY:
        try:
            target = root.open(rel, resolve=EXACT)
        except FileNotFoundError:
            continue
        try:
            step("bind", "/" + rel, mount, fd_path(target), fd_path(target), None,
                 MS_BIND | MS_REC)
        finally:
            os.close(target)
        target = root.open(rel, resolve=EXACT)   # the bind just made, not what it covers
        try:
            step("make read-only", "/" + rel, remount_read_only, fd_path(target))
        finally:
            os.close(target)
