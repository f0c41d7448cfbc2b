"""A run's PID 1, from the runner's side: the fork server that clones it (Zygote), the
handle it is watched through (Init), and what it is sent: its config and its stdio pipes.

The notebook kernel is never forked (it is large and multi-threaded): a small fork server
(zygote.py) is started once per process, and clones each run's PID 1 into its namespaces."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import threading
import weakref

from .. import cgroups
from ..errors import SetupError
from ..rootfs.plan import plan as plan_root
from ..spec import Spec
from . import child

ZYGOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zygote.py")
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8", "TERM": "xterm"}
# The runner's ends of PID 1s' pipes and sockets (file and socket objects, so a closed one
# is known as closed and its number never mistaken for a newer fd's): see forget_held_fds.
_HELD: weakref.WeakSet = weakref.WeakSet()


_ALIVE_R: int | None = None


class Zygote:
    """Client of the fork server. Started on first use, from a thread of its own that lives
    as long as the process: PDEATHSIG fires when the *thread* that forked a child exits."""

    _current: Zygote | None = None
    _lock = threading.Lock()
    # A small single-threaded process (the CLI) clones PID 1 itself: ~1 ms, and no fork
    # server to start. Never set in a notebook kernel: it is large and multi-threaded.
    fork_in_process = False

    def __init__(self):
        self.owner = os.getpid()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        started: list = []
        ready = threading.Event()

        def start_and_stay():
            try:
                import subprocess  # here: the CLI never starts a fork server
                started.append(subprocess.Popen(
                    [sys.executable, "-I", "-S", ZYGOTE, str(theirs.fileno()),
                     str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                    start_new_session=True, env={}))
            except OSError as err:
                started.append(err)
            ready.set()
            threading.Event().wait()          # park: this thread is the zygote's parent

        threading.Thread(target=start_and_stay, name="nsmagic-zygote", daemon=True).start()
        ready.wait()
        theirs.close()
        if isinstance(started[0], OSError):
            ours.close()
            raise SetupError(f"can't start the fork server {sys.executable}: "
                             f"{started[0].strerror.lower()}")
        self.process, self.sock = started[0], ours
        _HELD.add(ours)

    @classmethod
    def forget_in_child(cls) -> None:
        cls._lock, cls._current = threading.Lock(), None

    @classmethod
    def spawn(cls, config: dict, fds: list[int]) -> tuple[int, int]:
        """Clone one run's PID 1; returns its pid and a pidfd for it."""
        if cls.fork_in_process:
            global _ALIVE_R
            if _ALIVE_R is None:   # its writer is this process: EOF for PID 1 when we die
                _ALIVE_R, _ = os.pipe()
            pid = child.start(config, fds, _ALIVE_R)
            return pid, os.pidfd_open(pid)
        with cls._lock:
            for _attempt in (1, 2):
                z = cls._current
                if z is None or z.owner != os.getpid() or z.process.poll() is not None:
                    z = cls._current = cls()
                try:
                    socket.send_fds(z.sock, [json.dumps(config).encode()], fds)
                    data, pidfds, _, _ = socket.recv_fds(z.sock, 65536, 1)
                    reply = json.loads(data) if data else {}
                    if "error" in reply:
                        raise SetupError(reply["error"])
                    if pidfds:
                        return reply["pid"], pidfds[0]
                except OSError:
                    pass
                cls._current = None               # it died: start a new one, once
        raise SetupError("the nsmagic fork server died twice; run `nsmagic info` to see "
                         "what this machine allows.")


class Init:
    """A run's PID 1, watched through a pidfd (it is the zygote's child, not ours)."""

    def __init__(self, pid: int, pidfd: int, stdin=None, stdout=None, stderr=None):
        self.pid, self.pidfd = pid, pidfd
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.exited = False

    def wait(self, timeout: float | None = None) -> None:
        if not self.exited:
            if not select.select([self.pidfd], [], [], timeout)[0]:
                raise TimeoutError(f"nsmagic-init still runs after {timeout} s")
            self.exited = True

    def poll(self) -> bool:
        """True while it runs."""
        try:
            self.wait(0)
        except TimeoutError:
            return True
        return False

    def send_signal(self, sig: int) -> None:
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        for f in (self.stdin, self.stdout, self.stderr):
            if f:
                try:
                    f.close()
                except OSError:
                    pass
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
            if Zygote.fork_in_process:     # our own child: reap it
                try:
                    os.waitpid(self.pid, 0)
                except ChildProcessError:
                    pass


def run_config(spec: Spec, hostname: str, rootless: bool, cgroup: cgroups.Cgroup | None,
               layout: cgroups.Layout) -> dict:
    """What PID 1 needs to build the container and start its workload (JSON)."""
    env = dict(BASE_ENV, HOSTNAME=hostname, PYTHONUNBUFFERED="1")
    env.update(dict(spec.env))
    return {
        "hostname": hostname,
        "network": spec.network,
        "rootless": rootless,
        "plan": plan_root(spec),
        "cgroup_procs": cgroup.procs_files() if cgroup else [],
        "cgroup_mounts": _cgroup_mounts(layout, cgroup) if cgroup else [],
        "argv": list(spec.command) if spec.command else [sys.executable, "-u", "-"],
        "env": [[k, v] for k, v in env.items()],
        "workdir": spec.workdir,
        "user": list(spec.user) if spec.user else None,
        "python_cell": spec.is_python_cell,
        "custom_root": spec.rootfs is not None,
        "unconfined": spec.unconfined,
        "profile": spec.profile,
    }


def stdio_pipes(stdin: bool, stdout: bool, stderr: bool) -> tuple[dict, list[int]]:
    """Pipes for the streams wanted (/dev/null for the others): our ends as unbuffered
    files by name, and the child's three fds in order."""
    ours, theirs = {}, []
    try:
        for name, wanted, mode in (("stdin", stdin, "wb"), ("stdout", stdout, "rb"),
                                   ("stderr", stderr, "rb")):
            if not wanted:
                theirs.append(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
                continue
            r, w = os.pipe2(os.O_CLOEXEC)
            mine, child_end = (w, r) if mode == "wb" else (r, w)
            ours[name] = os.fdopen(mine, mode, buffering=0)
            _HELD.add(ours[name])
            theirs.append(child_end)
    except BaseException:
        for f in ours.values():
            f.close()
        for fd in theirs:
            os.close(fd)
        raise
    return ours, theirs


def _cgroup_mounts(layout: cgroups.Layout, cgroup: cgroups.Cgroup) -> list[dict]:
    """What to mount at /sys/fs/cgroup inside: the hierarchies the run is in, each seen from
    the run's own group (its cgroup namespace). Others would show the host's whole tree."""
    if layout.kind == "v2":
        return [{"type": "cgroup2", "name": "", "options": ""}]
    joined = {layout.v1_mounts[c] for c in getattr(cgroup, "dirs", {}) if c in layout.v1_mounts}
    by_mount: dict[str, list[str]] = {}
    for controller, point in layout.v1_mounts.items():
        if not controller.startswith("name=") and point in joined:
            by_mount.setdefault(point, []).append(controller)
    return [{"type": "cgroup", "name": os.path.basename(p), "options": ",".join(c)}
            for p, c in sorted(by_mount.items())]


def forget_held_fds() -> None:
    """In a fork of the runner (multiprocessing's workers, say): a copy of a waiting
    interpreter's stdin there would keep the cell it gets from ever seeing its end. Each
    such fd becomes /dev/null in the child, so its file objects stay valid."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for held in list(_HELD):
        fd = -1 if getattr(held, "closed", False) else held.fileno()
        if fd >= 0:
            os.dup2(null, fd, inheritable=False)
    os.close(null)
