"""PID 1's keeper: a container's writable layer copied into the image store when its
workload exits (a container that stays, a build's RUN). The upper layer lives on the run's
scratch tmpfs, so the run's storage limit holds while it runs; the copy is what `ps -a`,
`diff`, `commit` and a build read afterwards.

The keeper is forked by PID 1 after pivot_root and before PID 1 drops its privileges (the
upper holds root's files and `trusted.` xattrs): it holds only two fds, the upper layer's
directory and the destination in the store, and waits on a pipe. When the workload has
exited PID 1 closes the pipe and waits for the copy, then reports the exit. The copy lands
as upper.part and is renamed to upper when whole. Stdlib only.

The upper is written by the container: it is read by fds, beneath its directory, never
following a link, a FIFO never opened; holes stay holes (a sparse file the tmpfs held in a
few blocks must not become gigabytes on the host's disk); the destination is fresh and
written O_EXCL | O_NOFOLLOW. Before the copy, the container's other processes are killed
(Docker's container stops with its main process): nothing changes the layer while it is
read."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil  # imported here, by the fork server: the keeper runs inside the image's root
import signal
import stat
import sys
import time

OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque")
KEPT_XATTRS = ("security.capability",)
DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
HIGH_FD = 1000

_keeper: tuple[int, int] | None = None   # (pid, the pipe's write end) while one waits


def start(upper_fd: int, dest_fd: int, opaque_out: str) -> None:
    """Fork the keeper; it waits until finish() and copies the upper into dest/upper."""
    global _keeper
    r, w = os.pipe2(os.O_CLOEXEC)
    # os.fork runs the fork hooks a runner registered (in a CLI's PID 1 they are still
    # there: it is a clone of the CLI), which point low fds at /dev/null: the keeper's fds
    # go high, and are checked after the fork.
    mine = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HIGH_FD) for fd in (r, upper_fd, dest_fd)]
    for fd in (r, upper_fd, dest_fd):
        os.close(fd)
    identity = [_identity(fd) for fd in mine]
    pid = _fork_quietly()
    if pid == 0:
        _keep(mine, identity, w, opaque_out)
    for fd in mine:
        os.close(fd)
    _keeper = (pid, w)


def _fork_quietly() -> int:
    """os.fork with the child's stderr on /dev/null while the fork hooks run (a runner's
    hook, meaningless here, must not print into the workload's stderr)."""
    saved = fcntl.fcntl(2, fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
    null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    pid = -1
    try:
        os.dup2(null, 2)
        pid = os.fork()
    finally:
        os.close(null)
        if pid != 0:
            os.dup2(saved, 2)
        os.close(saved)
    return pid


def _keep(fds: list[int], identity: list, w: int, opaque_out: str) -> None:
    """The keeper's life. Never returns."""
    code = 1
    try:
        r, upper_fd, dest_fd = fds
        os.close(w)
        for fd in range(0, 3):
            os.close(fd)           # the workload's pipes: never held open by the keeper
        if [_identity(fd) for fd in fds] == identity:
            os.read(r, 1)          # EOF: PID 1 closed it (the workload exited, or died)
            copy(upper_fd, dest_fd, opaque_out)
            code = 0
    finally:
        os._exit(code)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def finish() -> None:
    """In PID 1, once the workload has exited: let the keeper copy, and wait for it."""
    global _keeper
    if _keeper is None:
        return
    pid, w = _keeper
    _keeper = None
    if not _stop_the_rest(keeper=pid):
        os.close(w)
        return            # the keeper itself died: nothing to wait for
    os.close(w)
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _stop_the_rest(keeper: int) -> bool:
    """In PID 1: SIGKILL every process of the container but PID 1 and the keeper, and reap
    them (they are ours once orphaned), until none is left. False if the keeper died."""
    keeper_alive = True
    for _ in range(2000):
        others = [int(p) for p in os.listdir("/proc")
                  if p.isdigit() and int(p) not in (1, os.getpid(), keeper)]
        for pid in others:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while True:       # zombies stay listed in /proc until reaped
            try:
                reaped, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                reaped = 0
            if reaped == 0:
                break
            keeper_alive = keeper_alive and reaped != keeper
        if not others:
            return keeper_alive
        time.sleep(0.001)
    return keeper_alive


def copy(upper_fd: int, dest_fd: int, opaque_out: str) -> None:
    """The copy, or nothing: a copy that fails (a layer the store cannot hold) leaves no
    half layer behind. It replaces the layer an earlier run of the container kept."""
    os.mkdir("upper.part", 0o755, dir_fd=dest_fd)
    part = os.open("upper.part", DIR, dir_fd=dest_fd)
    try:
        copy_tree(upper_fd, part, opaque_out)
    except BaseException:
        shutil.rmtree("upper.part", dir_fd=dest_fd, ignore_errors=True)
        raise
    finally:
        os.close(part)
    try:
        os.rename("upper", "upper.old", src_dir_fd=dest_fd, dst_dir_fd=dest_fd)
    except FileNotFoundError:
        pass
    os.rename("upper.part", "upper", src_dir_fd=dest_fd, dst_dir_fd=dest_fd)
    shutil.rmtree("upper.old", dir_fd=dest_fd, ignore_errors=True)


def copy_tree(src: int, dst: int, opaque_out: str) -> None:
    """What is under `src` into the empty directory `dst`, by fds: the keeper's copy, and a
    container's kept layer put back as the upper layer of its next start."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))   # one level a directory
    _copy_dir(src, dst, opaque_out, {}, dst, "")
    _attributes(src, dst, None, opaque_out)


def _copy_dir(src: int, dst: int, opaque_out: str, links: dict, top: int, here: str) -> None:
    """`links`: an inode met with more links -> its copy's path under `top` (a path, not a
    held fd: a layer of many hard links must not run the keeper out of fds)."""
    for name in os.listdir(src):
        st = os.stat(name, dir_fd=src, follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o700, dir_fd=dst)
            s, d = os.open(name, DIR, dir_fd=src), os.open(name, DIR, dir_fd=dst)
            try:
                _copy_dir(s, d, opaque_out, links, top, f"{here}{name}/")
                _attributes(s, d, st, opaque_out)
            finally:
                os.close(s)
                os.close(d)
            continue
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            try:
                os.link(links[key], name, src_dir_fd=top, dst_dir_fd=dst,
                        follow_symlinks=False)
                continue
            except OSError:   # a path too long to name: a copy of its own instead
                pass
        if not _copy_node(src, dst, name, st):
            continue
        if st.st_nlink > 1:
            links[key] = here + name


def _copy_node(src: int, dst: int, name: str, st: os.stat_result) -> bool:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
    elif stat.S_ISCHR(mode) and st.st_rdev == 0:
        os.mknod(name, stat.S_IFCHR | 0o600, 0, dir_fd=dst)       # a whiteout
    elif stat.S_ISFIFO(mode):
        os.mkfifo(name, 0o600, dir_fd=dst)
    elif stat.S_ISREG(mode):
        _copy_file(src, dst, name, st)
        return True
    else:
        return False      # a socket, or a device the container could not have made
    os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
    if not stat.S_ISLNK(mode):
        os.chmod(name, stat.S_IMODE(mode), dir_fd=dst)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)
    return True


def _copy_file(src: int, dst: int, name: str, st: os.stat_result) -> None:
    # O_NONBLOCK: a FIFO put where the file was (by a rename) must not hold the open
    i = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=src)
    try:
        st = os.fstat(i)
        if not stat.S_ISREG(st.st_mode):
            return
        o = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600, dir_fd=dst)
        try:
            _copy_data(i, o, st.st_size)
            _attributes(i, o, st, None)
        finally:
            os.close(o)
    finally:
        os.close(i)


def _copy_data(i: int, o: int, size: int) -> None:
    """The file's data, extent by extent (SEEK_DATA/SEEK_HOLE); the holes between stay holes.
    sendfile: tmpfs to the store's disk, within the kernel."""
    os.ftruncate(o, size)
    at = 0
    while at < size:
        try:
            start = os.lseek(i, at, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:   # no data after `at`: a hole to the end
                return
            raise
        end = min(os.lseek(i, start, os.SEEK_HOLE), size)
        os.lseek(o, start, os.SEEK_SET)
        while start < end:
            done = os.sendfile(o, i, start, min(end - start, 1 << 30))
            if done == 0:
                return
            start += done
        at = end


def _attributes(src: int, dst: int, st: os.stat_result | None, opaque_out: str | None):
    """Owner, mode (after the owner: chown clears set-id bits), xattrs, times, by fd."""
    st = st or os.fstat(src)
    os.fchown(dst, st.st_uid, st.st_gid)
    os.fchmod(dst, stat.S_IMODE(st.st_mode))
    try:
        names = os.listxattr(src)
    except OSError:
        names = []
    for name in names:
        if name in OPAQUE and opaque_out:
            if os.getxattr(src, name) == b"y":
                os.setxattr(dst, opaque_out, b"y")
        elif name in KEPT_XATTRS or (name.startswith("user.") and ".overlay." not in name):
            try:
                os.setxattr(dst, name, os.getxattr(src, name))
            except OSError:
                pass
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
