"""The runner's side of bridged networks: ask the network helper (netd.py) to attach a PID 1,
starting the helper when none of this version runs. Stdlib only, and cheap: pyroute2 is the
helper's, never the runner's.

The runner does not wait for the network: the helper gets PID 1's control socket with the
request and tells PID 1 itself when eth0 is ready (or why it cannot be). The answer (address,
veth, ports) is read when the runner first needs it:

    pending = client.attach(pid1, control, run_id, name, hostname, "bridge", ports, rate)
    pending.result()["ip"]      # waits for the helper's answer if it has not come yet
    client.settle()             # every exited PID 1 detached (tests, teardown.settle)"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import select
import socket
import subprocess
import sys
import threading

from ..errors import SetupError

START_TIMEOUT = 20.0
CODE = ("import sys; sys.path.insert(0, sys.argv[2]); from nsmagic.net.netd import main; "
        "main()")


class Connection:
    """This process's connection to the helper: requests go out at once, answers (in any
    thread's turn) are kept by their seq until asked for."""

    _current: Connection | None = None
    _guard = threading.Lock()

    def __init__(self):
        self.sock = _connect()
        self.lock = threading.Lock()
        self.answers: dict[int, dict] = {}
        self.seq = itertools.count(1)
        self.owner = os.getpid()
        self.broken = False

    @classmethod
    def get(cls, start: bool = True) -> Connection | None:
        with cls._guard:
            conn = cls._current
            if conn is None or conn.owner != os.getpid() or conn.broken or conn.closed():
                if not start:
                    return None
                conn = cls._current = cls()
            return conn

    def closed(self) -> bool:
        """The helper went away since the last answer (its end is closed: EOF is there)."""
        with self.lock:
            if self.answers or not select.select([self.sock], [], [], 0)[0]:
                return False
            try:
                return self.sock.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

    def send(self, message: dict, fds=()) -> int:
        with self.lock:
            seq = message["seq"] = next(self.seq)
            try:
                socket.send_fds(self.sock, [json.dumps(message).encode()], list(fds))
            except OSError:
                self.broken = True
                raise SetupError("the network helper (nsmagic-netd) went away; run it "
                                 "again.") from None
        return seq

    def answer(self, seq: int) -> dict:
        with self.lock:
            while seq not in self.answers:
                data = b""
                try:
                    data = self.sock.recv(1 << 20)
                except OSError:
                    pass
                if not data:
                    self.broken = True
                    return {"error": "the network helper (nsmagic-netd) went away before it "
                                     "answered; run it again."}
                reply = json.loads(data)
                self.answers[reply.pop("seq")] = reply
            return self.answers.pop(seq)


class Pending:
    """An attach sent; its answer read at the first result()."""

    def __init__(self, conn: Connection, seq: int):
        self.conn, self.seq, self._answer = conn, seq, None

    def result(self) -> dict:
        """The helper's answer; SetupError with its sentence if it could not attach."""
        if self._answer is None:
            self._answer = self.conn.answer(self.seq)
        if "error" in self._answer:
            raise SetupError(self._answer["error"])
        return self._answer


def attach(pid1, control: socket.socket, run_id: str, name: str, hostname: str,
           network: str, ports=(), rate: int | None = None) -> Pending:
    """Ask for PID 1 (a runtime.pid1.Pid1) to be attached to `network`; the helper tells
    PID 1 on `control` when it is. Returns at once."""
    netns = os.open(f"/proc/{pid1.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if not pid1.running():   # the pid may have been reused: the fd must be PID 1's
            raise SetupError("the container's PID 1 died before its network was set up.")
        message = {"op": "attach", "id": run_id, "name": name, "hostname": hostname,
                   "network": network, "pid": pid1.pid, "rate": rate,
                   "ports": [[p.host_ip, p.host_port, p.container_port, p.protocol]
                             for p in ports]}
        fds = [pid1.pidfd, netns, control.fileno()]
        conn = Connection.get()
        try:
            seq = conn.send(message, fds)
        except SetupError:   # the helper this process knew went away: a new one, once
            conn = Connection.get()
            seq = conn.send(message, fds)
    finally:
        os.close(netns)
    return Pending(conn, seq)


def settle(bridges: bool = False, started_elsewhere: bool = False) -> None:
    """Once every exited PID 1 is detached (and, with `bridges`, unused bridges are gone
    too, not at the end of their grace: a leak check wants them gone now). Nothing to do if
    this process never attached one, unless `started_elsewhere` (a test after a CLI's run):
    then a helper that runs is asked, and none is started."""
    message = {"op": "settle", "bridges": bridges}
    # A process that used a helper which went away (killed) starts a new one: its start
    # sweeps what the old one left (leases, veths, a bridge, rules).
    conn = Connection.get(start=Connection._current is not None
                          and Connection._current.owner == os.getpid())
    if conn is not None:
        conn.answer(conn.send(message))
    elif started_elsewhere:
        from .netd import socket_path
        sock = _try(socket_path())
        if sock is not None:
            with sock:
                sock.send(json.dumps({**message, "seq": 0}).encode())
                sock.recv(1 << 16)


def _connect() -> socket.socket:
    from .netd import socket_path
    path = socket_path()
    conn = _try(path)
    if conn is not None:
        return conn
    from .. import dirs
    lock = os.open(os.path.join(dirs.runtime(), "netd.lock"), os.O_RDWR | os.O_CREAT
                   | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)   # one starter at a time; the others then connect
        conn = _try(path)
        if conn is None:
            _start(dirs.runtime())
            conn = _try(path)
    finally:
        os.close(lock)
    if conn is None:
        raise SetupError("the network helper (nsmagic-netd) did not start; see "
                         f"{os.path.join(dirs.runtime(), 'netd.log')}.")
    return conn


def _try(path: str) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        conn.connect(path)
        return conn
    except OSError:
        conn.close()
        return None


def _start(runtime: str) -> None:
    """The helper in a session of its own, outliving this runner (it cleans up after it);
    returns once it listens. Its stderr goes to netd.log."""
    parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ready_r, ready_w = os.pipe()
    log = os.open(os.path.join(runtime, "netd.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND
                  | os.O_CLOEXEC, 0o600)
    try:
        helper = subprocess.Popen([sys.executable, "-c", CODE, str(ready_w), parent],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=log, pass_fds=(ready_w,), start_new_session=True,
                                  env=dict(os.environ))   # (a set_title wiped environ's C copy)
    except OSError as err:
        raise SetupError(f"can't start the network helper {sys.executable}: "
                         f"{err.strerror.lower()}") from err
    finally:
        os.close(ready_w)
        os.close(log)
    try:
        if not (select.select([ready_r], [], [], START_TIMEOUT)[0] and os.read(ready_r, 64)):
            raise SetupError("the network helper (nsmagic-netd) did not start; see "
                             f"{os.path.join(runtime, 'netd.log')}.")
    finally:
        os.close(ready_r)
        threading.Thread(target=helper.wait, daemon=True).start()   # reaped when it ends


__all__ = ["Pending", "attach", "settle"]
