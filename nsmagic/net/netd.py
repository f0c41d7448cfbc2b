"""The network helper, `nsmagic-netd`: one process per user (and per version of this code)
that holds pyroute2 imported and does every netlink step of container networks, so that a
run's start never pays the ~300 ms import. A runner (a notebook kernel, the CLI, a detached
container's monitor) asks it to attach a PID 1; it answers with the address.

It watches each attached PID 1 through a pidfd: when one exits, its veth, lease, published
ports and (when it was the last on its network) the bridge, NAT rules and the forwarding
switch go, whoever started it and however that runner ended (SIGKILL included). It starts
with a sweep of what an earlier helper left (a lease of a dead PID 1, a bridge no one uses),
adopts leases whose PID 1 still runs, and exits once it has had nothing attached and no
runner connected for NSMAGIC_NETD_LINGER seconds (default 120).

The runner does not wait for it: with the attach request comes PID 1's control socket, and
the helper itself tells PID 1 that its network is ready (or why it is not), while the runner
goes on (starting the next container, say). The runner reads the answer when it needs it.

Protocol: SOCK_SEQPACKET, one JSON object per message, fds by SCM_RIGHTS; every answer
carries its request's "seq".
    {"op": "attach", "seq", "id", "name", "hostname", "network", "ports": [[ip, hport,
     cport, proto]...], "rate"} with PID 1's pidfd, netns fd and control socket
        -> {"ip", "gateway", "prefix", "veth", "bridge", "mac", "ports"} or {"error"}
    {"op": "settle", "seq", "bridges"} -> {} once every PID 1 that has exited is detached
        (and with "bridges", unused bridges removed now, not at the end of their grace)
    {"op": "ping", "seq"} -> {"pid"}"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
import zlib
from dataclasses import dataclass, field

# An unused bridge stays this long for the next container (a notebook's cells come one
# after another: each would remake it, and its NAT rules), or until a settle request.
BRIDGE_GRACE = 2.0
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("net/netd.py", "net/links.py", "net/nat.py", "net/ipam.py", "net/networks.py",
           "net/hosts.py", "net/ports.py", "dirs.py", "inside/linux.py")


def fingerprint() -> str:
    """The code's version: a helper serves runners of its own version only."""
    crc = 0
    for rel in SOURCES:
        with open(os.path.join(PACKAGE, rel), "rb") as f:
            crc = zlib.crc32(f.read(), crc)
    return f"{crc:08x}"


def socket_path() -> str:
    from .. import dirs
    return os.path.join(dirs.runtime(), f"netd-{fingerprint()}.sock")


@dataclass
class Attached:
    run_id: str
    network: object           # networks.Network
    ip: str
    veth: str
    pidfd: int
    ports: list = field(default_factory=list)          # ports.Port, host ports as bound
    reservations: list = field(default_factory=list)   # sockets holding the host ports


class Daemon:
    def __init__(self, listener: socket.socket, linger: float):
        from .links import Links
        self.listener, self.linger = listener, linger
        self.links = Links()
        self.attached: dict[int, Attached] = {}     # by pidfd
        self.clients: list[socket.socket] = []
        self.unused: dict[str, tuple[object, float]] = {}   # bridges due for removal
        self.idle_since = time.monotonic()

    # --- the loop

    def serve(self) -> None:
        self.sweep()
        while True:
            ready = select.select([self.listener, *self.clients, *self.attached], [], [],
                                  self._timeout())[0]
            if not ready and self._idle():
                return
            for item in ready:
                if item is self.listener:
                    self._accept()
                elif isinstance(item, socket.socket):
                    self._serve_client(item)
            self.reap()   # after the requests: one may have reaped (settle) or reused an fd
            self.remove_unused()

    def _timeout(self) -> float:
        due = min([self.idle_since + self.linger, *(t for _, t in self.unused.values())])
        return max(0.05, due - time.monotonic())

    def _idle(self) -> bool:
        if self.attached or self.clients or self.unused:
            self.idle_since = time.monotonic()
            return False
        return time.monotonic() >= self.idle_since + self.linger

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        if _peer_uid(client) != os.geteuid():
            client.close()     # only this user's runners (the directory is private anyway)
            return
        self.clients.append(client)

    def _serve_client(self, client: socket.socket) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(client, 65536, 4)
        except OSError:
            data, fds = b"", []
        if not data:
            self.clients.remove(client)
            client.close()
            self.idle_since = time.monotonic()
            return
        request = {}
        try:
            request = json.loads(data)
            reply = self.handle(request, fds)
        except Exception as err:  # noqa: BLE001 - the helper serves on whatever one request did
            reply = {"error": _sentence(err)}
        finally:
            for fd in fds:
                os.close(fd)
        reply["seq"] = request.get("seq")
        with contextlib.suppress(OSError):
            client.send(json.dumps(reply).encode())

    def handle(self, request: dict, fds: list[int]) -> dict:
        op = request.get("op")
        if op == "attach":
            return self.attach_and_tell(request, *fds[:3])
        if op == "settle":
            self.reap()
            self.remove_unused(at_once=bool(request.get("bridges")))
            return {}
        if op == "ping":
            return {"pid": os.getpid()}
        return {"error": f"the network helper does not know {op!r}"}

    def reap(self) -> None:
        """Detach every PID 1 that has exited (a settle waits for this)."""
        for pidfd in select.select(list(self.attached), [], [], 0)[0]:
            self.detach(self.attached.pop(pidfd))

    # --- attach and detach

    def attach_and_tell(self, request: dict, pidfd: int, netns_fd: int,
                        control_fd: int) -> dict:
        """Attach, then say so to PID 1 on its control socket: ready, or why not."""
        from ..inside.init import NETWORK_FAILED, NETWORK_READY
        control = socket.socket(fileno=os.dup(control_fd))
        try:
            reply = self.attach(request, pidfd, netns_fd)
            word = NETWORK_READY
        except Exception as err:  # noqa: BLE001 - every failure is PID 1's to report
            reply = {"error": _sentence(err)}
            word = NETWORK_FAILED + reply["error"].encode()
        with contextlib.suppress(OSError):
            control.send(word)
        control.close()
        return reply

    def attach(self, request: dict, pidfd: int, netns_fd: int) -> dict:
        from . import ipam, networks
        from .ports import Port
        network = networks.get(request["network"])
        veth = "nsm" + request["id"][:12]
        ports = [Port(*p) for p in request.get("ports", ())]
        held = dict(run_id=request["id"], name=request["name"],
                    hostname=request["hostname"], pid=request["pid"], veth=veth)
        att = Attached(request["id"], network, "", veth, os.dup(pidfd))
        self.unused.pop(network.name, None)
        try:
            with ipam.Leases(network) as leases:
                att.ip = leases.allocate(ipam.holder(**held))
                made = self.links.ensure_bridge(network)
            att.reservations, att.ports = reserve(ports)
            if att.ports:
                self._record_ports(att)
            mac = self.links.attach(network, veth, netns_fd, att.ip, request.get("rate"))
            self.write_hosts(network)   # before the workload starts: it may look itself up
            if made or att.ports:
                self.sync_rules()
        except BaseException:
            self.detach(att)
            raise
        self.attached[att.pidfd] = att
        return {"ip": att.ip, "gateway": network.gateway, "prefix": network.prefix,
                "veth": veth, "bridge": network.bridge, "mac": mac,
                "ports": [[p.host_ip, p.host_port, p.container_port, p.protocol]
                          for p in att.ports]}

    def _record_ports(self, att: Attached) -> None:
        from . import ipam
        with ipam.Leases(att.network) as leases:
            for holder in leases.leases.values():
                if holder.get("id") == att.run_id:
                    holder["ports"] = [[p.host_ip, p.host_port, p.container_port, p.protocol]
                                       for p in att.ports]
            leases.save()

    def detach(self, att: Attached) -> None:
        """Everything of one attachment goes; safe on a half-made one."""
        from . import ipam
        with contextlib.suppress(Exception):
            self.links.remove(att.veth)
        for sock in att.reservations:
            sock.close()
        with contextlib.suppress(Exception):
            with ipam.Leases(att.network) as leases:
                leases.release(att.run_id)
                if not leases.leases:
                    self.unused[att.network.name] = (att.network,
                                                     time.monotonic() + BRIDGE_GRACE)
        with contextlib.suppress(Exception):
            self.write_hosts(att.network)
        if att.ports:
            with contextlib.suppress(Exception):
                self.sync_rules()
        os.close(att.pidfd)

    def remove_unused(self, at_once: bool = False) -> None:
        """Bridges with no container left (for BRIDGE_GRACE), and then their rules."""
        from . import ipam
        now, removed = time.monotonic(), False
        for name, (network, due) in list(self.unused.items()):
            if due > now and not at_once:
                continue
            del self.unused[name]
            with contextlib.suppress(Exception):
                with ipam.Leases(network) as leases:
                    if not leases.leases:
                        self.links.remove_bridge(network)
                        removed = True
        if removed:
            with contextlib.suppress(Exception):
                self.sync_rules()

    def _release_stale(self, network, leases) -> None:
        stale = leases.stale()
        for ip, holder in stale.items():
            del leases.leases[ip]
            with contextlib.suppress(Exception):
                self.links.remove(holder.get("veth", ""))
        if stale:
            leases.save()

    # --- what spans networks: hosts files, rules, forwarding

    def write_hosts(self, network) -> None:
        from . import hosts, ipam
        with ipam.Leases(network) as leases:   # a crash's stale lease is swept at start
            text = hosts.text(leases.leases)
        hosts.write(network.hosts_file, text)

    def sync_rules(self) -> None:
        """NAT and filter rules for every nsmagic bridge there is, and ip_forward on while
        there is one (restored to what it was once none is left)."""
        from . import ipam, nat, networks
        bridges, published = [], []
        out = self.links.default_route()
        for network in networks.all_networks():
            if self.links.index(network.bridge) is None:
                continue
            bridges.append(nat.Bridge(network.bridge, network.subnet, out))
            with ipam.Leases(network) as leases:
                for ip, holder in leases.live().items():
                    published += [nat.Published(h_ip, h_port, proto, ip, c_port)
                                  for h_ip, h_port, c_port, proto in holder.get("ports", ())]
        nat.sync(bridges, published)
        forwarding(bool(bridges))

    def sweep(self) -> None:
        """At start: adopt live leases, release stale ones, remove unused bridges."""
        from . import ipam, networks
        from .ports import Port
        for network in networks.all_networks():
            with ipam.Leases(network) as leases:
                self._release_stale(network, leases)
                for ip, holder in leases.leases.items():
                    pidfd = _pidfd(holder)
                    if pidfd is not None:
                        att = Attached(holder["id"], network, ip, holder["veth"], pidfd,
                                       [Port(*p) for p in holder.get("ports", ())])
                        self.attached[pidfd] = att
                if not leases.leases:
                    self.links.remove_bridge(network)
            self.write_hosts(network)
        self.sync_rules()


def reserve(ports: list) -> tuple[list, list]:
    """Hold each published host port with a bound socket, as Docker's proxy does: a port in
    use says so now, and no program of the host takes it while it is published. Port 0
    asks the kernel for a free one."""
    from ..errors import NsmagicError
    from .ports import Port
    held, bound = [], []
    try:
        for port in ports:
            kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
            sock = socket.socket(socket.AF_INET, kind)
            held.append(sock)
            try:
                sock.bind((port.host_ip or "0.0.0.0", port.host_port))
            except OSError as err:
                raise NsmagicError(
                    f"-p {port.host_ip + ':' if port.host_ip else ''}{port.host_port}:"
                    f"{port.container_port}/{port.protocol}: the host's port "
                    f"{port.host_port} is "
                    + ("in use by another program or container" if err.errno == 98 else
                       err.strerror.lower())
                    + "; choose another host port.") from None
            bound.append(Port(port.host_ip, sock.getsockname()[1], port.container_port,
                              port.protocol))
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held, bound


def forwarding(on: bool) -> None:
    """net.ipv4.ip_forward: on while an nsmagic bridge exists (containers' traffic is routed
    through the host); put back as it was after, the old value kept in a file meanwhile."""
    from .. import dirs
    saved = os.path.join(dirs.runtime(), "ip_forward.saved")
    switch = "/proc/sys/net/ipv4/ip_forward"
    with contextlib.suppress(OSError):
        if on and not os.path.exists(saved):
            with open(switch) as f:
                before = f.read().strip()
            with open(saved, "w") as f:
                f.write(before)
            with open(switch, "w") as f:
                f.write("1")
        elif not on and os.path.exists(saved):
            with open(saved) as f:
                before = f.read().strip()
            with open(switch, "w") as f:
                f.write(before)
            os.unlink(saved)


def _pidfd(holder: dict) -> int | None:
    """A pidfd of a lease's PID 1, if it is still that process."""
    from .. import dirs
    pid = holder.get("pid", 0)
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if holder.get("boot") == dirs.boot_id() and dirs.start_time(pid) == holder.get("start"):
        return fd
    os.close(fd)
    return None


def _peer_uid(sock: socket.socket) -> int:
    import struct
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _sentence(err: BaseException) -> str:
    from ..errors import NsmagicError
    if isinstance(err, NsmagicError):
        return str(err)
    if isinstance(err, OSError):
        return f"can't set up the container's network: {(err.strerror or str(err)).lower()}"
    return f"can't set up the container's network: {type(err).__name__}: {err}"


def _forget_dead_helpers(mine: str) -> None:
    """Sockets of helpers of other versions of the code that were killed (a helper that
    exits removes its own): nothing listens on them. Only old ones: a helper just started
    binds a moment before it listens."""
    import glob
    import time
    for path in glob.glob(os.path.join(os.path.dirname(mine), "netd-*.sock")):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            if path == mine or time.time() - os.lstat(path).st_mtime < 60:
                continue
            probe.connect(path)
        except ConnectionRefusedError:
            with contextlib.suppress(OSError):
                os.unlink(path)
        except OSError:
            pass
        finally:
            probe.close()


def main() -> None:
    """`python -c ... main() READY_FD`: the listening socket first (runners that come
    meanwhile queue on it), a line on READY_FD, then pyroute2's import and the loop."""
    from ..inside import linux
    linux.set_name("nsmagic-netd")
    linux.set_title("nsmagic-netd")
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    path = socket_path()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener.bind(path)
    listener.listen(128)
    _forget_dead_helpers(path)
    if len(sys.argv) > 1:
        ready = int(sys.argv[1])
        os.write(ready, b"ready\n")
        os.close(ready)
    try:
        Daemon(listener, float(os.environ.get("NSMAGIC_NETD_LINGER", "120"))).serve()
    finally:   # no new runner may connect to a helper on its way out
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(listener.fileno()).st_ino:
                os.unlink(path)
        listener.close()
