"""A container's writable layer (an overlay upper directory on disk) read back: as an OCI
layer tar (the next layer of a build, `commit`), and as Docker's `diff` (A added, C changed,
D deleted).

overlayfs records a deletion as a whiteout (a 0:0 character device) and a directory that
hides everything below as opaque (`trusted.overlay.opaque`, or `user.overlay.opaque` in a
user namespace); OCI writes them as `.wh.NAME` and `.wh..wh..opq` entries. The upper is
written by the container, so it is read without following any link, after the container
has exited."""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import stat
import sys
import tarfile
from dataclasses import dataclass

from ..errors import NsmagicError

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
KEPT_XATTRS = ("security.capability",)


@dataclass(frozen=True)
class Change:
    kind: str      # "A", "C" or "D", as `docker diff`
    path: str      # absolute, inside the container


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


# What nsmagic itself makes in a root as mount points (empty, when the image lacks them):
# the identity files bound over, the kernel's file systems. Not the workload's changes.
MOUNT_FILES = ("etc/hostname", "etc/hosts", "etc/resolv.conf")
MOUNT_DIRS = ("proc", "sys", "dev")


def _ordered(upper: str):
    """Depth-first, each directory followed by its own entries (as tar wants); nsmagic's
    own mount points left out, and so is a directory that holds nothing else."""
    def visit(rel_dir: str):
        for name in sorted(os.listdir(os.path.join(upper, rel_dir))):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = os.path.join(upper, rel)
            st = os.lstat(path)
            if _mount_point(rel, path, st):
                continue
            if stat.S_ISDIR(st.st_mode):
                below = list(visit(rel))
                if below or not _only_mount_points(path, rel):
                    yield rel, path, st
                    yield from below
            else:
                yield rel, path, st
    return visit("")


def _mount_point(rel: str, path: str, st: os.stat_result) -> bool:
    if rel in MOUNT_FILES:
        return stat.S_ISREG(st.st_mode) and st.st_size == 0
    return rel in MOUNT_DIRS and stat.S_ISDIR(st.st_mode) and not os.listdir(path)


def _only_mount_points(path: str, rel: str) -> bool:
    names = os.listdir(path)
    return bool(names) and all(
        _mount_point(f"{rel}/{n}", os.path.join(path, n), os.lstat(os.path.join(path, n)))
        for n in names)


def is_empty(upper: str) -> bool:
    """Nothing written but nsmagic's mount points."""
    return next(iter(_ordered(upper)), None) is None



def _read_as_a_layer(read):
    """A layer a container wrote may be deeper or longer-named than paths go: one sentence,
    not a traceback (string paths reach PATH_MAX, about 2000 levels, before the depth the
    recursion is allowed here)."""
    @functools.wraps(read)
    def reading(upper: str, *args, **kw):
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 5000))
        try:
            return read(upper, *args, **kw)
        except OSError as err:
            if err.errno not in (errno.ENAMETOOLONG, errno.ELOOP):
                raise
            raise NsmagicError(f"the writable layer holds a path longer than the kernel takes "
                               f"({str(err.filename)[:60]}…): it cannot be read as a layer."
                               ) from None
        finally:
            sys.setrecursionlimit(limit)
    return reading

@_read_as_a_layer
def write_tar(upper: str, out) -> None:
    """The upper directory as an OCI layer tar written to the binary file `out`."""
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel, path, st in _ordered(upper):
            if _is_whiteout(st):
                parent, _, name = rel.rpartition("/")
                tar.addfile(_info(f"{parent}/.wh.{name}" if parent else f".wh.{name}", st,
                                  tarfile.REGTYPE))
                continue
            if stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISSOCK(
                    st.st_mode):
                continue   # the container had no CAP_MKNOD; a socket is no file to ship
            _add(tar, rel, path, st, links)
            if stat.S_ISDIR(st.st_mode) and _is_opaque(path):
                tar.addfile(_info(f"{rel}/.wh..wh..opq", st, tarfile.REGTYPE))


def _info(name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    info.mode = stat.S_IMODE(st.st_mode)
    return info


def _add(tar, rel: str, path: str, st: os.stat_result, links: dict) -> None:
    if stat.S_ISDIR(st.st_mode):
        info = _info(rel, st, tarfile.DIRTYPE)
    elif stat.S_ISLNK(st.st_mode):
        info = _info(rel, st, tarfile.SYMTYPE)
        info.linkname = os.readlink(path)
    elif stat.S_ISFIFO(st.st_mode):
        info = _info(rel, st, tarfile.FIFOTYPE)
    else:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            info = _info(rel, st, tarfile.LNKTYPE)
            info.linkname = links[key]
            tar.addfile(info)
            return
        links[key] = rel
        info = _info(rel, st, tarfile.REGTYPE)
        info.size = st.st_size
    _xattrs(info, path, st)
    if info.type != tarfile.REGTYPE:
        tar.addfile(info)
        return
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        tar.addfile(info, f)


def _xattrs(info: tarfile.TarInfo, path: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        return
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if (name.startswith("user.") and ".overlay." not in name) or name in KEPT_XATTRS:
            value = os.getxattr(path, name, follow_symlinks=False)
            info.pax_headers[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")


@_read_as_a_layer
def changes(upper: str, lower_exists) -> list[Change]:
    """Docker's `diff`: every path the writable layer holds, A (not in the image), C (in
    it, changed) or D (deleted: a whiteout); `lower_exists(path)` says whether the image
    has the path."""
    found = []
    for rel, _path, st in _ordered(upper):
        where = "/" + rel
        if _is_whiteout(st):
            found.append(Change("D", where))
        else:
            found.append(Change("C" if lower_exists(where) else "A", where))
    return found


def digest_of(path: str) -> str:
    h = hashlib.sha256()
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
