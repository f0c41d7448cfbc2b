"""Packet filter rules for container networks: outbound NAT (masquerade) where the host has
a route out, published ports (DNAT), and networks kept apart, as Docker's. Written through
the system's own tool, never by hand-made netlink: `nft` (one table, `ip nsmagic`) where the
host's iptables is the nftables one or absent, else `iptables` (chains NSMAGIC-*, jumped to
from the built-in ones). NSMAGIC_NAT=nft|iptables chooses.

The whole rule set is derived from the state (bridges that exist, published ports of live
containers) and replaced in one transaction each time it changes: nothing to keep in step
rule by rule, and with no bridge left, no rule is left either."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from ..errors import NsmagicError

TABLE = "nsmagic"
CHAINS = {"nat": ("PREROUTING", "OUTPUT", "POSTROUTING"), "filter": ("FORWARD",)}


@dataclass(frozen=True)
class Bridge:
    device: str
    subnet: str
    masquerade: bool     # the host has a route out: containers' traffic leaves as the host's


@dataclass(frozen=True)
class Published:
    host_ip: str         # "" for every local address
    host_port: int
    protocol: str
    container_ip: str
    container_port: int


def backend() -> str | None:
    """nft, iptables, or None where the host has neither."""
    chosen = os.environ.get("NSMAGIC_NAT")
    os.environ.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    if chosen in ("nft", "iptables"):
        return chosen
    nft, iptables = shutil.which("nft"), shutil.which("iptables")
    if nft and (not iptables or "nf_tables" in _version(iptables)):
        return "nft"
    if iptables:
        return "iptables"
    return "nft" if nft else None


def _version(tool: str) -> str:
    try:
        return subprocess.run([tool, "--version"], capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def sync(bridges: list[Bridge], published: list[Published]) -> None:
    """Make the host's rules exactly these (none at all when both lists are empty)."""
    tool = backend()
    if tool is None:
        if published or any(b.masquerade for b in bridges):
            raise NsmagicError("neither nft nor iptables is installed, so no NAT or port "
                               "can be set up; install nftables (apt-get install nftables).")
        return
    if tool == "nft":
        _run(["nft", "-f", "-"], nft_script(bridges, published))
        _forward_past_a_drop_policy(bridges)
    else:
        _iptables(bridges, published)


def _forward_past_a_drop_policy(bridges: list[Bridge]) -> None:
    """A host whose iptables FORWARD policy is DROP (Docker sets it) drops containers'
    routed traffic, and even their bridged traffic where br_netfilter is loaded, whatever an
    nftables table of ours accepts (every base chain of a hook must accept). There, the
    same NSMAGIC-FORWARD chain the iptables backend has, jumped to first; removed with the
    last bridge."""
    if not shutil.which("iptables"):
        return
    policy = _ipt(["-t", "filter", "-S", "FORWARD"]).stdout.splitlines()[:1]
    ours = "NSMAGIC-FORWARD" in _ipt(["-t", "filter", "-S"]).stdout
    if bridges and (ours or policy == ["-P FORWARD DROP"]):   # kept in step once there
        _run(["iptables-restore", "--noflush"], _forward_rules(bridges))
        rule = ["FORWARD", "-j", "NSMAGIC-FORWARD"]
        if _ipt(["-t", "filter", "-C", *rule]).returncode:
            _run(["iptables", "-w", "-t", "filter", "-I", *rule])
    elif ours and not bridges:
        while _ipt(["-t", "filter", "-D", "FORWARD", "-j", "NSMAGIC-FORWARD"]).returncode == 0:
            pass
        for op in ("-F", "-X"):
            _ipt(["-t", "filter", op, "NSMAGIC-FORWARD"])


def _run(argv: list[str], script: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise NsmagicError(f"{argv[0]} refused nsmagic's rules: "
                           f"{done.stderr.strip().splitlines()[-1:] or done.returncode}")
    return done


# --- nftables: one table, replaced whole (declare, delete, declare again: one transaction)


def nft_script(bridges: list[Bridge], published: list[Published]) -> str:
    head = f"table ip {TABLE}\ndelete table ip {TABLE}\n"
    if not bridges and not published:
        return head
    dnat = [_nft_dnat(p) for p in published]
    post = [f'ip saddr {b.subnet} oifname != "{b.device}" masquerade'
            for b in bridges if b.masquerade]
    # Published traffic that entered from the host itself (127.0.0.1) or from a container
    # of the same bridge leaves through the bridge: answer it as the gateway, so the reply
    # comes back through the host and is un-NATed.
    post += [f'oifname "{b.device}" ct status dnat masquerade' for b in bridges]
    forward = ["ct status dnat accept"]
    if len(bridges) > 1:
        names = ", ".join(f'"{b.device}"' for b in bridges)
        forward += [f'iifname "{b.device}" oifname {{ {names} }} oifname != "{b.device}" drop'
                    for b in bridges]
    return head + "\n".join([
        f"table ip {TABLE} {{",
        _nft_chain("prerouting", "nat hook prerouting priority dstnat", dnat),
        _nft_chain("output", "nat hook output priority -100", dnat),
        _nft_chain("postrouting", "nat hook postrouting priority srcnat", post),
        _nft_chain("forward", "filter hook forward priority filter", forward),
        "}", ""])


def _nft_chain(name: str, hook: str, rules: list[str]) -> str:
    body = "".join(f"    {rule}\n" for rule in rules)
    return f"  chain {name} {{\n    type {hook}; policy accept;\n{body}  }}"


def _nft_dnat(p: Published) -> str:
    where = f"ip daddr {p.host_ip}" if p.host_ip else "fib daddr type local"
    return (f"{where} {p.protocol} dport {p.host_port} "
            f"dnat to {p.container_ip}:{p.container_port}")


# --- iptables: chains of our own, filled by iptables-restore --noflush, jumped to once


def iptables_script(bridges: list[Bridge], published: list[Published]) -> str:
    nat = [f":NSMAGIC-{chain} - [0:0]" for chain in CHAINS["nat"]]
    for p in published:
        where = f"-d {p.host_ip} " if p.host_ip else ""
        for chain in ("PREROUTING", "OUTPUT"):
            nat.append(f"-A NSMAGIC-{chain} {where}-p {p.protocol} --dport {p.host_port} "
                       f"-j DNAT --to-destination {p.container_ip}:{p.container_port}")
    for b in bridges:
        if b.masquerade:
            nat.append(f"-A NSMAGIC-POSTROUTING -s {b.subnet} ! -o {b.device} -j MASQUERADE")
        nat.append(f"-A NSMAGIC-POSTROUTING -o {b.device} -m conntrack --ctstate DNAT "
                   "-j MASQUERADE")
    return "\n".join(["*nat", *nat, "COMMIT", ""]) + _forward_rules(bridges)


def _forward_rules(bridges: list[Bridge]) -> str:
    """The filter table's NSMAGIC-FORWARD: networks apart, then their traffic accepted
    (a host whose FORWARD policy is DROP would drop it)."""
    forward = [":NSMAGIC-FORWARD - [0:0]",
               "-A NSMAGIC-FORWARD -m conntrack --ctstate DNAT -j ACCEPT"]
    forward += [f"-A NSMAGIC-FORWARD -i {a.device} -o {b.device} -j DROP"
                for a in bridges for b in bridges if a != b]
    forward += [f"-A NSMAGIC-FORWARD -{flag} {b.device} -j ACCEPT"
                for b in bridges for flag in ("i", "o")]
    return "\n".join(["*filter", *forward, "COMMIT", ""])


_JUMPS = {("nat", "PREROUTING"): ["-m", "addrtype", "--dst-type", "LOCAL"],
          ("nat", "OUTPUT"): ["-m", "addrtype", "--dst-type", "LOCAL"],
          ("nat", "POSTROUTING"): [], ("filter", "FORWARD"): []}


def _iptables(bridges: list[Bridge], published: list[Published]) -> None:
    if not bridges and not published:
        for (table, chain), match in _JUMPS.items():
            rule = [chain, *match, "-j", f"NSMAGIC-{chain}"]
            while _ipt(["-t", table, "-C", *rule]).returncode == 0:
                _ipt(["-t", table, "-D", *rule])
            for op in ("-F", "-X"):
                _ipt(["-t", table, op, f"NSMAGIC-{chain}"])
        return
    _run(["iptables-restore", "--noflush"], iptables_script(bridges, published))
    for (table, chain), match in _JUMPS.items():
        rule = [chain, *match, "-j", f"NSMAGIC-{chain}"]
        if _ipt(["-t", table, "-C", *rule]).returncode:
            _run(["iptables", "-w", "-t", table, "-I", *rule])


def _ipt(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, timeout=30)


def present() -> list[str]:
    """nsmagic's rules on this host, by name (for leak checks)."""
    found = []
    if shutil.which("nft"):
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        found += [line for line in out.splitlines() if line.split()[-1:] == [TABLE]]
    if shutil.which("iptables"):
        for table in CHAINS:
            out = _ipt(["-t", table, "-S"]).stdout
            found += [f"iptables {table}: {line}" for line in out.splitlines()
                      if "NSMAGIC-" in line]
    return found
