"""Addresses for containers: one lease file per network (<network dir>/leases.json), read
and written only under an exclusive lock (flock on <network dir>/lock, which the kernel
releases if its holder dies), replaced whole by rename: a crash leaves the old file or the
new one, never half of either.

A lease names its holder: the run's PID 1 by pid, start time and boot id (a pid alone is
reused), and its veth. A lease whose PID 1 is gone and whose veth is gone is stale: the next
allocation (or the network helper's sweep) releases it. So an address is never handed out
while anything still uses it, and none is lost to a crash. Addresses are handed out
round-robin, so a just-freed one is not reused at once (other containers' ARP caches may
still name its old owner). Stdlib only."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os

from .. import dirs
from ..errors import NsmagicError
from .networks import Network


class Leases:
    """The lease file of one network, locked for the `with` block."""

    def __init__(self, network: Network):
        self.network = network
        self.path = os.path.join(network.directory, "leases.json")
        self._fd: int | None = None
        self.data: dict = {}

    def __enter__(self) -> Leases:
        self._fd = os.open(os.path.join(self.network.directory, "lock"),
                           os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            with open(self.path) as f:
                self.data = json.load(f)
        except FileNotFoundError:
            self.data = {}
        except ValueError:   # unreadable: every address then looks free, so say so instead
            self.__exit__()
            raise NsmagicError(f"the lease file {self.path} is garbled; stop the network's "
                               "containers and remove it.") from None
        self.data.setdefault("leases", {})
        self.data.setdefault("next", 0)
        return self

    def __exit__(self, *_exc) -> None:
        if self._fd is not None:
            os.close(self._fd)   # releases the lock
            self._fd = None

    @property
    def leases(self) -> dict[str, dict]:
        return self.data["leases"]

    def save(self) -> None:
        staged = f"{self.path}.{os.getpid()}"
        with open(staged, "w") as f:
            json.dump(self.data, f)
        os.rename(staged, self.path)

    def live(self) -> dict[str, dict]:
        return {ip: h for ip, h in self.leases.items() if alive(h)}

    def stale(self) -> dict[str, dict]:
        return {ip: h for ip, h in self.leases.items() if not alive(h)}

    def allocate(self, holder: dict) -> str:
        """The next free address for `holder` (saved). A leased address met on the way is
        taken over if its lease is stale: round-robin meets each one only once a cycle, so
        an allocation checks few holders, however many containers there are."""
        net = ipaddress.ip_network(self.network.subnet)
        first, count = int(net.network_address) + 1, net.num_addresses - 2   # no broadcast
        start = self.data["next"] % count
        for step in range(count):
            offset = (start + step) % count
            ip = str(ipaddress.IPv4Address(first + offset))
            if ip != self.network.gateway and not (ip in self.leases
                                                    and alive(self.leases[ip])):
                self.leases[ip] = holder
                self.data["next"] = (offset + 1) % count
                self.save()
                return ip
        raise NsmagicError(f"the network {self.network.name} ({self.network.subnet}) has no "
                           "free address left; stop a container on it, or use a network "
                           "with a larger subnet.")

    def release(self, run_id: str) -> dict | None:
        """Drop the lease of run `run_id`; returns its holder."""
        for ip, holder in list(self.leases.items()):
            if holder.get("id") == run_id:
                del self.leases[ip]
                self.save()
                return holder
        return None


def holder(run_id: str, name: str, hostname: str, pid: int, veth: str, **extra) -> dict:
    return {"id": run_id, "name": name, "hostname": hostname, "pid": pid,
            "start": dirs.start_time(pid), "boot": dirs.boot_id(), "veth": veth, **extra}


def alive(h: dict) -> bool:
    """Its PID 1 still runs, or its veth is still there (a namespace goes a moment after its
    last process)."""
    if h.get("boot") == dirs.boot_id() and h.get("start") is not None \
            and dirs.start_time(h.get("pid", 0)) == h["start"]:
        return True
    return bool(h.get("veth")) and os.path.exists(f"/sys/class/net/{h['veth']}")
