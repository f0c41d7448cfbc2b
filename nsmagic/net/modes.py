"""What a --network value means, and which network namespace a run's PID 1 gets. Stdlib
only and cheap: the spec, the spares and PID 1's boot use it.

    none            a namespace of its own with only lo (nsmagic's default)
    host            the host's namespace
    bridge          Docker's default: the bridge nsmagic0, an address, outbound NAT
    NAME            a user-defined bridge (`nsmagic network create NAME`)
    container:NAME  the namespace of the running container NAME
    pasta           rootless: a namespace of its own, connected by pasta (passt)"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SpecError

DEFAULT_BRIDGE = "bridge"
BUILTIN = ("none", "host", "bridge", "pasta")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

# The namespace a PID 1 is cloned with: a spare of one kind serves every mode of that kind.
PRIVATE, HOST, JOIN = "private", "host", "join"


@dataclass(frozen=True)
class Mode:
    kind: str          # none | host | bridge | container | pasta
    name: str = ""     # the network's name (bridge kinds) or the container's (container)

    @property
    def namespace(self) -> str:
        return {"host": HOST, "container": JOIN}.get(self.kind, PRIVATE)

    @property
    def bridged(self) -> bool:
        """A veth on a bridge of the host, set up by the network helper."""
        return self.kind == "bridge"


def parse(value: str) -> Mode:
    """A --network value; SpecError with one sentence if it cannot be one."""
    if value in ("none", "host", "pasta"):
        return Mode(value)
    if value.startswith("container:"):
        name = value[len("container:"):]
        if not NAME.match(name):
            raise SpecError(f"--network {value!r}: {name!r} is not a container name; give "
                            "container:NAME with the name of a running container.")
        return Mode("container", name)
    if NAME.match(value) and value not in ("default", "private"):
        return Mode("bridge", value)
    raise SpecError(f"--network {value!r} is not known; use none, host, bridge, pasta, "
                    "container:NAME or the name of a network from `nsmagic network ls`.")


def namespace(value: str) -> str:
    """The namespace PID 1 is cloned with for a --network value (private, host or join)."""
    return parse(value).namespace
