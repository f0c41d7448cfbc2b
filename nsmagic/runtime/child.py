"""Child side of a run: its PID 1, clone()d straight into its namespaces by the fork server
(zygote.py; never a fork of the notebook kernel).

Phase 1, possibly long before its run (a spare): join the cgroup, wait on the control socket.
Phase 2: receive the run; build the root, pivot into it; drop PID 1's own privileges to the
workload's; posix_spawn the workload (only fds 0-2); forward signals to it; reap every zombie;
report the workload's exit and exit with it. The kernel then kills all else in the namespace.
A ready spare (for a Python cell) gets its run with its boot settings and does phase 2 at once,
up to an interpreter that waits for the cell on its stdin; then PID 1 waits for "go".

Messages go to the parent as JSON lines on the status fd. Only the stdlib is imported here.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import signal
import socket
import time

from ..errors import SetupError
from ..rootfs import mounts
from . import linux

# Docker's default capability set, less CAP_MKNOD (there is no device cgroup to back it).
KEEP_CAPS = {0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 29, 31}
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH)
EXIT_SETUP, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 125, 126, 127


class Status:
    def __init__(self, fd: int):
        self.fd = fd
        self.mark = lambda step: None

    def send(self, **message) -> None:
        data = (json.dumps(message) + "\n").encode()
        try:
            os.write(self.fd, data)   # short JSON lines: one write, atomic on a pipe
        except OSError:
            pass


def _exit_code(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code     # killed by signal n -> 128 + n, as Docker


def namespace_flags(cfg: dict) -> int:
    if cfg["unconfined"]:
        return 0
    flags = linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC | linux.CLONE_NEWPID
    if cfg["network"] == "none":
        flags |= linux.CLONE_NEWNET
    if cfg["rootless"]:
        flags |= linux.CLONE_NEWUSER
    return flags


def start(boot: dict, fds: list[int], parent_alive: int) -> int:
    """In the fork server (or a small runner): clone a PID 1 into new namespaces and its
    cgroup, and return its pid. PID 1 then waits for its run (see _become_init).

    `boot` says what must be known at clone time: namespaces, user, cgroup (and for a ready
    spare the whole run). `fds` are the control socket (the run's config and stdio arrive
    there) and the status pipe, then a ready spare's stdin, stdout and stderr;
    `parent_alive` is the read end of a pipe whose writer is the caller, so PID 1 can tell
    whether we died early."""
    cgroup_fd = None
    if boot.get("cgroup_dir"):    # v2: born in its group (clone3 CLONE_INTO_CGROUP, 5.7+)
        try:
            cgroup_fd = os.open(boot["cgroup_dir"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            pass
    try:
        try:
            pid = linux.clone(namespace_flags(boot), cgroup_fd)
            if cgroup_fd is not None and pid == 0:
                boot["cgroup_procs"] = []   # already in it
        except OSError as err:
            if cgroup_fd is None or err.errno not in (errno.ENOSYS, errno.EINVAL, errno.E2BIG):
                raise
            pid = linux.clone(namespace_flags(boot))   # an older kernel: join by writing
        finally:
            if cgroup_fd is not None and pid != 0:
                os.close(cgroup_fd)
    except OSError as err:
        hint = mounts.HINTS.get(err.errno, (err.strerror or "error").lower())
        raise SetupError(f"can't create namespaces (pid, mount, uts, ipc, net"
                         f"{', user' if boot['rootless'] else ''}): {hint}; "
                         "or pass --unconfined to run without isolation") from err
    if pid == 0:
        _become_init(boot, fds, parent_alive)
    return pid


def _become_init(boot: dict, fds: list[int], parent_alive: int) -> None:
    """The clone()d child. Phase 1 (may run long before the run, as a spare): fds in place,
    tie our life to the fork server's, map the user, join the cgroup. Phase 2: receive the
    run's config and stdio, then be its PID 1. Never returns."""
    status = Status(4)
    try:
        # Out of the way first (a target number may be one of the sources), then into place:
        # 3 control socket, 4 status, 5 parent-alive pipe (0, 1, 2 a ready spare's stdio).
        control_fd, status_fd, *stdio = fds
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)
                for fd in (control_fd, status_fd, parent_alive, *stdio)]
        for target, fd in zip((3, 4, 5, 0, 1, 2), high):
            os.dup2(fd, target)
        os.closerange(6, 1 << 16)                 # everything else of the fork server's
        # Die with the fork server (which dies with the runner); EOF on fd 5 means it died
        # before this line. getppid() is no help: it reads 0 in a new PID namespace.
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([5], [], [], 0)[0]:
            os._exit(EXIT_SETUP)
        os.close(5)
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        linux.set_name("nsmagic-spare")
        if boot["rootless"] and not boot["unconfined"]:
            _map_root_to_caller(boot["uid"], boot["gid"])
        # Joining a v1 group waits for an RCU grace period (~10 ms here): a spare pays it
        # before its run is even asked for.
        for path in boot["cgroup_procs"]:
            try:
                with open(path, "w") as f:
                    f.write("0")
            except OSError as err:
                raise SetupError(f"can't join the cgroup {os.path.dirname(path)}: "
                                 f"{err.strerror.lower()}") from err
        # --- phase 2: the run
        control = socket.socket(fileno=3)
        if boot.get("run"):
            status.mark = _marker(status, True)   # the runner keeps them if it wants them
            status.mark("PID 1 cloned, cgroup joined")
            _init(boot["run"], status, go=control)
        data, stdio, _, _ = socket.recv_fds(control, 1 << 20, 3)
        if not data:
            os._exit(0)                           # a spare the runner no longer needs
        control.close()
        cfg = json.loads(data)
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
            os.close(fd)
        status.mark = _marker(status, cfg.get("profile"))
        status.mark("run config received")
        _init(cfg, status)
    except SetupError as err:
        status.send(error=str(err), code=EXIT_SETUP)
    except BaseException as err:  # noqa: BLE001 - a PID 1 must never print a traceback
        status.send(error=f"container setup failed: {err!r}", code=EXIT_SETUP)
    finally:
        os._exit(EXIT_SETUP)


def _marker(status: Status, enabled: bool):
    """--profile: timestamps (CLOCK_MONOTONIC, the same clock in every process) per step."""
    if not enabled:
        return lambda name: None
    return lambda name: status.send(mark=[name, time.monotonic()])


def _map_root_to_caller(uid: int, gid: int) -> None:
    """Root inside, the calling user outside: a one-line map a process may write itself."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _init(cfg: dict, status: Status, go: socket.socket | None = None) -> None:
    """PID 1: set the container up, run the workload, forward signals, reap, exit with it.
    With `go` (a ready spare), wait there for the run once the workload is started."""
    if go is None:
        linux.set_name("nsmagic-init")
    linux.prctl(linux.PR_SET_DUMPABLE, 0)   # no /proc/1/exe for the workload (CVE-2019-5736)
    # --- cgroup (joined in phase 1): a cgroup namespace makes it look like the root inside
    if cfg["unconfined"]:
        return _run_workload(cfg, status, go)
    if cfg["cgroup_procs"]:
        mounts.step("create", "a cgroup namespace", linux.unshare, linux.CLONE_NEWCGROUP)
    # --- root file system. Sources are opened in this mount namespace (overlay refuses a
    # lower layer from another one) and before the scratch tmpfs covers /tmp.
    fds = mounts.open_sources(cfg["plan"])
    root = mounts.build_root(cfg["plan"], fds, cfg["rootless"])
    status.mark("overlay root built")
    mounts.write_identity(root, cfg["hostname"])
    mounts.mount_kernel_fs(root, cfg["rootless"], cfg["cgroup_mounts"])
    status.mark("/proc /dev /sys mounted")
    for fd in fds.values():
        os.close(fd)
    if cfg["plan"]["read_only"]:
        mounts.make_root_read_only(root, cfg["plan"])
    mounts.enter_root(root)
    status.mark("pivot_root done")
    # --- host name and network
    mounts.step("set the host name", cfg["hostname"], socket.sethostname, cfg["hostname"])
    if cfg["network"] == "none":
        mounts.step("bring up", "lo", linux.loopback_up)
    status.mark("hostname and lo set")
    _run_workload(cfg, status, go)


def _run_workload(cfg: dict, status: Status, go: socket.socket | None = None) -> None:
    """Make PID 1 itself what the workload should start from (cwd, capabilities, ids,
    no_new_privs: PID 1 needs none of its privileges any more), posix_spawn the workload (a
    vfork, not a copy of this Python process), forward signals to it, reap every orphan, and
    exit with the workload's status."""
    argv, env = cfg["argv"], dict(cfg["env"])
    try:
        workdir = cfg["workdir"]
        os.makedirs(workdir, exist_ok=True)
        os.chdir(workdir)
        if not os.getcwd().startswith("/"):   # a cwd outside the root (CVE-2024-21626)
            raise SetupError(f"the working directory {workdir} is outside the container.")
        linux.limit_capabilities(KEEP_CAPS)   # needs CAP_SETPCAP: before any setuid
        if cfg["user"]:
            os.setgroups([])
            os.setgid(cfg["user"][1])
            os.setuid(cfg["user"][0])
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    except OSError as err:
        raise SetupError(f"can't prepare the workload: {err}") from err
    try:
        path = _find(argv[0], env)
    except OSError as err:
        _exec_failed(cfg, argv, err, status)
    forward_to = []
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _f: [_kill_group(p, s) for p in forward_to])
    # Only 0, 1 and 2 reach the workload.
    extra = [int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2]
    try:
        pid = os.posix_spawn(path, argv, env, setsid=True, setsigmask=(),
                             setsigdef=FORWARDED + (signal.SIGPIPE, signal.SIGXFSZ),
                             file_actions=[(os.POSIX_SPAWN_CLOSE, fd) for fd in extra
                                           if _is_open(fd)])
    except OSError as err:
        _exec_failed(cfg, argv, err, status)
    forward_to.append(pid)
    status.mark("workload spawned")
    if go is not None:   # a ready spare; dropped unused, it takes its interpreter along
        _await_reading_stdin(pid)
        status.mark("interpreter waits for the cell")
        status.send(ready=True)
        if not _taken(go, pid):
            os._exit(0)
        go.close()
        linux.set_name("nsmagic-init")
        status.mark("run taken by PID 1")
    while True:   # reap every child that gets re-parented to us; leave with the workload
        try:
            reaped, wait_status = os.wait()
        except ChildProcessError:
            os._exit(EXIT_SETUP)
        if reaped == pid:
            status.mark("workload exited")
            code = _exit_code(wait_status)
            status.send(exit=code)
            for fd in (0, 1, 2, 4):   # the run is over for the runner: it need not wait
                os.close(fd)          # for the rest of our exit (the namespaces' teardown)
            os._exit(code)


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


def _find(name: str, env: dict) -> str:
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


def _exec_failed(cfg: dict, argv: list[str], err: OSError, status: Status) -> None:
    if err.errno == errno.ENOENT:
        message = (f"{argv[0]}: not found in the container"
                   + ("; with --rootfs, give a command the root has (such as sh)"
                      if cfg["python_cell"] and cfg["custom_root"] else
                      "; check the name and PATH"))
        code = EXIT_NOT_FOUND
    else:
        message = f"{argv[0]}: cannot be executed in the container: {err.strerror.lower()}"
        code = EXIT_NOT_EXECUTABLE
    status.send(error=message, code=code)
    os._exit(code)


def _kill_group(pid: int, sig: int) -> None:
    for target in (-pid, pid):   # its process group first (a shell pipeline), then itself
        try:
            os.kill(target, sig)
        except OSError:
            pass
