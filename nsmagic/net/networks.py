"""Network definitions, kept in the store: one directory per network under
<store>/networks/<name>/ holding network.json (name, id, subnet, gateway, bridge device),
the lease file and its lock (ipam.py), and the network's hosts file (bound read-only at
/etc/hosts in each of its containers, so they find each other by name).

The default network `bridge` is defined on first use: bridge nsmagic0 on 10.123.0.0/16, or
NSMAGIC_BRIDGE_SUBNET. User-defined networks get bridges nsmbr-<id> and, unless given one,
the first free /24 of 10.124.0.0/16. A network's bridge device exists only while a
container is attached to it (see netd.py). Stdlib only."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass

from .. import dirs
from ..errors import NsmagicError, SpecError
from . import modes

DEFAULT_SUBNET = "10.123.0.0/16"
USER_POOL = "10.124.0.0/16"      # carved into /24s for user-defined networks
DEFAULT_DEVICE = "nsmagic0"


class NetworkError(NsmagicError):
    """A network that cannot be found, made or removed."""


@dataclass(frozen=True)
class Network:
    name: str
    id: str
    subnet: str          # "10.124.3.0/24"
    gateway: str         # the bridge's own address, the containers' default route
    bridge: str          # the device: nsmagic0, nsmbr-<id8>
    created: float
    builtin: bool = False

    @property
    def prefix(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    @property
    def directory(self) -> str:
        return dirs.store("networks", self.name)

    @property
    def hosts_file(self) -> str:
        return os.path.join(self.directory, "hosts")


def _path(name: str) -> str:
    return os.path.join(dirs.store_root(), "networks", name, "network.json")


def exists(name: str) -> bool:
    return name == modes.DEFAULT_BRIDGE or os.path.exists(_path(name))


def get(name: str) -> Network:
    """The network `name`; the default one is defined on first use."""
    try:
        with open(_path(name)) as f:
            return Network(**json.load(f))
    except FileNotFoundError:
        if name == modes.DEFAULT_BRIDGE:
            return _define_default()
        raise NetworkError(f"there is no network {name!r}; create it with `nsmagic network "
                           f"create {name}` (`nsmagic network ls` lists them).") from None
    except (OSError, ValueError, TypeError) as err:
        raise NetworkError(f"the network {name!r} is unreadable ({_path(name)}: {err}); "
                           f"remove it with `nsmagic network rm {name}`.") from err


def _define_default() -> Network:
    subnet = os.environ.get("NSMAGIC_BRIDGE_SUBNET", DEFAULT_SUBNET)
    try:
        network = _make(modes.DEFAULT_BRIDGE, subnet, DEFAULT_DEVICE, builtin=True)
    except FileExistsError:       # another process defined it meanwhile
        return get(modes.DEFAULT_BRIDGE)
    return network


def all_networks() -> list[Network]:
    """Every defined network (the default one included, defined if it was not)."""
    base = os.path.join(dirs.store_root(), "networks")
    names = set(os.listdir(base)) if os.path.isdir(base) else set()
    names.add(modes.DEFAULT_BRIDGE)
    found = []
    for name in sorted(names):
        try:
            found.append(get(name))
        except NetworkError:
            continue
    return found


def create(name: str, subnet: str | None = None) -> Network:
    if name in modes.BUILTIN or not modes.NAME.match(name):
        raise SpecError(f"{name!r} cannot name a network: "
                        + ("it is a built-in mode." if name in modes.BUILTIN else
                           "use letters, digits, '_', '.' and '-'."))
    if os.path.exists(_path(name)):
        raise NetworkError(f"a network named {name!r} exists already; choose another name "
                           f"or remove it with `nsmagic network rm {name}`.")
    subnet = _check_subnet(subnet) if subnet else _free_subnet()
    net_id = os.urandom(6).hex()
    try:
        return _make(name, subnet, f"nsmbr-{net_id[:8]}", net_id=net_id)
    except FileExistsError:
        raise NetworkError(f"a network named {name!r} exists already; choose another "
                           "name.") from None


def _make(name: str, subnet: str, device: str, builtin: bool = False,
          net_id: str | None = None) -> Network:
    net = ipaddress.ip_network(subnet, strict=False)
    network = Network(name, net_id or os.urandom(6).hex(), str(net),
                      str(next(net.hosts())), device, time.time(), builtin)
    directory = dirs.store("networks", name)
    staged = os.path.join(directory, f".network.json.{os.getpid()}")
    with open(staged, "w") as f:
        json.dump(asdict(network), f, indent=2)
    try:
        os.link(staged, _path(name))   # whole, and never over another's definition
    finally:
        os.unlink(staged)
    return network


def _check_subnet(text: str) -> str:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise SpecError(f"--subnet {text!r} is not a subnet; write e.g. 10.125.0.0/24.") \
            from None
    if net.version != 4 or not 16 <= net.prefixlen <= 29:
        raise SpecError(f"--subnet {text}: give an IPv4 subnet from /16 to /29, such as "
                        "10.125.0.0/24.")
    clash = _clash(net)
    if clash:
        raise NetworkError(f"--subnet {net} overlaps {clash}; choose another subnet.")
    return str(net)


def _free_subnet() -> str:
    for candidate in ipaddress.ip_network(USER_POOL).subnets(new_prefix=24):
        if not _clash(candidate):
            return str(candidate)
    raise NetworkError(f"no /24 of {USER_POOL} is free; remove a network or give --subnet.")


def _clash(net) -> str | None:
    """What `net` overlaps: another network's subnet or one of the host's routes."""
    for other in all_networks():
        if net.overlaps(ipaddress.ip_network(other.subnet)):
            return f"the network {other.name} ({other.subnet})"
    for route in host_routes():
        if route.prefixlen and net.overlaps(route):
            return f"the host's route to {route}"
    return None


def host_routes() -> list:
    """The host's IPv4 routes (main table) from /proc/net/route: no netlink needed here."""
    found = []
    try:
        with open("/proc/net/route") as f:
            next(f)
            for line in f:
                fields = line.split()
                dest, mask = (int(fields[i], 16).to_bytes(4, "little") for i in (1, 7))
                found.append(ipaddress.ip_network(
                    f"{ipaddress.ip_address(dest)}/{ipaddress.ip_address(mask)}",
                    strict=False))
    except (OSError, ValueError, StopIteration):
        pass
    return found


def remove(name: str) -> None:
    """Forget a network; refused while a container is attached to it (its bridge device
    exists only while one is)."""
    from . import ipam
    network = get(name)
    with ipam.Leases(network) as leases:
        users = leases.live()
        if users:
            names = ", ".join(sorted(h["name"] for h in users.values()))
            raise NetworkError(f"the network {name} is in use by {names}; stop them first.")
        os.unlink(_path(name))
    # The default one too: it is defined again on its next use, from NSMAGIC_BRIDGE_SUBNET.
    shutil.rmtree(os.path.join(dirs.store_root(), "networks", name), ignore_errors=True)


def inspect(network: Network) -> dict:
    """`docker network inspect`'s shape: the definition and its containers."""
    from . import ipam
    with ipam.Leases(network) as leases:
        live = leases.live()
    return {"Name": network.name, "Id": network.id, "Driver": "bridge",
            "Created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(network.created)),
            "IPAM": {"Config": [{"Subnet": network.subnet, "Gateway": network.gateway}]},
            "Options": {"bridge": network.bridge},
            "Containers": {h["id"]: {"Name": h["name"], "IPv4Address":
                                     f"{ip}/{network.prefix}", "Device": h.get("veth")}
                           for ip, h in sorted(live.items())}}
