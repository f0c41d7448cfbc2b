"""PID 1 of a run: cloned straight into its namespaces by the fork server (zygote.py) or,
for the CLI, by the runner itself; never a fork of the notebook kernel.

Phase 1, possibly long before its run (a spare): fds in place, tie its life to its parent's,
map the user, join the cgroup, wait on the control socket.
Phase 2, the run: build the root (root.py, kernelfs.py), pivot into it, then workload.py
drops PID 1's own privileges to the workload's, spawns it, forwards signals and reaps.
A ready spare (a Python cell's container made ahead) does phase 2 at once, up to an
interpreter that waits for the cell on its stdin, then waits for "go".

Messages go to the runner as JSON lines on the status fd. Only the stdlib is imported here.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import os
import select
import signal
import socket
import time

from .. import config
from ..config import BootConfig, RunConfig
from ..errors import SetupError
from . import keep, kernelfs, linux, root, workload

EXIT_SETUP = 125
# Signals a runner may send to PID 1 (or a terminal to its process group) before PID 1 has
# dispositions of its own: held back over the clone, so that the runner's Python handler
# never runs in the child (a KeyboardInterrupt there would unwind the runner's code in PID 1).
HELD_BACK = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH}
# Networks whose interfaces the runner sets up while PID 1 builds the root: PID 1 waits for
# its word on the control socket before the workload starts (see _await_network).
NETWORK_SET_UP_BY_RUNNER = ("bridge", "pasta")
NETWORK_READY = b"network-ready"
NETWORK_FAILED = b"network-failed "   # and the sentence that says why
# PID 1's fds while it waits for its run: 0-2 a ready spare's stdio, then these.
CONTROL_FD, STATUS_FD, PARENT_ALIVE_FD = 3, 4, 5


class Status:
    """JSON lines to the runner: marks (--profile), ready, error, exit."""

    def __init__(self, fd: int):
        self.fd = fd
        self.mark = lambda step: None

    def send(self, **message) -> None:
        data = (json.dumps(message) + "\n").encode()
        try:
            os.write(self.fd, data)   # short JSON lines: one write, atomic on a pipe
        except OSError:
            pass

    def profile(self, enabled: bool) -> None:
        """--profile: timestamps (CLOCK_MONOTONIC, the same clock in every process) per step."""
        if enabled:
            self.mark = lambda name: self.send(mark=[name, time.monotonic()])


def namespace_flags(boot: BootConfig) -> int:
    if boot.unconfined:
        return 0
    flags = linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC | linux.CLONE_NEWPID
    if boot.network in ("private", "none"):   # see net/modes.py: "host" keeps the host's,
        flags |= linux.CLONE_NEWNET            # "join" takes another's when its run comes
    if boot.rootless:
        flags |= linux.CLONE_NEWUSER
    return flags


def start(boot: BootConfig, fds: list[int], parent_alive: int) -> tuple[int, int]:
    """In the fork server (or the CLI): clone a PID 1 into new namespaces and its cgroup;
    returns its pid and a pidfd (taken by clone itself, so a PID 1 that dies at once and
    is reaped at once still has one). PID 1 then waits for its run (see _become_init).

    `fds` are the control socket (the run's config and stdio arrive there) and the status
    pipe, then a ready spare's stdin, stdout and stderr; `parent_alive` is the read end of a
    pipe whose writer is the caller, so PID 1 can tell whether the caller died early."""
    cgroup_fd = _open_cgroup_dir(boot.cgroup_dir)
    joined = cgroup_fd is not None
    held = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_BACK)
    pid = -1
    try:
        try:
            pid, pidfd = linux.clone(namespace_flags(boot), cgroup_fd)
        except OSError as err:
            if cgroup_fd is None or err.errno not in (errno.ENOSYS, errno.EINVAL, errno.E2BIG):
                raise
            joined = False     # an older kernel: PID 1 writes its cgroup.procs
            pid, pidfd = linux.clone(namespace_flags(boot))
    except OSError as err:
        raise SetupError(f"can't create namespaces (pid, mount, uts, ipc, net"
                         f"{', user' if boot.rootless else ''}): {_clone_hint(err)}; "
                         "or pass --unconfined to run without isolation") from err
    finally:
        if cgroup_fd is not None:
            os.close(cgroup_fd)
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    if pid == 0:
        _become_init(boot, fds, parent_alive, joined, held)
    return pid, pidfd


def _clone_hint(err: OSError) -> str:
    """EPERM under a seccomp filter is the filter's doing (a pod's RuntimeDefault), not the
    user namespace sysctl's."""
    try:
        with open("/proc/self/status") as f:
            filtered = any(line.split() == ["Seccomp:", "2"] for line in f)
    except OSError:
        filtered = False
    if err.errno == errno.EPERM and filtered:
        return ("not permitted: a seccomp filter on this process refuses it (a pod's "
                "seccompProfile RuntimeDefault, or Docker's default profile); the pod needs "
                "Unconfined or a profile that allows them (docs/kubernetes.md)")
    return root.hint(err)


def _open_cgroup_dir(path: str | None) -> int | None:
    """v2: a PID 1 is born in its group (clone3 CLONE_INTO_CGROUP, 5.7+)."""
    if not path:
        return None
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def _become_init(boot: BootConfig, fds: list[int], parent_alive: int, joined: bool,
                 held: set) -> None:
    """The clone()d child. Never returns."""
    gc.disable()   # its pages are the fork server's until written; its garbage goes at exit
    status = Status(STATUS_FD)
    try:
        _settle_fds(fds, parent_alive)
        _tie_to_parent(held)
        if boot.rootless and not boot.unconfined:
            _map_root_to_caller(boot.uid, boot.gid)
        late = () if joined or not boot.cgroup_dir else (f"{boot.cgroup_dir}/cgroup.procs",)
        _join_cgroup(boot.cgroup_procs + late)
        control = socket.socket(fileno=CONTROL_FD)
        if boot.run is not None:          # a ready spare: its run came with its boot
            status.profile(True)           # the runner keeps the marks if it wants them
            status.mark("PID 1 cloned, cgroup joined")
            _init(boot.run, status, go=control)
        cfg, fds = config.receive(control, RunConfig, max_fds=4)
        if cfg is None:
            os._exit(0)                    # a spare the runner no longer needs
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
            os.close(fd)
        status.profile(cfg.profile)
        status.mark("run config received")
        if cfg.network == "container":     # another container's network namespace
            _join_network(fds[3:])
        if cfg.network not in NETWORK_SET_UP_BY_RUNNER:
            control.close()
            control = None
        _init(cfg, status, network=control)
    except SetupError as err:
        status.send(error=str(err), code=EXIT_SETUP)
    except BaseException as err:  # noqa: BLE001 - a PID 1 must never print a traceback
        status.send(error=unexpected(err), code=EXIT_SETUP)
    finally:
        os._exit(EXIT_SETUP)


def unexpected(err: BaseException) -> str:
    """A sentence for a failure no setup step named (a step's own is a SetupError): the
    system's words and the path, not a Python repr."""
    if isinstance(err, OSError):
        where = f" ({err.filename})" if err.filename else ""
        what = (err.strerror or str(err)).lower() + where
    else:
        what = str(err) or type(err).__name__
    return (f"container setup failed: {what}; run `nsmagic info` to see what this machine "
            "allows, and report it if that shows nothing missing.")


def _settle_fds(fds: list[int], parent_alive: int) -> None:
    """Out of the way first (a target number may be one of the sources), then into place;
    everything else of the fork server's is closed."""
    control_fd, status_fd, *stdio = fds
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)
            for fd in (control_fd, status_fd, parent_alive, *stdio)]
    for target, fd in zip((CONTROL_FD, STATUS_FD, PARENT_ALIVE_FD, 0, 1, 2), high):
        os.dup2(fd, target)
    os.closerange(PARENT_ALIVE_FD + 1, 1 << 16)


def _tie_to_parent(held: set) -> None:
    """Die with the fork server (which dies with the runner); EOF on the parent-alive pipe
    means it died before PDEATHSIG was set. getppid() is no help: it reads 0 in a new PID
    namespace. Then the signals held back over the clone get their default dispositions
    (workload.py forwards them once there is a workload), and come through."""
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if select.select([PARENT_ALIVE_FD], [], [], 0)[0]:
        os._exit(EXIT_SETUP)
    os.close(PARENT_ALIVE_FD)
    os.setsid()
    for sig in (signal.SIGCHLD, *HELD_BACK):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, held)
    linux.set_name("nsmagic-spare")
    linux.set_title("nsmagic-spare")   # not the cloned runner's command line and environment


def _map_root_to_caller(uid: int, gid: int) -> None:
    """Root inside, the calling user outside: a one-line map a process may write itself."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _join_cgroup(procs_files: tuple[str, ...]) -> None:
    """v1: "0" into each hierarchy's `tasks` moves this thread alone (PID 1 has no other),
    which spares the RCU grace period every cgroup.procs write waits for (1-10 ms here)."""
    for path in procs_files:
        try:
            with open(path, "w") as f:
                f.write("0")
        except OSError as err:
            raise SetupError(f"can't join the cgroup {os.path.dirname(path)}: "
                             f"{err.strerror.lower()}") from err


def _join_network(fds: list[int]) -> None:
    """--network container:NAME: the runner sent that container's network namespace."""
    if not fds:
        raise SetupError("the run's configuration came without the network namespace to "
                         "join.")
    try:
        linux.setns(fds[0], linux.CLONE_NEWNET)
    except OSError as err:
        raise SetupError(f"can't join the other container's network: {root.hint(err)}; "
                         "a container without root can join only its own.") from err
    finally:
        os.close(fds[0])


def _await_network(control: socket.socket) -> None:
    """The network helper made eth0 (its address, route, rate limit) while the root was
    built; nothing of the workload runs before it says so."""
    word = control.recv(4096)
    control.close()
    if word.startswith(NETWORK_FAILED):
        raise SetupError(word[len(NETWORK_FAILED):].decode(errors="replace"))
    if word != NETWORK_READY:
        raise SetupError("the network helper (nsmagic-netd) went away before the container's "
                         "network was set up; run it again.")


def _init(cfg: RunConfig, status: Status, go: socket.socket | None = None,
          network: socket.socket | None = None) -> None:
    """PID 1: set the container up, then run the workload (see workload.run). With `go` (a
    ready spare), it waits there for the run once the workload is started; with `network`,
    for the runner's word that the network is set up before it starts."""
    # A ready spare's cell runs as soon as the runner says "go": its command line is the
    # run's from now on; its name (what `nsmagic ps` tells spares by) changes once taken.
    linux.set_title("nsmagic-init")
    if go is None:
        linux.set_name("nsmagic-init")
    linux.prctl(linux.PR_SET_DUMPABLE, 0)   # no /proc/1/exe for the workload (CVE-2019-5736)
    if not cfg.unconfined:
        _build_container(cfg, status)
    if network is not None:
        _await_network(network)
        status.mark("network set up (runner)")
    workload.run(cfg, status, go)


def _build_container(cfg: RunConfig, status: Status) -> None:
    # --- cgroup (joined in phase 1): a cgroup namespace makes it look like the root inside
    if cfg.cgroup_namespace:
        root.step("create", "a cgroup namespace", linux.unshare, linux.CLONE_NEWCGROUP)
    # --- root file system. Sources are opened in this mount namespace (overlay refuses a
    # lower layer from another one) and before the scratch tmpfs covers /tmp.
    fds = root.open_sources(cfg.plan)
    try:
        new_root = root.build(cfg.plan, fds, cfg.rootless)
    finally:
        fds.close()
    status.mark("overlay root built")
    root.write_identity(new_root, cfg.plan, cfg.hostname)
    kernelfs.mount_all(new_root, cfg.rootless, cfg.cgroup_mounts)
    status.mark("/proc /dev /sys mounted")
    if cfg.plan.read_only:
        root.make_read_only(new_root, cfg.plan)
    root.enter(new_root)
    status.mark("pivot_root done")
    if new_root.keep:   # forked with PID 1's privileges, before it drops them
        keep.start(*new_root.keep, "user.overlay.opaque" if cfg.rootless
                   else "trusted.overlay.opaque")
    # --- host name and network
    root.step("set the host name", cfg.hostname, socket.sethostname, cfg.hostname)
    if cfg.network in ("none", "bridge", "pasta"):   # a namespace of its own
        root.step("bring up", "lo", linux.loopback_up)
    status.mark("hostname and lo set")
