"""`exec`: a process started inside a running container, run as a file (`python -I -S
enter.py`, stdlib only) by the runner.

It receives an ExecConfig on fd 3 (config.send) with its status pipe, its stdin, stdout and
stderr and the container's namespaces (fds the runner opened from /proc/<PID 1>/ns/), joins
them (user first, mount last), and forks: setns(CLONE_NEWPID) places only children in the
container's PID namespace. The child moves into the container's cgroup (through files
opened before the mount namespace hid the host's cgroup file system) and then starts the
command exactly as PID 1 started the container's workload (workload.run: cwd, a new session
keyring, Docker's capabilities less MKNOD, the ids, no_new_privs, the seccomp filter), so it
can do no more than the container. This process waits outside, forwards signals to it, and
exits with its status; the child dies with it (PDEATHSIG), and what it started is then the
container's PID 1's to reap."""

from __future__ import annotations

import os
import signal
import socket
import sys

if __name__ == "__main__":   # run as a file, so `ps` shows a readable command line
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    from nsmagic.inside.enter import main
    main(int(sys.argv[1]), int(sys.argv[2]))

from .. import config  # noqa: E402
from ..config import ExecConfig  # noqa: E402
from ..errors import SetupError  # noqa: E402
from . import linux, workload  # noqa: E402
from .init import EXIT_SETUP, Status  # noqa: E402

MAX_FDS = 4 + len(config.NAMESPACES)
CHILD_FORWARDED = workload.FORWARDED


def main(sock_fd: int, runner: int) -> None:
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)   # dies with its runner
    if os.getppid() != runner:   # which died while this interpreter started: too late for
        os._exit(EXIT_SETUP)     # PDEATHSIG, and its config may be in the socket already
    linux.set_name("nsmagic-exec")
    status = Status(-1)
    try:
        cfg, fds = config.receive(socket.socket(fileno=sock_fd), ExecConfig, MAX_FDS)
        if cfg is None:
            os._exit(EXIT_SETUP)
        status_fd, *stdio = fds[:4]
        status = Status(status_fd)
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
            os.close(fd)
        cgroup = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in cfg.cgroup_files]
        _join(cfg.namespaces, fds[4:])
        pid = os.fork()
        if pid == 0:
            _child(cfg, status, cgroup)
        for fd in cgroup:
            os.close(fd)
        os.close(status_fd)
        _wait(pid)
    except SetupError as err:
        status.send(error=str(err), code=EXIT_SETUP)
    except OSError as err:
        status.send(error=f"can't enter the container: {(err.strerror or str(err)).lower()}",
                    code=EXIT_SETUP)
    os._exit(EXIT_SETUP)


def _join(names: tuple[str, ...], fds: list[int]) -> None:
    if len(names) != len(fds):
        raise SetupError("exec was sent fewer namespaces than it names.")
    for name, fd in zip(names, fds):
        try:
            if name != "user" or os.fstat(fd).st_ino != os.stat("/proc/self/ns/user").st_ino:
                linux.setns(fd, 0)   # (a user namespace cannot be joined by its own member)
        except OSError as err:
            raise SetupError(f"can't join the container's {name} namespace: "
                             f"{(err.strerror or str(err)).lower()}") from err
        finally:
            os.close(fd)


def _child(cfg: ExecConfig, status: Status, cgroup: list[int]) -> None:
    """In the container's namespaces: its cgroup, then its workload's privileges; never
    returns."""
    try:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        linux.set_title("nsmagic-exec")   # not the host's interpreter and script path
        for fd in cgroup:
            os.write(fd, b"0")   # this process joins: the container's limits hold for it
            os.close(fd)
        if cfg.tty:
            _terminal()
        workload.run(cfg, status)
    except SetupError as err:
        status.send(error=str(err), code=EXIT_SETUP)
    except BaseException as err:  # noqa: BLE001 - never a traceback from inside
        status.send(error=f"can't start the command in the container: {err}",
                    code=EXIT_SETUP)
    os._exit(EXIT_SETUP)


def _terminal() -> None:
    """exec -t: a pseudo-terminal of the container's own devpts (so `tty` names it inside),
    its master sent back to the runner on the socket that came as stdin (runc's console
    socket), its slave this session's controlling terminal and stdio, as a login's."""
    import fcntl
    import termios
    master, slave = os.openpty()
    console = socket.socket(fileno=os.dup(0))
    socket.send_fds(console, [b"pty"], [master])
    console.close()
    os.close(master)
    os.setsid()
    for target in (0, 1, 2):
        os.dup2(slave, target)
    os.close(slave)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _wait(pid: int) -> None:
    """Outside: forward the runner's signals to the child; leave with its status."""
    for sig in CHILD_FORWARDED:
        signal.signal(sig, lambda s, _f: _send(pid, s))
    while True:
        try:
            _, wait_status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    os._exit(workload.exit_code(wait_status))


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass
