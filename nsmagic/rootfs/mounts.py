"""Child side: build the container's root inside its own mount namespace, then pivot into it.
Nothing here is visible in the host's mount table, at any time: / is made private first, and
everything goes when the namespace's last process exits."""

from __future__ import annotations

import errno
import os

from ..errors import SetupError
from ..runtime.linux import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    mount,
    pivot_root,
    umount,
)

# A scratch tmpfs covers the host's /tmp in this mount namespace only; sources under /tmp
# (a venv, a volume) were opened beforehand and are reached through /proc/self/fd.
STAGE = "/tmp"
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# Docker's masked and read-only /proc and /sys paths.
MASKED = ("proc/acpi", "proc/asound", "proc/kcore", "proc/keys", "proc/latency_stats",
          "proc/timer_list", "proc/timer_stats", "proc/sched_debug", "proc/scsi",
          "sys/firmware", "sys/devices/virtual/powercap")
READ_ONLY = ("proc/bus", "proc/fs", "proc/irq", "proc/sys", "proc/sysrq-trigger")

# One table of hints for errno values that mislead (after bubblewrap's mount_strerror).
HINTS = {
    errno.ENOSPC: "limit exceeded (ENOSPC); check /proc/sys/fs/mount-max",
    errno.EPERM: "not permitted; run as root, or allow unprivileged user namespaces "
                 "(sysctl kernel.unprivileged_userns_clone=1)",
    errno.EINVAL: "invalid argument; is overlayfs available (modprobe overlay)?",
    errno.ENODEV: "this file system type is not available in the kernel",
    errno.ENOENT: "no such file or directory",
}

_ST_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: 1024, 2048: 2048,
             4096: 1 << 21}


def step(what: str, user_path: str, fn, *args):
    """Run one setup step; a failure names what the user asked for, not the internal path."""
    try:
        return fn(*args)
    except OSError as err:
        hint = HINTS.get(err.errno, (err.strerror or "error").lower())
        raise SetupError(f"can't {what} {user_path}: {hint}") from err


def _locked_flags(path: str) -> int:
    """A read-only remount must keep nosuid/nodev/noexec, or a user namespace refuses it."""
    st = os.statvfs(path).f_flag
    return sum(ms for st_bit, ms in _ST_TO_MS.items() if st & st_bit)


def remount_read_only(path: str) -> None:
    mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _locked_flags(path))


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def _makedirs(path: str, mode: int = 0o755) -> None:
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)


def open_sources(plan: dict) -> dict[str, int]:
    """O_PATH fds for every host path the root uses, taken before /tmp is covered."""
    fds = {}
    for item in plan["layers"] + plan["binds"]:
        src = item["source"]
        if src not in fds:
            fds[src] = step("open", src, os.open, src, os.O_PATH | os.O_CLOEXEC)
    return fds


def _fd_path(fds: dict[str, int], source: str) -> str:
    return f"/proc/self/fd/{fds[source]}"


def _overlay(fds, layer, root, index, rootless):
    target = root + layer["target"].rstrip("/") if layer["target"] != "/" else root
    upper, work = f"{STAGE}/upper/{index}", f"{STAGE}/work/{index}"
    os.makedirs(upper)
    os.makedirs(work)
    options = f"lowerdir={_fd_path(fds, layer['source'])},upperdir={upper},workdir={work}"
    if rootless:
        options += ",userxattr"   # trusted.* xattrs are root's; a user namespace uses user.*
    if target != root:
        _makedirs(target)
    step("mount the overlay for", layer["target"], mount, "overlay", target, "overlay", 0,
         options)


def build_root(plan: dict, fds: dict[str, int], rootless: bool) -> str:
    # Nothing below may propagate to the host's mount table.
    step("make private", "/", mount, None, "/", None, MS_REC | MS_PRIVATE)
    step("mount a scratch tmpfs on", STAGE, mount, "tmpfs", STAGE, "tmpfs",
         MS_NOSUID | MS_NODEV, "mode=755")
    root = f"{STAGE}/root"
    os.mkdir(root)
    layers = list(plan["layers"])
    if layers and layers[0]["target"] == "/":
        _overlay(fds, layers.pop(0), root, 0, rootless)
    else:
        step("bind", "the new root", mount, root, root, None, MS_BIND)  # pivot_root needs a mount
    for path, mode in plan["dirs"].items():
        _makedirs(f"{root}/{path}", mode)
    for link in plan["links"]:
        os.symlink(link["text"], f"{root}/{link['path']}")
    for index, layer in enumerate(layers, 1):
        _overlay(fds, layer, root, index, rootless)
    for bind in plan["binds"]:
        target = root + bind["target"]
        if bind["is_dir"]:   # decided in the parent: the source may be under /tmp, now covered
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.exists(target):
                _touch(target)
        step("bind-mount", f"{bind['source']} at {bind['target']}", mount,
             _fd_path(fds, bind["source"]), target, None, MS_BIND | MS_REC)
        if bind["read_only"]:
            step("make read-only", bind["target"], remount_read_only, target)
    return root


def write_identity(root: str, hostname: str) -> None:
    """/etc/hostname and /etc/hosts of the container's own, into its upper layer."""
    try:
        if os.path.isdir(f"{root}/etc"):
            with open(f"{root}/etc/hostname", "w") as f:
                f.write(hostname + "\n")
            with open(f"{root}/etc/hosts", "w") as f:
                f.write(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"
                        f"127.0.1.1\t{hostname}\n")
    except OSError:
        pass  # a read-only or foreign-owned /etc (user namespace) keeps the image's own


def mount_kernel_fs(root: str, rootless: bool, cgroup_mounts: list[dict]) -> None:
    """Fresh /proc, a minimal /dev, read-only /sys and cgroupfs, masked kernel paths."""
    # --- /proc: the new PID namespace's own process table
    os.makedirs(f"{root}/proc", exist_ok=True)
    step("mount", "/proc", mount, "proc", f"{root}/proc", "proc",
         MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # --- /dev: only harmless devices, bound from the host (mknod is not allowed inside)
    dev = f"{root}/dev"
    os.makedirs(dev, exist_ok=True)
    step("mount", "/dev", mount, "tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC,
         "mode=755,size=65536k")
    for name in DEVICES:
        _touch(f"{dev}/{name}")
        step("bind", f"/dev/{name}", mount, f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    os.mkdir(f"{dev}/pts")
    step("mount", "/dev/pts", mount, "devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC,
         "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.mkdir(f"{dev}/shm")
    step("mount", "/dev/shm", mount, "tmpfs", f"{dev}/shm", "tmpfs",
         MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
    os.mkdir(f"{dev}/mqueue")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    # --- /sys: read-only; a fresh sysfs shows the container's own network devices
    os.makedirs(f"{root}/sys", exist_ok=True)
    try:
        mount("sysfs", f"{root}/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    except OSError:
        step("bind", "/sys", mount, "/sys", f"{root}/sys", None, MS_BIND | MS_REC)
        step("make read-only", "/sys", remount_read_only, f"{root}/sys")
    _mount_cgroupfs(root, cgroup_mounts)
    # --- mask what leaks host information or allows harm, as Docker does
    for rel in MASKED:
        path = f"{root}/{rel}"
        if os.path.isdir(path):
            _quiet(mount, "tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   "size=0")
        elif os.path.exists(path):
            _quiet(mount, f"{dev}/null", path, None, MS_BIND)
    for rel in READ_ONLY:
        path = f"{root}/{rel}"
        if os.path.exists(path):
            step("bind", "/" + rel, mount, path, path, None, MS_BIND | MS_REC)
            step("make read-only", "/" + rel, remount_read_only, path)


def _mount_cgroupfs(root: str, cgroup_mounts: list[dict]) -> None:
    """The run's own cgroup, read-only, at /sys/fs/cgroup (a cgroup namespace makes it the
    root there). Read-only closes the v1 release_agent escape (CVE-2022-0492)."""
    target = f"{root}/sys/fs/cgroup"
    if not cgroup_mounts or not os.path.isdir(target):
        return
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY
    try:
        if cgroup_mounts[0]["type"] == "cgroup2" and len(cgroup_mounts) == 1:
            mount("cgroup2", target, "cgroup2", flags)
            return
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755")
        for m in cgroup_mounts:
            os.mkdir(f"{target}/{m['name']}")
            _quiet(mount, m["type"], f"{target}/{m['name']}", m["type"], flags, m["options"])
        remount_read_only(target)
    except OSError:
        pass  # counters stay readable from the host side; the run itself is unaffected


def _quiet(fn, *args) -> None:
    try:
        fn(*args)
    except OSError:
        pass


def make_root_read_only(root: str, plan: dict) -> None:
    """--read-only: the root and every image layer mounted on it; volumes keep their mode."""
    for target in ["/"] + [layer["target"] for layer in plan["layers"] if layer["target"] != "/"]:
        step("make read-only", target, remount_read_only, root + target.rstrip("/"))


def enter_root(root: str) -> None:
    # pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only the
    # new root (the technique of runc's and LXC's pivot_root).
    os.chdir(root)
    step("pivot into", "the new root", pivot_root, ".", ".")
    step("detach", "the old root", umount, ".", MNT_DETACH)
    os.chdir("/")
