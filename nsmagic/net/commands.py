"""`nsmagic network create|ls|rm|inspect`, as `docker network ...`, shared by the CLI and the
magic (`%container network ...`): each takes its argument words, prints, and returns an exit
status; a user's mistake raises SpecError or NsmagicError with one sentence."""

from __future__ import annotations

import json
import time

from ..errors import SpecError
from ..spec import OptionParser
from . import networks


def _parser(prog: str, description: str) -> OptionParser:
    return OptionParser(prog=f"nsmagic network {prog}", description=description)


def create(argv: list[str]) -> int:
    p = _parser("create", "a user-defined bridge network: its containers find each other "
                          "by name")
    p.add_argument("--subnet", metavar="CIDR", help="e.g. 10.125.0.0/24 (default: a free /24 "
                                                     f"of {networks.USER_POOL})")
    p.add_argument("-d", "--driver", default="bridge", help="bridge (the only one)")
    p.add_argument("name", metavar="NAME")
    args = p.parse_args(argv)
    if args.driver != "bridge":
        raise SpecError(f"--driver {args.driver!r}: nsmagic makes bridge networks only.")
    print(networks.create(args.name, args.subnet).id)
    return 0


def ls(argv: list[str]) -> int:
    p = _parser("ls", "the networks defined here")
    p.add_argument("-q", "--quiet", action="store_true", help="names only")
    args = p.parse_args(argv)
    found = networks.all_networks()
    if args.quiet:
        print("\n".join(n.name for n in found))
        return 0
    rows = [("NETWORK ID", "NAME", "DRIVER", "SUBNET", "DEVICE", "CONTAINERS")]
    for n in found:
        info = networks.inspect(n)
        rows.append((n.id, n.name, "bridge", n.subnet, n.bridge, str(len(info["Containers"]))))
    rows += [(m, m, m, "-", "-", "-") for m in ("host", "none")]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def rm(argv: list[str]) -> int:
    p = _parser("rm", "forget networks (refused while a container uses one)")
    p.add_argument("names", nargs="+", metavar="NAME")
    for name in p.parse_args(argv).names:
        networks.remove(name)
        print(name)
    return 0


def inspect(argv: list[str]) -> int:
    p = _parser("inspect", "a network's definition and containers, as JSON")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    print(json.dumps([networks.inspect(networks.get(n)) for n in args.names], indent=4))
    return 0


def prune(argv: list[str]) -> int:
    p = _parser("prune", "forget every user-defined network no container uses")
    p.add_argument("-f", "--force", action="store_true", help="(no prompt is asked anyway)")
    p.parse_args(argv)
    for n in networks.all_networks():
        if not n.builtin and not networks.inspect(n)["Containers"]:
            networks.remove(n.name)
            print(n.name)
    return 0


SUBCOMMANDS = {"create": create, "ls": ls, "list": ls, "rm": rm, "remove": rm,
               "inspect": inspect, "prune": prune}


def network(argv: list[str]) -> int:
    """`nsmagic network SUBCOMMAND ...`."""
    if not argv or argv[0] not in SUBCOMMANDS:
        raise SpecError(f"`nsmagic network {argv[0] if argv else ''}` is not known; use "
                        "create, ls, rm, inspect or prune.")
    return SUBCOMMANDS[argv[0]](argv[1:])


def age(created: float) -> str:
    """'5 seconds ago', as Docker's CREATED column."""
    seconds = max(0, time.time() - created)
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} seconds ago"


def commands() -> dict:
    return {"network": network}
