"""`exec` from the runner's side: a process in a running container (the kernel's or the
CLI's own child `nsmagic-exec`, inside/enter.py, joins its namespaces and cgroup), followed
like any run: its stdin fed, its output streamed, the container's cgroup sampled.

    e = Exec(record, ["ps", "-e"], out=sys.stdout, err=sys.stderr).start()
    e.wait(); e.close()

An Exec is a Run whose container belongs to someone else: stopping it signals its own
process only, and closing it never touches the container's cgroup."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from .. import cgroups, config
from ..config import NAMESPACES, ExecConfig
from ..errors import NsmagicError
from ..runtime import stdio
from ..runtime.launcher import Run
from ..runtime.pid1 import Pid1
from ..runtime.runconfig import seccomp_filter
from ..spec import Spec
from . import records

ENTER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "inside",
                     "enter.py")


def container_spec(record: dict) -> Spec:
    """The spec the container was run with (its options and image, as given to `run -d`)."""
    from ..spec import build_parser
    args = build_parser(prog="nsmagic run", face="cli").parse_args(
        list(record.get("argv") or ["--", "true"]))
    return Spec.from_run_args(args)


class Exec(Run):
    def __init__(self, record: dict, argv: list[str], out=None, err=None, *,
                 script: str | None = None, env=(), user=None, workdir: str | None = None,
                 tty: bool = False, stdin: bool = False, interval: float | None = None,
                 python_cell: bool = False):
        base = container_spec(record)
        spec = base.replace(command=tuple(argv), script=script, interval=interval,
                            name=record["name"], timeout=None)
        super().__init__(spec, out, err)
        self.record, self.tty, self.python_cell = record, tty, python_cell
        self.env = tuple({**dict(map(tuple, record.get("env") or ())), **dict(env)}.items())
        self.user = user if user is not None else base.user
        self.workdir = workdir or base.workdir or "/"
        self.id, self.name = record["id"][:12], record["name"]
        self.terminal: int | None = None        # tty: our end (the pty's master)
        self._stdin = stdin or script is not None

    def start(self) -> Exec:
        record = self.record
        if records.status(record) != "running":
            raise NsmagicError(f"the container {record['name']} is not running; start it "
                               f"with `nsmagic start {record['name']}`.")
        self.cgroup = _group(record)
        names, fds = _namespaces(record)
        status_r = status_w = None
        try:
            cfg = ExecConfig(self.spec.command, self.env, self.workdir, self.user, names,
                             cgroup_files(record["pid"]),
                             tty=self.tty, seccomp=seccomp_filter(self.spec)[0],
                             python_cell=self.python_cell)
            ours, theirs = self._stdio()
            status_r, status_w = os.pipe2(os.O_CLOEXEC)
            self.pid1 = self._spawn(cfg, [status_w, *theirs, *fds]).with_stdio(**ours)
            self.status_fd, status_r = status_r, None
            for fd in theirs:
                os.close(fd)
        finally:
            for fd in (*fds, status_w, status_r):
                if fd is not None:
                    os.close(fd)
        import time
        self.started = time.monotonic()
        if self.tty:
            self._receive_terminal()
        return self

    def _stdio(self) -> tuple[dict, list[int]]:
        """Pipes; with a terminal, a socket as stdin, where the pseudo-terminal made inside
        (of the container's devpts) is sent back (see _receive_terminal)."""
        if not self.tty:
            return stdio.pipes(self._stdin, *self._wants_stdio)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._console = ours
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        return {}, [os.dup(theirs.detach()), null, os.dup(null)]

    def _receive_terminal(self) -> None:
        import select
        with self._console:
            readable = select.select([self._console, self.status_fd], [], [], 30)[0]
            if self._console in readable:
                _, fds, _, _ = socket.recv_fds(self._console, 16, 1)
                if fds:
                    self.terminal = fds[0]
                    return
        self.wait()
        raise NsmagicError(self.error or "exec got no terminal from inside the container.")

    def _spawn(self, cfg: ExecConfig, fds: list[int]) -> Pid1:
        """nsmagic-exec, in a session of its own (a terminal's Ctrl-C is the runner's to
        pass on); it gets the config and fds on a socket."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-S", ENTER, str(theirs.fileno()),
                                     str(os.getpid())],
                                    pass_fds=(theirs.fileno(),), start_new_session=True,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env={})
            theirs.close()
            pidfd = os.pidfd_open(proc.pid)
            proc.returncode = 0     # ours to reap (Pid1.close), not Popen's
            config.send(ours, cfg, fds)
        finally:
            ours.close()
            theirs.close()
        return Pid1(proc.pid, pidfd, own_child=True)

    def kill_all(self) -> None:
        """Its own process only: the container is not this run's to kill."""
        self.signal(9)

    def close(self) -> None:
        if self.pid1 is not None:
            if self.pid1.running() and not self.reported:
                self.kill_all()
            self.pid1.close()
            self.pid1 = None
        for fd in (self.status_fd, self.terminal):
            if fd is not None:
                os.close(fd)
        self.status_fd = self.terminal = None
        if self.cgroup is not None:
            self.cgroup.close()   # the read-only handle: the group is the container's
            self.cgroup = None


def _group(record: dict) -> cgroups.Cgroup | None:
    for cg in cgroups.running():
        if cg.name == record.get("cgroup"):
            return cg
        cg.close()
    return None


def python_in(record: dict) -> list[str]:
    """The interpreter for a Python cell in the container: the kernel's own where the
    container shows it (it was started as a Python cell, or binds the venv), else the
    container's python3. Looked up inside its root, by the kernel (openat2 IN_ROOT)."""
    from ..inside import linux
    root = os.open(f"/proc/{record['pid']}/root", os.O_PATH | os.O_CLOEXEC)
    try:
        fd = linux.openat2(root, sys.executable.lstrip("/"), os.O_PATH,
                           linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS)
        os.close(fd)
        found = sys.executable
    except OSError:
        found = "python3"
    finally:
        os.close(root)
    return [found, "-u", "-"]


def cgroup_files(pid: int) -> tuple[str, ...]:
    """The cgroup.procs of every group the container's PID 1 is in, in every hierarchy
    (v1's, a hybrid host's cgroup2, a named one): an exec'd process joins them all."""
    layout = cgroups.detect()
    found = []
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            number, controllers, path = line.rstrip("\n").split(":", 2)
            mount = (layout.v2_mount if number == "0" else
                     next((layout.v1_mounts[c] for c in controllers.split(",")
                           if c in layout.v1_mounts), None))
            procs = os.path.join(mount or "/nonexistent", path.lstrip("/"), "cgroup.procs")
            if mount and os.path.exists(procs):
                found.append(procs)
    return tuple(found)


def _namespaces(record: dict) -> tuple[tuple[str, ...], list[int]]:
    """The container's namespaces to join, as fds opened from its PID 1 (a user namespace
    only where it has one of its own: a rootless container)."""
    names, fds = [], []
    try:
        for name in NAMESPACES:
            fd = records.namespace(record, name)
            if name == "user" and os.fstat(fd).st_ino == os.stat("/proc/self/ns/user").st_ino:
                os.close(fd)
                continue
            names.append(name)
            fds.append(fd)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return tuple(names), fds
