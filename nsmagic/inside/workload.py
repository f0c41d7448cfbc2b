"""PID 1, once the container is built: make PID 1 itself what the workload starts from (cwd,
a fresh session keyring, capabilities, ids, no_new_privs, the seccomp filter), posix_spawn the
workload (a vfork, not a copy of this Python process), give up PID 1's own capabilities,
forward signals to the workload, reap every orphan, and exit with the workload's status.
Stdlib only.

Why the workload gets exactly KEEP_CAPABILITIES (the kernel's cap_bprm_creds_from_file): a
root exec gets permitted = bounding | inheritable, and under no_new_privs whatever it would
gain is cut down to the permitted set it had before the exec, PID 1's. So PID 1 keeps KEEP as
its permitted and effective set until the workload is spawned, then drops to none: it only
forwards signals to and reaps processes of its own uid, which takes no capability. The
inheritable set stays empty, as in Docker since CVE-2022-24769: inheritable file
capabilities would otherwise give a non-root workload capabilities on exec."""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import time

from ..config import RunConfig
from ..errors import SetupError
from ..security import capabilities, seccomp
from . import keep, linux

# Docker's default capability set, less MKNOD (there is no device cgroup to back it). The
# runner compiles the seccomp filter for this set: rules depend on the capabilities kept.
KEEP_CAPABILITIES = capabilities.DOCKER_DEFAULT - {"CAP_MKNOD"}
_KEEP = capabilities.mask(KEEP_CAPABILITIES)
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH, signal.SIGPIPE)
EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 126, 127


def run(cfg: RunConfig, status, go: socket.socket | None = None) -> None:
    """Never returns: PID 1 exits with the workload's status."""
    env = dict(cfg.env)
    _enter_workdir(cfg.workdir)
    _drop_privileges(cfg, status)
    try:
        path = find(cfg.argv[0], env)
    except OSError as err:
        _exec_failed(cfg, err, status)
    forward_to: list[int] = []
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _f: [_kill_group(p, s) for p in forward_to])
    # Held until the workload's pid is known: a signal sent as soon as the workload writes
    # (SIGPIPE for a closed reader, Ctrl-C) would otherwise find nobody to forward to.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    pid = _spawn(cfg, path, env, status)
    forward_to.append(pid)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    status.mark("workload spawned")
    if go is not None:   # a ready spare; dropped unused, it takes its interpreter along
        _wait_for_go(go, pid, status)
    else:
        _drop_own_capabilities()
    linux.release_free_memory()   # PID 1 idles from here: what setup freed goes back
    _reap_until(pid, status)


def _enter_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        os.chdir(workdir)
    except OSError as err:
        why = ("not a directory" if err.errno in (errno.EEXIST, errno.ENOTDIR)
               else err.strerror.lower())
        raise SetupError(f"can't make the working directory {workdir} in the container: "
                         f"{why}; give -w a directory the container has or can create, "
                         "such as /tmp/work.") from err
    if not os.getcwd().startswith("/"):   # a cwd outside the root (CVE-2024-21626)
        raise SetupError(f"the working directory {workdir} is outside the container.")


def _drop_privileges(cfg: RunConfig, status) -> None:
    """In this order: the bounding set while CAP_SETPCAP is held; the keyring; the ids (their
    calls need CAP_SETUID/CAP_SETGID); the capabilities the workload starts with;
    no_new_privs; the filter last, so that none of these calls need be allowed by it."""
    try:
        linux.limit_bounding_set(_KEEP)
        if not cfg.unconfined:
            _join_new_session_keyring()
        if cfg.user:
            os.setgroups([])
            os.setgid(cfg.user[1])
            os.setuid(cfg.user[0])
        linux.set_capabilities(_KEEP)
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    except OSError as err:
        raise SetupError(f"can't drop the workload's privileges: {err.strerror.lower()}.") \
            from err
    status.mark("privileges dropped")
    if cfg.seccomp is not None:
        seccomp.load(cfg.seccomp)
        status.mark("seccomp filter loaded")


def _join_new_session_keyring() -> None:
    """Each run its own session keyring, as runc gives each container: none of the caller's
    keys (nor root's, as root) are in reach, even with --security-opt seccomp=unconfined."""
    try:
        linux.join_new_session_keyring()
    except OSError as err:
        if err.errno == errno.ENOSYS:
            return   # a kernel without keyrings: there are no keys to reach
        raise SetupError(f"can't give the container a session keyring of its own: "
                         f"{err.strerror.lower()}; if the key quota is reached, raise "
                         "/proc/sys/kernel/keys/maxkeys.") from err


def _drop_own_capabilities() -> None:
    """Once the workload runs, PID 1 needs no capability: it signals and reaps processes of
    its own uid. Not dumpable again: a setuid (--user) resets that flag."""
    linux.set_capabilities(0)
    linux.prctl(linux.PR_SET_DUMPABLE, 0)


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
    """PID 1's capabilities go once the interpreter waits on its stdin (reading its wait
    channel takes the workload's capabilities) and before the cell can reach it."""
    _await_reading_stdin(pid)
    _drop_own_capabilities()
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
