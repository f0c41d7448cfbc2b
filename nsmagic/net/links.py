"""The host's side of container networks, all netlink through pyroute2: bridges, veth pairs,
addresses, routes and tc token buckets. Runs in the network helper (netd.py) only: importing
pyroute2 costs ~300 ms, which no run's start may pay.

A container's end of its veth is made straight in its network namespace (the kernel takes
the peer's namespace in the same request) and configured there through a netlink socket
opened inside that namespace: setns() for a moment in this single-threaded process, the
socket made, setns() back. A socket stays in the namespace it was made in."""

from __future__ import annotations

import contextlib
import errno
import os

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..inside import linux
from .networks import Network

CONTAINER_IF = "eth0"
HAIRPIN = 1   # IFLA_BRPORT_MODE: a port may send a frame back where it came from (a container
              # reaching its own published port through the host's address)
# A token bucket: a burst of 50 ms at the rate (at least two full frames, so a frame always
# fits: a sender held up a moment by a busy CPU loses little), and a queue that holds 200 ms
# more before it drops (a drop makes TCP back off below the rate).
BURST_SECONDS, QUEUE_SECONDS, MIN_BURST = 0.05, 0.2, 2 * 1514


class Links:
    def __init__(self):
        self.ipr = IPRoute()
        self.host_ns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        self.ipr.close()
        os.close(self.host_ns)

    @staticmethod
    def index(name: str) -> int | None:
        """A host device's index, from sysfs: a netlink lookup dumps every link, which
        grows with each container on the host."""
        try:
            with open(f"/sys/class/net/{name}/ifindex") as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    # --- bridges

    def ensure_bridge(self, network: Network) -> bool:
        """The network's bridge, up, with the gateway address; True if it was made now."""
        if self.index(network.bridge) is not None:
            return False
        try:
            self.ipr.link("add", ifname=network.bridge, kind="bridge")
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise
            return False
        index = self.index(network.bridge)
        self.ipr.addr("add", index=index, address=network.gateway, prefixlen=network.prefix)
        self.ipr.link("set", index=index, state="up")
        # A published port reached at 127.0.0.1 is DNATed to a container: the packet then
        # leaves through the bridge with a loopback source, which needs route_localnet.
        _sysctl(f"net/ipv4/conf/{network.bridge}/route_localnet", "1")
        return True

    def remove_bridge(self, network: Network) -> None:
        self.remove(network.bridge)

    def remove(self, name: str) -> None:
        """Delete a device (a veth takes its peer along); gone already is fine."""
        index = self.index(name)
        if index is None:
            return
        try:
            self.ipr.link("del", index=index)
        except NetlinkError as err:
            if err.code != errno.ENODEV:
                raise

    # --- a container's veth

    def attach(self, network: Network, veth: str, netns_fd: int, address: str,
               rate: int | None) -> str:
        """A veth pair: `veth` on the bridge, eth0 in the container's namespace with its
        address and default route; with `rate` (bytes/s) a token bucket on each end's way
        out. Returns eth0's MAC address."""
        self.ipr.link("add", ifname=veth, kind="veth", master=self.index(network.bridge),
                      peer={"ifname": CONTAINER_IF, "net_ns_fd": netns_fd})
        index = self.index(veth)
        self.ipr.link("set", index=index, kind="bridge_slave", mode=HAIRPIN)
        self.ipr.link("set", index=index, state="up")
        if rate:   # the container's way in: out of the host's end
            self.limit(self.ipr, index, rate)
        with self.inside(netns_fd) as inner:
            eth0 = inner.link("get", ifname=CONTAINER_IF)[0]
            inner.addr("add", index=eth0["index"], address=address,
                       prefixlen=network.prefix)
            inner.link("set", index=eth0["index"], state="up")
            inner.route("add", dst="0.0.0.0/0", gateway=network.gateway)
            if rate:   # the container's way out; without CAP_NET_ADMIN it cannot lift it
                self.limit(inner, eth0["index"], rate)
            return eth0.get_attr("IFLA_ADDRESS")

    @contextlib.contextmanager
    def inside(self, netns_fd: int):
        """An IPRoute whose socket lives in the namespace `netns_fd`."""
        linux.setns(netns_fd, linux.CLONE_NEWNET)
        try:
            inner = IPRoute()
        finally:
            linux.setns(self.host_ns, linux.CLONE_NEWNET)
        try:
            yield inner
        finally:
            inner.close()

    @staticmethod
    def limit(ipr, index: int, rate: int) -> None:
        """A tbf qdisc as root of the device: `rate` bytes/s leave it, no faster."""
        burst = max(MIN_BURST, int(rate * BURST_SECONDS))
        ipr.tc("add", "tbf", index, rate=f"{rate * 8}bit", burst=burst,
               limit=burst + int(rate * QUEUE_SECONDS))

    def default_route(self) -> bool:
        """The host has a route out (a default route in its main table)."""
        return bool(self.ipr.get_default_routes(family=2))


def _sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        with open(f"/proc/sys/{name}", "w") as f:
            f.write(value)
