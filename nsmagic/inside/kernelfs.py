"""PID 1, before its workload: the kernel's file systems in the new root: a fresh /proc for
the new PID namespace, a minimal /dev, read-only /sys and cgroupfs, and Docker's masks."""

from __future__ import annotations

import os

from ..config import CgroupMount
from .linux import MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, mount
from .root import remount_read_only, step, touch

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))
# Docker's masked and read-only /proc and /sys paths.
MASKED = ("proc/acpi", "proc/asound", "proc/kcore", "proc/keys", "proc/latency_stats",
          "proc/timer_list", "proc/timer_stats", "proc/sched_debug", "proc/scsi",
          "sys/firmware", "sys/devices/virtual/powercap")
READ_ONLY = ("proc/bus", "proc/fs", "proc/irq", "proc/sys", "proc/sysrq-trigger")
NOSUID_NODEV_NOEXEC = MS_NOSUID | MS_NODEV | MS_NOEXEC


def mount_all(root: str, cgroup_mounts: tuple[CgroupMount, ...]) -> None:
    _proc(root)
    _dev(root)
    _sys(root)
    _cgroupfs(root, cgroup_mounts)
    _mask(root)


def _proc(root: str) -> None:
    """The new PID namespace's own process table."""
    os.makedirs(f"{root}/proc", exist_ok=True)
    step("mount", "/proc", mount, "proc", f"{root}/proc", "proc", NOSUID_NODEV_NOEXEC)


def _dev(root: str) -> None:
    """Only harmless devices, bound from the host (mknod is not allowed inside), a private
    devpts, /dev/shm and the IPC namespace's own message queues."""
    dev = f"{root}/dev"
    os.makedirs(dev, exist_ok=True)
    step("mount", "/dev", mount, "tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC,
         "mode=755,size=65536k")
    for name in DEVICES:
        touch(f"{dev}/{name}")
        step("bind", f"/dev/{name}", mount, f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    os.mkdir(f"{dev}/pts")
    step("mount", "/dev/pts", mount, "devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC,
         "newinstance,ptmxmode=0666,mode=0620")
    os.mkdir(f"{dev}/shm")
    step("mount", "/dev/shm", mount, "tmpfs", f"{dev}/shm", "tmpfs", NOSUID_NODEV_NOEXEC,
         "mode=1777,size=65536k")
    os.mkdir(f"{dev}/mqueue")
    step("mount", "/dev/mqueue", mount, "mqueue", f"{dev}/mqueue", "mqueue",
         NOSUID_NODEV_NOEXEC)
    for name, target in DEV_LINKS:
        os.symlink(target, f"{dev}/{name}")


def _sys(root: str) -> None:
    """Read-only; a fresh sysfs shows the container's own network devices."""
    os.makedirs(f"{root}/sys", exist_ok=True)
    try:
        mount("sysfs", f"{root}/sys", "sysfs", NOSUID_NODEV_NOEXEC | MS_RDONLY)
    except OSError:   # a user namespace without its own network namespace may not
        step("bind", "/sys", mount, "/sys", f"{root}/sys", None, MS_BIND | MS_REC)
        step("make read-only", "/sys", remount_read_only, f"{root}/sys")


def _cgroupfs(root: str, cgroup_mounts: tuple[CgroupMount, ...]) -> None:
    """The run's own cgroup, read-only, at /sys/fs/cgroup (a cgroup namespace makes it the
    root there). Read-only closes the v1 release_agent escape (CVE-2022-0492)."""
    target = f"{root}/sys/fs/cgroup"
    if not cgroup_mounts or not os.path.isdir(target):
        return
    flags = NOSUID_NODEV_NOEXEC | MS_RDONLY
    if len(cgroup_mounts) == 1 and cgroup_mounts[0].fstype == "cgroup2":
        step("mount", "/sys/fs/cgroup", mount, "cgroup2", target, "cgroup2", flags)
        return
    step("mount", "/sys/fs/cgroup", mount, "tmpfs", target, "tmpfs", NOSUID_NODEV_NOEXEC,
         "mode=755")
    for m in cgroup_mounts:
        where = f"{target}/{m.name}" if m.name else target
        os.makedirs(where, exist_ok=True)
        step("mount", f"/sys/fs/cgroup/{m.name}", mount, m.fstype, where, m.fstype, flags,
             m.options or None)
    step("make read-only", "/sys/fs/cgroup", remount_read_only, target)


def _mask(root: str) -> None:
    """Hide what leaks host information or allows harm, as Docker does. A mask that cannot
    be applied is an error: the run does not start without it."""
    for rel in MASKED:
        path = f"{root}/{rel}"
        if os.path.isdir(path):
            step("mask", "/" + rel, mount, "tmpfs", path, "tmpfs",
                 NOSUID_NODEV_NOEXEC | MS_RDONLY, "size=0")
        elif os.path.exists(path):
            step("mask", "/" + rel, mount, f"{root}/dev/null", path, None, MS_BIND)
    for rel in READ_ONLY:
        path = f"{root}/{rel}"
        if os.path.exists(path):
            step("bind", "/" + rel, mount, path, path, None, MS_BIND | MS_REC)
            step("make read-only", "/" + rel, remount_read_only, path)
