"""PID 1, before its workload: build the container's root inside the run's own mount
namespace from a RootPlan, then pivot into it. Nothing here is visible in the host's mount
table, at any time: / is made private first, and everything goes when the namespace's last
process exits."""

from __future__ import annotations

import errno
import os

from ..config import Bind, Layer, RootPlan
from ..errors import SetupError
from .linux import (
    MNT_DETACH,
    MS_BIND,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    mount,
    pivot_root,
    umount,
)

# A scratch tmpfs covers the host's /tmp in this mount namespace only; sources under /tmp
# (a venv, a volume) were opened beforehand and are reached through /proc/self/fd.
STAGE = "/tmp"

# One table of hints for errno values that mislead (after bubblewrap's mount_strerror).
HINTS = {
    errno.ENOSPC: "limit exceeded (ENOSPC); check /proc/sys/fs/mount-max",
    errno.EPERM: "not permitted; run as root, or allow unprivileged user namespaces "
                 "(sysctl kernel.unprivileged_userns_clone=1)",
    errno.EINVAL: "invalid argument; is overlayfs available (modprobe overlay)?",
    errno.ENODEV: "this file system type is not available in the kernel",
    errno.ENOENT: "no such file or directory",
}

# statvfs flags -> the mount flags a read-only remount must keep (a user namespace refuses
# to clear a flag it did not set).
_KEPT_FLAGS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
               (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
               (os.ST_RELATIME, MS_RELATIME))


def step(what: str, user_path: str, fn, *args):
    """Run one setup step; a failure names what the user asked for, not the internal path."""
    try:
        return fn(*args)
    except OSError as err:
        raise SetupError(f"can't {what} {user_path}: {hint(err)}") from err


def hint(err: OSError) -> str:
    return HINTS.get(err.errno, (err.strerror or "error").lower())


def remount_read_only(path: str) -> None:
    flags = os.statvfs(path).f_flag
    kept = sum(ms for st, ms in _KEPT_FLAGS if flags & st)
    mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


def touch(path: str) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def _makedirs(path: str, mode: int = 0o755) -> None:
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)


def open_sources(plan: RootPlan) -> dict[str, int]:
    """O_PATH fds for every host path the root uses, taken before /tmp is covered."""
    fds = {}
    for item in plan.layers + plan.binds:
        if item.source not in fds:
            fds[item.source] = step("open", item.source, os.open, item.source,
                                    os.O_PATH | os.O_CLOEXEC)
    return fds


def _fd_path(fds: dict[str, int], source: str) -> str:
    return f"/proc/self/fd/{fds[source]}"


def _overlay(fds: dict[str, int], layer: Layer, root: str, index: int, rootless: bool) -> None:
    target = root + layer.target.rstrip("/") if layer.target != "/" else root
    upper, work = f"{STAGE}/upper/{index}", f"{STAGE}/work/{index}"
    os.makedirs(upper)
    os.makedirs(work)
    options = f"lowerdir={_fd_path(fds, layer.source)},upperdir={upper},workdir={work}"
    if rootless:
        options += ",userxattr"   # trusted.* xattrs are root's; a user namespace uses user.*
    if target != root:
        _makedirs(target)
    step("mount the overlay for", layer.target, mount, "overlay", target, "overlay", 0, options)


def _bind(fds: dict[str, int], bind: Bind, root: str) -> None:
    target = root + bind.target
    if bind.is_dir:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            touch(target)
    step("bind-mount", f"{bind.source} at {bind.target}", mount,
         _fd_path(fds, bind.source), target, None, MS_BIND | MS_REC)
    if bind.read_only:
        step("make read-only", bind.target, remount_read_only, target)


def build(plan: RootPlan, fds: dict[str, int], rootless: bool) -> str:
    """The root, assembled under the scratch tmpfs; returns its path."""
    # Nothing below may propagate to the host's mount table.
    step("make private", "/", mount, None, "/", None, MS_REC | MS_PRIVATE)
    step("mount a scratch tmpfs on", STAGE, mount, "tmpfs", STAGE, "tmpfs",
         MS_NOSUID | MS_NODEV, "mode=755")
    root = f"{STAGE}/root"
    os.mkdir(root)
    layers = list(plan.layers)
    if layers and layers[0].target == "/":
        _overlay(fds, layers.pop(0), root, 0, rootless)
    else:
        step("bind", "the new root", mount, root, root, None, MS_BIND)  # pivot_root needs a mount
    for d in plan.dirs:
        _makedirs(f"{root}/{d.path}", d.mode)
    for link in plan.links:
        os.symlink(link.text, f"{root}/{link.path}")
    for index, layer in enumerate(layers, 1):
        _overlay(fds, layer, root, index, rootless)
    for bind in plan.binds:
        _bind(fds, bind, root)
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


def make_read_only(root: str, plan: RootPlan) -> None:
    """--read-only: the root and every image layer mounted on it; volumes keep their mode."""
    for target in ["/"] + [layer.target for layer in plan.layers if layer.target != "/"]:
        step("make read-only", target, remount_read_only, root + target.rstrip("/"))


def enter(root: str) -> None:
    # pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only the
    # new root (the technique of runc's and LXC's pivot_root).
    os.chdir(root)
    step("pivot into", "the new root", pivot_root, ".", ".")
    step("detach", "the old root", umount, ".", MNT_DETACH)
    os.chdir("/")
