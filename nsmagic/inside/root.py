"""PID 1, before its workload: build the container's root inside the run's own mount
namespace from a RootPlan, then pivot into it. Nothing here is visible in the host's mount
table, at any time: / is made private first, and everything goes when the namespace's last
process exits.

An image, a --rootfs tree or a volume is hostile input, and this runs with the host's
privileges in the host's view of paths. So every path inside the new root is resolved by the
kernel inside it (openat2 RESOLVE_IN_ROOT: "/" and ".." stop at the root, absolute symlinks
start there), mounts are made onto fds, and volumes are detached copies (open_tree) made
read-only, nosuid and nodev with all their submounts (mount_setattr) before they are moved
into place."""

from __future__ import annotations

import errno
import os
import stat

from ..config import Bind, Layer, RootPlan
from ..errors import SetupError
from . import keep, linux
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
    fd_path,
    mount,
)

# A scratch tmpfs covers the host's /tmp in this mount namespace only: it holds the root's
# upper layers (its size is the run's storage limit) and the identity files. Sources under
# /tmp (a venv, a volume) were opened beforehand.
STAGE = "/tmp"
IDENTITY_FILES = ("hostname", "hosts", "resolv.conf")

# One table of hints for errno values that mislead (after bubblewrap's mount_strerror).
HINTS = {
    errno.ENOSPC: "limit exceeded (ENOSPC); check /proc/sys/fs/mount-max",
    errno.EPERM: "not permitted; run as root, or allow unprivileged user namespaces "
                 "(sysctl kernel.unprivileged_userns_clone=1)",
    errno.EINVAL: "invalid argument; is overlayfs available (modprobe overlay)?",
    errno.ENODEV: "this file system type is not available in the kernel",
    errno.ENOENT: "no such file or directory",
    errno.ELOOP: "it is a symbolic link, which setup never follows out of the root",
    errno.EXDEV: "it leads out of the root",
}

# statvfs flags -> the mount flags a read-only remount must keep (a user namespace refuses
# to clear a flag it did not set).
_KEPT_FLAGS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
               (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
               (os.ST_RELATIME, MS_RELATIME))
IN_ROOT = linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS


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


class Root:
    """The new root as a directory fd. Paths given to it are paths *inside* the container,
    resolved by the kernel inside it, never through the host's view."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.keep: tuple[int, int] | None = None   # (upper layer, store dir) for the keeper

    def open(self, rel: str, flags: int = os.O_PATH, resolve: int = IN_ROOT) -> int:
        return linux.openat2(self.fd, rel.lstrip("/") or ".", flags, resolve)

    def dir(self, rel: str, mode: int = 0o755) -> int:
        """An O_PATH fd of the directory `rel`, made (with its parents) where missing."""
        rel = rel.strip("/")
        try:
            return self.open(rel, os.O_PATH | os.O_DIRECTORY)
        except FileNotFoundError:
            pass
        parent, _, name = rel.rpartition("/")
        with _RealDir(self.dir(parent) if parent else os.dup(self.fd)) as real:
            try:
                os.mkdir(name, mode, dir_fd=real)
            except FileExistsError:
                pass    # a dangling symlink, say: the open below says what it is
        return self.open(rel, os.O_PATH | os.O_DIRECTORY)

    def file(self, rel: str, create: bool = True) -> int:
        """An O_PATH fd of the file `rel` (a mount point), made empty where missing (with
        `create`); a symlink there is followed inside the root only."""
        try:
            return self.open(rel)
        except FileNotFoundError:
            if not create:
                raise
        parent, _, name = rel.strip("/").rpartition("/")
        with _RealDir(self.dir(parent) if parent else os.dup(self.fd)) as real:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o644, dir_fd=real))
            return linux.openat2(real, name, os.O_PATH, linux.RESOLVE_NO_SYMLINKS)

    def kernel_dir(self, name: str) -> int:
        """/proc, /sys or /dev: a plain directory of the image, or refused (an image must
        not choose where the kernel's file systems go); made where missing."""
        try:
            return linux.openat2(self.fd, name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW,
                                 linux.RESOLVE_BENEATH | linux.RESOLVE_NO_SYMLINKS)
        except FileNotFoundError:
            return self.dir(name, 0o555)
        except OSError as err:
            what = ("a symbolic link" if err.errno == errno.ELOOP else "not a directory"
                    if err.errno == errno.ENOTDIR else hint(err))
            raise SetupError(f"the image's /{name} is {what}; an image's /proc, /sys and "
                             "/dev must be plain directories (or absent).") from err

    def close(self) -> None:
        os.close(self.fd)


class _RealDir:
    """mkdirat and friends need a real directory fd, not an O_PATH one: the O_PATH fd
    reopened (the magic link names exactly the directory it names); both closed after."""

    def __init__(self, path_fd: int):
        self.path_fd = path_fd

    def __enter__(self) -> int:
        try:
            self.fd = os.open(fd_path(self.path_fd), os.O_RDONLY | os.O_DIRECTORY
                              | os.O_CLOEXEC)
        except BaseException:
            os.close(self.path_fd)
            raise
        return self.fd

    def __exit__(self, *_exc) -> None:
        os.close(self.fd)
        os.close(self.path_fd)


class _Fds(dict):
    """fds by source path, closed together."""

    def close(self) -> None:
        for fd in self.values():
            os.close(fd)
        self.clear()


def open_sources(plan: RootPlan) -> _Fds:
    """Before /tmp is covered: O_PATH fds of the layers' sources, and each bind's source as a
    detached copy of its mount tree (open_tree), made read-only, nosuid and nodev all the
    way down before it is ever attached."""
    fds = _Fds()
    for layer in plan.layers:
        if layer.source not in fds:
            fds[layer.source] = step("open", layer.source, os.open, layer.source,
                                     os.O_PATH | os.O_CLOEXEC)
    for bind in plan.binds:
        fds[bind.target] = step("open the volume", bind.source, _detached_copy, bind)
    if plan.keep_dir:   # where the keeper copies the writable layer (see keep.py)
        fds[plan.keep_dir] = step("open", plan.keep_dir, os.open, plan.keep_dir,
                                  os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    return fds


class _Tree(int):
    """A detached mount tree's fd; `remount` holds the flags still to be set on each of its
    mounts once attached, where the kernel has no mount_setattr (before 5.12)."""
    remount = 0


def _detached_copy(bind: Bind) -> _Tree:
    tree = _Tree(linux.open_tree(bind.source, linux.OPEN_TREE_CLONE | linux.AT_RECURSIVE))
    attrs = ((0 if bind.suid else linux.MOUNT_ATTR_NOSUID)
             | (0 if bind.dev else linux.MOUNT_ATTR_NODEV)
             | (linux.MOUNT_ATTR_RDONLY if bind.read_only else 0))
    try:
        if attrs:
            linux.mount_setattr(tree, attrs, recursive=True)
    except OSError as err:
        if err.errno != errno.ENOSYS:
            os.close(tree)
            raise
        tree.remount = ((0 if bind.suid else MS_NOSUID) | (0 if bind.dev else MS_NODEV)
                        | (MS_RDONLY if bind.read_only else 0))
    except BaseException:
        os.close(tree)
        raise
    return tree


def mounts_under(path: str) -> list[str]:
    """Mount points at or below `path` in this mount namespace."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")   # \040 is a space
            if point == path or point.startswith(path.rstrip("/") + "/"):
                points.append(point)
    return points


def remount_tree(path: str, flags: int) -> None:
    """The fallback of mount_setattr(AT_RECURSIVE): remount the mount at `path` and every
    mount under it with `flags` added, one by one, deepest last (a read-only volume is then
    read-only all the way down on an older kernel too)."""
    for point in sorted(mounts_under(path), key=len):
        kept = sum(ms for st, ms in _KEPT_FLAGS if os.statvfs(point).f_flag & st)
        if os.statvfs(point).f_flag & os.ST_RDONLY:
            kept |= MS_RDONLY
        mount(None, point, None, MS_REMOUNT | MS_BIND | flags | kept)


def build(plan: RootPlan, fds: _Fds, rootless: bool) -> Root:
    """The root, assembled under the scratch tmpfs."""
    # Nothing below may propagate to the host's mount table.
    step("make private", "/", mount, None, "/", None, MS_REC | MS_PRIVATE)
    step("mount a scratch tmpfs on", STAGE, mount, "tmpfs", STAGE, "tmpfs",
         MS_NOSUID | MS_NODEV, f"mode=755,size={plan.storage}")
    path = f"{STAGE}/root"
    os.mkdir(path)
    layers = list(plan.layers)
    stack = []   # an image's layers: all at /, top first, stacked into one overlay
    while layers and layers[0].target == "/":
        stack.append(layers.pop(0))
    if stack:
        kept = fds.get(plan.keep_dir) if plan.keep_dir else None
        _overlay(fds, stack, path, None, 0, rootless, plan.hidden, kept)
    else:
        step("bind", "the new root", mount, path, path, None, MS_BIND)  # pivot_root needs a mount
    root = Root(path)
    if plan.keep_dir and stack:   # the upper layer to copy, and where to
        root.keep = (os.open(f"{STAGE}/upper/0", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC),
                     fds.pop(plan.keep_dir))
    for d in plan.dirs:
        fd = root.dir(d.path, d.mode)
        os.chmod(fd_path(fd), d.mode)   # whatever the umask made of it
        os.close(fd)
    for link in plan.links:
        os.symlink(link.text, link.path, dir_fd=root.fd)
    for index, layer in enumerate(layers, 1):
        _overlay(fds, [layer], path, root, index, rootless, plan.hidden)
    for bind in plan.binds:
        _bind(fds.pop(bind.target), bind, root)
    return root


def _overlay(fds: _Fds, stack: list[Layer], path: str, root: Root | None, index: int,
             rootless: bool, hidden: tuple[str, ...], kept: int | None = None) -> None:
    """One overlay at the stack's target: its layers read-only (the first on top), an upper
    layer on the scratch tmpfs: fresh, or for a container that stays (`kept`: its directory
    in the store), the layer its last run kept, as Docker's container keeps its files."""
    layer = stack[0]
    upper, work = f"{STAGE}/upper/{index}", f"{STAGE}/work/{index}"
    os.makedirs(upper)
    os.makedirs(work)
    if kept is not None:
        _put_back(kept, upper, rootless)
    _whiteouts(upper, fds[layer.source], layer.target, hidden)
    lower = ":".join(fd_path(fds[each.source]) for each in stack)
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if kept is not None:   # the upper is read back as a layer: a renamed directory must be
        options += ",redirect_dir=nofollow"   # copied up whole, not recorded as a redirect
    if rootless:
        options += ",userxattr"   # trusted.* xattrs are root's; a user namespace uses user.*
    # nodev: a device node in an image opens nothing; nosuid: set-id bits mean nothing.
    flags = MS_NODEV | MS_NOSUID
    if root is None:
        step("mount the overlay for", layer.target, mount, "overlay", path, "overlay", flags,
             options)
        return
    target = root.dir(layer.target)
    try:
        step("mount the overlay for", layer.target, mount, "overlay", fd_path(target),
             "overlay", flags, options)
    finally:
        os.close(target)


def _put_back(kept: int, upper: str, rootless: bool) -> None:
    """The layer a container's last run kept, copied into the new upper by fds (the store's
    copy was written by the container: never followed through a link)."""
    try:
        layer = os.open("upper", keep.DIR, dir_fd=kept)
    except FileNotFoundError:
        return                                       # its first run
    into = os.open(upper, keep.DIR)
    try:
        step("put back the container's layer in", upper, keep.copy_tree, layer, into,
             "user.overlay.opaque" if rootless else "trusted.overlay.opaque")
    finally:
        os.close(into)
        os.close(layer)


def _whiteouts(upper: str, lower_fd: int, target: str, hidden: tuple[str, ...]) -> None:
    """Hide the host's paths in `hidden` that fall in this layer: a whiteout (a 0:0 character
    device) in the upper layer makes overlay show them as absent. Parents are made in the
    upper layer with the lower layer's mode and owner."""
    prefix = target.rstrip("/") + "/"
    for path in hidden:
        if not path.startswith(prefix):
            continue
        rel = path[len(prefix):]
        parent = os.path.dirname(rel)
        for depth, _ in enumerate(parent.split("/") if parent else []):
            part = "/".join(parent.split("/")[:depth + 1])
            there = os.stat(f"{fd_path(lower_fd)}/{part}", follow_symlinks=False)
            if not os.path.lexists(f"{upper}/{part}"):
                os.mkdir(f"{upper}/{part}", stat.S_IMODE(there.st_mode))
                os.chown(f"{upper}/{part}", there.st_uid, there.st_gid)
            elif not stat.S_ISDIR(os.lstat(f"{upper}/{part}").st_mode):   # a layer put back
                raise SetupError(f"cannot hide {path}: /{part} in the container's kept layer "
                                 "is not a directory.")
        if not os.path.lexists(f"{upper}/{rel}"):   # (a layer put back may have it)
            step("hide", path, os.mknod, f"{upper}/{rel}", stat.S_IFCHR | 0o600,
                 os.makedev(0, 0))


def _bind(tree: _Tree, bind: Bind, root: Root) -> None:
    """A volume's detached copy moved onto its target, made inside the root."""
    try:
        target = step("make the mount point for", bind.target,
                      root.dir if bind.is_dir else root.file, bind.target)
        try:
            step("mount", f"{bind.source} at {bind.target}", linux.move_mount, tree, target)
        finally:
            os.close(target)
        if tree.remount:   # the path the kernel resolved inside the root, not a host view
            attached = root.open(bind.target)
            try:
                where = os.readlink(fd_path(attached))
            finally:
                os.close(attached)
            step("make read-only, nosuid and nodev", bind.target, remount_tree, where,
                 tree.remount)
    finally:
        os.close(tree)


def write_identity(root: Root, plan: RootPlan, hostname: str) -> None:
    """/etc/hostname, /etc/hosts and /etc/resolv.conf of the container's own: files on the
    scratch tmpfs bound onto the root's (as Docker does), so nothing is written into an
    image or a volume, and a symlink there is followed inside the root only."""
    contents = {
        "hostname": hostname + "\n",
        "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                 f"127.0.1.1\t{hostname}\n",
        "resolv.conf": plan.resolv_conf,
    }
    os.mkdir(f"{STAGE}/identity")
    try:
        etc = root.dir("etc")
    except (OSError, SetupError):
        return   # a read-only image without /etc, or /etc is not a directory: none of them
    os.close(etc)
    for name in IDENTITY_FILES:
        if any(bind.target == f"/etc/{name}" for bind in plan.binds):
            continue   # a volume there (or a network's shared hosts file) is the file
        staged = f"{STAGE}/identity/{name}"
        with open(staged, "w") as f:
            f.write(contents[name])
        try:   # never made inside a volume: nothing is written into a volume's source
            target = root.file(f"etc/{name}", create=not _in_volume(f"/etc/{name}", plan))
        except OSError:
            continue   # a directory there, a dangling link leading nowhere: the image keeps it
        try:
            if stat.S_ISREG(os.stat(fd_path(target)).st_mode):
                step("mount", f"/etc/{name}", mount, staged, fd_path(target), None, MS_BIND)
        finally:
            os.close(target)


def _in_volume(path: str, plan: RootPlan) -> bool:
    return any(path.startswith(bind.target.rstrip("/") + "/") for bind in plan.binds)


def make_read_only(root: Root, plan: RootPlan) -> None:
    """--read-only: the root and every image layer mounted on it; volumes keep their mode."""
    step("make read-only", "/", remount_read_only, root.path)
    for layer in plan.layers:
        if layer.target != "/":
            target = root.open(layer.target, os.O_PATH | os.O_DIRECTORY)
            try:
                step("make read-only", layer.target, remount_read_only, fd_path(target))
            finally:
                os.close(target)


def enter(root: Root) -> None:
    # pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only the
    # new root (the technique of runc's and LXC's pivot_root).
    os.chdir(root.path)
    root.close()
    step("pivot into", "the new root", linux.pivot_root, ".", ".")
    step("detach", "the old root", linux.umount, ".", MNT_DETACH)
    os.chdir("/")
