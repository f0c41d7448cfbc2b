"""PID 1, once the container is built: make PID 1 itself what the workload starts from (cwd,
capabilities, ids, no_new_privs: PID 1 needs none of its privileges any more), posix_spawn
the workload (a vfork, not a copy of this Python process), forward signals to it, reap every
orphan, and exit with the workload's status. Stdlib only."""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import time

from ..config import RunConfig
from ..errors import SetupError
from . import keep, linux

# Docker's default capability set, less MKNOD (there is no device cgroup to back it).
KEEP_CAPABILITIES = frozenset((
    "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "AUDIT_WRITE", "SETFCAP"))
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH, signal.SIGPIPE)
EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 126, 127


def run(cfg: RunConfig, status, go: socket.socket | None = None) -> None:
    """Never returns: PID 1 exits with the workload's status."""
    env = dict(cfg.env)
    _drop_privileges(cfg)
    try:
        path = find(cfg.argv[0], env)
    except OSError as err:
        _exec_failed(cfg, err, status)
    forward_to: list[int] = []
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _f: [_kill_group(p, s) for p in forward_to])
    pid = _spawn(cfg, path, env, status)
    forward_to.append(pid)
    status.mark("workload spawned")
    if go is not None:   # a ready spare; dropped unused, it takes its interpreter along
        _wait_for_go(go, pid, status)
    _reap_until(pid, status)


def _drop_privileges(cfg: RunConfig) -> None:
    try:
        os.makedirs(cfg.workdir, exist_ok=True)
        os.chdir(cfg.workdir)
        if not os.getcwd().startswith("/"):   # a cwd outside the root (CVE-2024-21626)
            raise SetupError(f"the working directory {cfg.workdir} is outside the container.")
        linux.limit_capabilities(KEEP_CAPABILITIES)   # needs CAP_SETPCAP: before any setuid
        if cfg.user:
            os.setgroups([])
            os.setgid(cfg.user[1])
            os.setuid(cfg.user[0])
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    except OSError as err:
        raise SetupError(f"can't prepare the workload: {err}") from err


def _spawn(cfg: RunConfig, path: str, env: dict, status) -> int:
    """Only fds 0, 1 and 2 reach the workload."""
    extra = [int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2]
    try:
        return os.posix_spawn(path, list(cfg.argv), env, setsid=True, setsigmask=(),
                              setsigdef=FORWARDED + (signal.SIGXFSZ,),
                              file_actions=[(os.POSIX_SPAWN_CLOSE, fd) for fd in extra
                                            if _is_open(fd)])
    except OSError as err:
        _exec_failed(cfg, err, status)


def _wait_for_go(go: socket.socket, pid: int, status) -> None:
    _await_reading_stdin(pid)
    status.mark("interpreter waits for the cell")
    status.send(ready=True)
    if not _taken(go, pid):
        os._exit(0)
    go.close()
    linux.set_name("nsmagic-init")
    status.mark("run taken by PID 1")


def _reap_until(pid: int, status) -> None:
    """Reap every child re-parented to us; leave with the workload."""
    while True:
        try:
            reaped, wait_status = os.wait()
        except ChildProcessError:
            os._exit(125)
        if reaped == pid:
            status.mark("workload exited")
            code = exit_code(wait_status)
            keep.finish()   # a container that stays: its writable layer copied first
            status.send(exit=code)
            for fd in (0, 1, 2, status.fd):   # the run is over for the runner: it need not
                os.close(fd)                  # wait for the rest of our exit (teardown)
            os._exit(code)


def exit_code(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code     # killed by signal n -> 128 + n, as Docker


def _taken(go: socket.socket, pid: int) -> bool:
    """A ready spare waits to be taken: True on "go". False when it is dropped (EOF), or
    when its interpreter dies meanwhile (killed, say): then PID 1 goes too, and no cell is
    given a container whose interpreter is dead."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda _s, _f: None)   # a handler: the wake-up fd is written
    previous = signal.set_wakeup_fd(wake_w)
    try:
        while True:
            if select.select([go], [], [], 0)[0]:
                return bool(go.recv(16))
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return False
            select.select([go, wake_r], [], [])
            try:
                os.read(wake_r, 64)
            except BlockingIOError:
                pass
    finally:
        signal.set_wakeup_fd(previous)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(wake_r)
        os.close(wake_w)


def _await_reading_stdin(pid: int, limit: float = 5.0) -> None:
    """Until the interpreter has started and blocks reading its script from the stdin pipe
    (the kernel's wait channel says so), it ends, or `limit` passes."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    return
            with open(f"/proc/{pid}/wchan") as f:
                if f.read().endswith("pipe_read"):     # pipe_read, anon_pipe_read (6.x)
                    return
        except OSError:
            return
        time.sleep(0.001)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def find(name: str, env: dict) -> str:
    """The PATH search of execvp, with the container's PATH. Not os.execvpe's: that one
    imports `warnings` lazily, and after pivot_root into a root without Python's stdlib
    (busybox) no import can succeed."""
    if "/" in name:
        return name
    denied = None
    for directory in env.get("PATH", "/usr/bin:/bin").split(":"):
        candidate = f"{directory or '.'}/{name}"
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            denied = denied or candidate
    if denied:
        raise PermissionError(errno.EACCES, "permission denied", denied)
    raise FileNotFoundError(errno.ENOENT, "not found", name)


def _exec_failed(cfg: RunConfig, err: OSError, status) -> None:
    name = cfg.argv[0]
    if err.errno == errno.ENOENT:
        message = (f"{name}: not found in the container"
                   + ("; with --rootfs, give a command the root has (such as sh)"
                      if cfg.python_cell and cfg.custom_root else "; check the name and PATH"))
        code = EXIT_NOT_FOUND
    elif err.errno == errno.E2BIG:
        message = (f"{name}: the command line and environment are larger than the kernel "
                   "takes (E2BIG); pass large data through a file or a volume")
        code = EXIT_NOT_EXECUTABLE
    else:
        message = f"{name}: cannot be executed in the container: {err.strerror.lower()}"
        code = EXIT_NOT_EXECUTABLE
    status.send(error=message, code=code)
    os._exit(code)


def _kill_group(pid: int, sig: int) -> None:
    for target in (-pid, pid):   # its process group first (a shell pipeline), then itself
        try:
            os.kill(target, sig)
        except OSError:
            pass
