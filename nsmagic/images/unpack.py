"""The hardened layer unpacker: one layer's tar stream into a fresh directory of the store,
never anything outside it. Image layers are hostile input.

Python's tarfile only *parses* here; nothing is extracted with its extract()/extractall().
Its `data_filter` is close but not this job's: it strips set-id bits and group/other write
bits that images legitimately hold (a layer's /tmp is 1777), refuses the overlay whiteouts
this code has to make, and extracts by host path. Instead every member is written by fd:

- the member's parent is opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
  RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV) from the layer's directory, so neither `..`, an
  absolute path, nor a symlink (made by an earlier member of the layer) can lead out of it;
- files are created O_EXCL | O_NOFOLLOW; a hard link's target is found the same way and
  must be a member of this layer; a symlink is stored as text, never followed;
- absolute names are made relative (as GNU tar does), `..` in a name refuses the layer;
- device nodes are skipped (a container opens no device of an image), FIFOs are kept;
- set-id bits are kept (images need them; the store is mode 0700, so no host user can
  reach such a file, and a container's layers are mounted nosuid);
- xattrs: `user.*` (not `user.overlay.*`) and, as root, `security.capability`; others (an
  image could set `trusted.overlay.*` and steer overlayfs) are dropped;
- a budget of bytes and entries stops tar bombs and huge sparse files before they are
  written;
- `.wh.NAME` becomes an overlay whiteout (a 0:0 character device, which any user may make
  since Linux 5.8) and `.wh..wh..opq` the opaque xattr on its directory (`trusted.` for
  root's store, `user.` for a user's, which overlay reads with `userxattr`).

What was skipped or changed comes back as a list of one-sentence notices."""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections import Counter
from dataclasses import dataclass, field

from ..errors import NsmagicError
from ..inside import linux

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
BENEATH = (linux.RESOLVE_BENEATH | linux.RESOLVE_NO_SYMLINKS | linux.RESOLVE_NO_MAGICLINKS
           | linux.RESOLVE_NO_XDEV)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
CHUNK = 1 << 20
# Budgets for one layer; a store may give others (see Limits).
MAX_BYTES = 64 << 30
MAX_ENTRIES = 2_000_000


MAX_HEADER = 1 << 20      # a long name's or a pax record's bytes: read into memory whole


class BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a GNU long name or a pax header into memory whole, before any budget
    sees it: a 1 MB archive could make the host allocate gigabytes. Those records are
    refused above MAX_HEADER (a name is at most 4096 bytes; pax records hold a few)."""

    def _proc_gnulong(self, tarfile):
        self._bounded()
        return super()._proc_gnulong(tarfile)

    def _proc_pax(self, tarfile):
        self._bounded()
        return super()._proc_pax(tarfile)

    def _bounded(self) -> None:
        if self.size > MAX_HEADER:
            raise UnpackError(f"a tar header record of {self.size} bytes (a long name or pax "
                              f"header; at most {MAX_HEADER} taken): refused, the archive is "
                              "broken or hostile.")


def open_tar(**kw) -> tarfile.TarFile:
    """tarfile.open for an archive an image brought: header records bounded."""
    return tarfile.open(tarinfo=BoundedTarInfo, **kw)


class UnpackError(NsmagicError):
    """A layer refused; str() says which member and why."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = MAX_BYTES       # file contents written, apparent size (sparse counted)
    max_entries: int = MAX_ENTRIES


@dataclass
class Report:
    size: int = 0                    # bytes of file contents
    entries: int = 0
    counts: Counter = field(default_factory=Counter)   # what was skipped or changed, by kind

    def notices(self) -> list[str]:
        said = {
            "absolute": "{n} absolute path(s) were made relative to the layer",
            "device": "{n} device node(s) were skipped: a container opens no device of an "
                      "image",
            "xattr": "{n} extended attribute(s) outside user.* were dropped",
            "owner": "{n} file owner(s) were squashed to you: without root (or a subuid "
                     "range) a store holds one owner",
            "type": "{n} member(s) of an unknown type were skipped",
            "aufs": "{n} aufs metadata member(s) (.wh..wh.*) were skipped",
        }
        return [said[k].format(n=n) + "." for k, n in sorted(self.counts.items())]


class _Layer:
    """The destination directory, and what unpacking it has written so far."""

    def __init__(self, dest_fd: int, limits: Limits, rootful: bool, report: Report,
                 what: str):
        self.fd = dest_fd
        self.what = what
        self.limits = limits
        self.rootful = rootful
        self.opaque = "trusted.overlay.opaque" if rootful else "user.overlay.opaque"
        self.report = report
        self.dirs: dict[str, tarfile.TarInfo] = {}   # attributes set last (children change
        self._parent = ("", os.dup(dest_fd))          # a directory's mtime)

    def parent(self, rel_dir: str) -> int:
        """A real fd of directory `rel_dir` (made, with its parents, where missing);
        cached for the run of members in one directory."""
        if self._parent[0] == rel_dir:
            return self._parent[1]
        try:
            fd = self._open_dir(rel_dir)
        except OSError as err:
            if err.errno not in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
                raise
            raise UnpackError(f"{self.what} has members under {rel_dir[:200]!r}, which is "
                              "a symbolic link or not a directory in the layer; refused (a "
                              "layer cannot write through a link).") from None
        os.close(self._parent[1])
        self._parent = (rel_dir, fd)
        return fd

    def _open_dir(self, rel_dir: str) -> int:
        if not rel_dir:
            return os.dup(self.fd)
        try:
            return linux.openat2(self.fd, rel_dir, DIR_FLAGS, BENEATH)
        except FileNotFoundError:
            pass
        up, _, name = rel_dir.rpartition("/")
        up_fd = self._open_dir(up)
        try:
            try:
                os.mkdir(name, 0o755, dir_fd=up_fd)
            except FileExistsError:
                pass
            return linux.openat2(up_fd, name, DIR_FLAGS, BENEATH)
        finally:
            os.close(up_fd)

    def forget(self) -> None:
        """After a directory was removed: the cached fd may be inside it."""
        os.close(self._parent[1])
        self._parent = ("", os.dup(self.fd))

    def close(self) -> None:
        os.close(self._parent[1])


def unpack(stream, dest: str, rootful: bool | None = None, limits: Limits = Limits(),
           what: str = "the layer") -> Report:
    """Unpack the (uncompressed) tar `stream` into the empty directory `dest`."""
    rootful = os.geteuid() == 0 if rootful is None else rootful
    report = Report()
    dest_fd = os.open(dest, DIR_FLAGS)
    layer = _Layer(dest_fd, limits, rootful, report, what)
    try:
        try:
            archive = open_tar(fileobj=stream, mode="r|")
        except tarfile.TarError as err:
            raise UnpackError(f"{what} is not a tar archive ({err}).") from None
        with archive:
            _members(archive, layer, what)
        _finish_dirs(layer)
    except UnpackError:
        raise
    except tarfile.TarError as err:
        raise UnpackError(f"{what} is a damaged tar archive ({err}).") from None
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UnpackError(f"{what} does not fit: the store's disk is full.") from None
        raise UnpackError(f"{what} could not be unpacked: {err.strerror or err}.") from None
    finally:
        layer.close()
        os.close(dest_fd)
    return report


def _members(archive: tarfile.TarFile, layer: _Layer, what: str) -> None:
    while True:
        try:
            member = archive.next()
        except tarfile.TarError as err:
            raise UnpackError(f"{what} is a damaged tar archive ({err}).") from None
        if member is None:
            return
        layer.report.entries += 1
        if layer.report.entries > layer.limits.max_entries:
            raise UnpackError(f"{what} has more than {layer.limits.max_entries} entries; "
                              "refused as a tar bomb.")
        rel = clean_name(member.name, layer.report, what)
        if rel:
            _member(archive, member, rel, layer, what)


def clean_name(name: str, report: Report, what: str) -> str:
    """The member's path relative to the layer ("" for the layer's own root); UnpackError
    for a name that climbs out (`..`) or holds a NUL."""
    if "\0" in name:
        raise UnpackError(f"{what} has a member name with a NUL byte; refused.")
    if name.startswith("/"):
        report.counts["absolute"] += 1
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnpackError(f"{what} has the member {name[:200]!r}, whose '..' leads out of "
                          "the layer; refused.")
    if any(len(p.encode()) > 255 for p in parts) or len(name.encode()) > 4096:
        raise UnpackError(f"{what} has a member name longer than Linux allows; refused.")
    return "/".join(parts)


def _member(archive, member: tarfile.TarInfo, rel: str, layer: _Layer, what: str) -> None:
    parent_rel, _, base = rel.rpartition("/")
    if base.startswith(WHITEOUT):
        _whiteout(parent_rel, base, layer)
        return
    if member.ischr() or member.isblk():
        layer.report.counts["device"] += 1
        return
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()
            or member.isfifo()):
        layer.report.counts["type"] += 1
        return
    parent = layer.parent(parent_rel)
    if not member.isdir():
        layer.dirs.pop(rel, None)
    if _clear(parent, base, keep_dir=member.isdir()):
        layer.forget()
        parent = layer.parent(parent_rel)
    if member.isdir():
        _mkdir(parent, base)
        layer.dirs[rel] = member
        return
    if member.issym():
        os.symlink(member.linkname, base, dir_fd=parent)
    elif member.islnk():
        _hardlink(member, parent, base, layer, what)
        return   # a link shares its target's inode: its attributes are the target's
    elif member.isfifo():
        os.mkfifo(base, 0o600, dir_fd=parent)
    else:
        _file(archive, member, parent, base, layer, what)
        return
    _attributes(member, parent, base, layer, None)


def _whiteout(parent_rel: str, base: str, layer: _Layer) -> None:
    parent = layer.parent(parent_rel)
    if base == OPAQUE:
        os.setxattr(parent, layer.opaque, b"y")
        return
    if base.startswith(WHITEOUT + WHITEOUT):   # .wh..wh.plnk and friends: aufs' own
        layer.report.counts["aufs"] += 1
        return
    name = base[len(WHITEOUT):]
    if name in ("", ".", ".."):
        return
    layer.dirs.pop(f"{parent_rel}/{name}".lstrip("/"), None)
    if _clear(parent, name, keep_dir=False):
        layer.forget()
        parent = layer.parent(parent_rel)
    os.mknod(name, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=parent)


def _clear(parent: int, name: str, keep_dir: bool) -> bool:
    """A later member of the same name replaces an earlier one (a directory stays a
    directory when the new member is one too); True when a directory was removed."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return False
        remove_tree_at(parent, name)
        return True
    os.unlink(name, dir_fd=parent)
    return False


def remove_tree_at(parent: int, name: str) -> None:
    """rm -r of `parent`/`name`, by fds, never following a symlink."""
    fd = linux.openat2(parent, name, DIR_FLAGS, BENEATH)
    try:
        os.fchmod(fd, 0o700)   # a user's store: a 0555 directory must be made writable
        for entry in os.listdir(fd):
            if stat.S_ISDIR(os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode):
                remove_tree_at(fd, entry)
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)


def _mkdir(parent: int, base: str) -> None:
    try:
        os.mkdir(base, 0o700, dir_fd=parent)
    except FileExistsError:
        pass


def _hardlink(member, parent: int, base: str, layer: _Layer, what: str) -> None:
    target = clean_name(member.linkname, layer.report, what)
    target_dir, _, target_base = target.rpartition("/")
    try:
        src = linux.openat2(layer.fd, target_dir or ".", DIR_FLAGS, BENEATH)
    except OSError:
        src = -1
    try:
        if src < 0 or not target_base:
            raise FileNotFoundError
        os.link(target_base, base, src_dir_fd=src, dst_dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        raise UnpackError(f"{what} has the hard link {member.name[:200]!r} to "
                          f"{member.linkname[:200]!r}, which is not a file of this layer; "
                          "refused.") from None
    except IsADirectoryError:
        raise UnpackError(f"{what} has a hard link to a directory; refused.") from None
    except PermissionError:
        raise UnpackError(f"{what} has a hard link {member.name[:200]!r} that cannot be "
                          "made; refused.") from None
    finally:
        if src >= 0:
            os.close(src)


def _file(archive, member, parent: int, base: str, layer: _Layer, what: str) -> None:
    report = layer.report
    if report.size + member.size > layer.limits.max_bytes:
        raise UnpackError(f"{what} holds more than {layer.limits.max_bytes >> 20} MiB "
                          f"(at {member.name[:200]!r}); refused as a tar bomb.")
    report.size += member.size
    fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=parent)
    try:
        data = archive.extractfile(member)
        left = member.size
        while left > 0:
            chunk = data.read(min(CHUNK, left))
            if not chunk:
                raise UnpackError(f"{what} ends inside {member.name[:200]!r}; the archive "
                                  "is truncated.")
            _write_all(fd, chunk)
            left -= len(chunk)
        _attributes(member, parent, base, layer, fd)
    finally:
        os.close(fd)


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view):]


def _attributes(member, parent: int, base: str, layer: _Layer, fd: int | None) -> None:
    """Owner, then mode (chown clears set-id bits), xattrs, times: on `fd` (a file or a
    directory this code opened), else on `base` in `parent` without following it (a
    symlink gets an owner and times, as Linux gives it no mode; a FIFO gets its mode)."""
    if not layer.rootful and (member.uid or member.gid):
        layer.report.counts["owner"] += 1
    mtime = int(member.mtime * 1e9) if member.mtime else 0
    if fd is None:
        if layer.rootful:
            os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        if not member.issym():   # a FIFO this code just made: no symlink to follow there
            os.chmod(base, stat.S_IMODE(member.mode), dir_fd=parent)
        os.utime(base, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)
        return
    if layer.rootful:
        os.fchown(fd, member.uid, member.gid)
    os.fchmod(fd, stat.S_IMODE(member.mode))
    _xattrs(member, fd, layer)
    os.utime(fd, ns=(mtime, mtime))


def _xattrs(member, fd: int, layer: _Layer) -> None:
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key[len("SCHILY.xattr."):]
        allowed = ((name.startswith("user.") and not name.startswith("user.overlay."))
                   or (name == "security.capability" and layer.rootful))
        if not allowed:
            layer.report.counts["xattr"] += 1
            continue
        raw = value.encode("utf-8", "surrogateescape")
        try:
            os.setxattr(fd, name, raw)
        except OSError:
            layer.report.counts["xattr"] += 1   # the store's file system refuses it


def _finish_dirs(layer: _Layer) -> None:
    """Directories' attributes last, deepest first: writing their children changed their
    mtimes, and a 0555 directory could not have been written into."""
    for rel in sorted(layer.dirs, key=lambda r: r.count("/"), reverse=True):
        try:
            fd = linux.openat2(layer.fd, rel, DIR_FLAGS, BENEATH)
        except OSError:
            continue   # replaced or whited out by a later member
        try:
            _attributes(layer.dirs[rel], -1, rel, layer, fd)
        finally:
            os.close(fd)
