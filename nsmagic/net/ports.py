"""-p/--publish HOST:CONTAINER[/tcp|udp] and --network-rate RATE, parsed. Stdlib only."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SpecError

PROTOCOLS = ("tcp", "udp")
_BITS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)bit\s*$", re.IGNORECASE)
_SI = {"": 1, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9, "t": 10 ** 12}
MIN_RATE = 1000          # bytes/s: a token bucket slower than this holds nothing useful


@dataclass(frozen=True)
class Port:
    """A published port: host_port 0 means one the kernel picks (Docker's `-p 80`)."""
    host_ip: str           # "" for every address of the host
    host_port: int
    container_port: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        """Docker's PORTS column: 0.0.0.0:8080->80/tcp."""
        return f"{self.host_ip or '0.0.0.0'}:{self.host_port}->{self.container_port}/" \
               f"{self.protocol}"


def parse_port(text: str) -> Port:
    spec, _, protocol = text.partition("/")
    protocol = protocol.lower() or "tcp"
    if protocol not in PROTOCOLS:
        raise SpecError(f"-p {text!r}: {protocol!r} is not tcp or udp; write e.g. "
                        "-p 8080:80/udp.")
    parts = spec.rsplit(":", 2)
    if len(parts) == 1:
        host_ip, host, container = "", "0", parts[0]
    elif len(parts) == 2:
        host_ip, (host, container) = "", parts
    else:
        host_ip, host, container = parts
    host_ip = host_ip.strip("[]")
    if host_ip:
        try:
            import ipaddress  # here: most runs publish no port
            if ipaddress.ip_address(host_ip).version != 4:
                raise ValueError
        except ValueError:
            raise SpecError(f"-p {text!r}: {host_ip!r} is not an IPv4 address of the host; "
                            "write e.g. -p 127.0.0.1:8080:80.") from None
    return Port(host_ip, _port(host or "0", text, allow_zero=True), _port(container, text),
                protocol)


def _port(value: str, text: str, allow_zero: bool = False) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not (0 if allow_zero else 1) <= number <= 65535:
        raise SpecError(f"-p {text!r} is not [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp] with "
                        "ports from 1 to 65535; write e.g. -p 8080:80.")
    return number


def parse_rate(text: str) -> int:
    """--network-rate: bytes per second. `10mbit` (bits, SI units as tc writes them) or
    `1.5mb`/`1.5M` (bytes, powers of 1024 as Docker's --device-*-bps)."""
    from ..spec import parse_size
    m = _BITS.match(str(text))
    if m:
        rate = int(float(m.group(1)) * _SI[m.group(2).lower()] / 8)
    else:
        rate = parse_size(text, "--network-rate")
    if rate < MIN_RATE:
        raise SpecError(f"--network-rate {text!r} is below {MIN_RATE} bytes a second; give a "
                        "rate such as 10mbit or 1mb.")
    return rate


def format_rate(rate: int) -> str:
    """bytes/s as tc would say it, in bits: 8.4Mbit/s."""
    bits = rate * 8
    for unit, size in (("Gbit", 10 ** 9), ("Mbit", 10 ** 6), ("kbit", 10 ** 3)):
        if bits >= size:
            return f"{bits / size:.3g} {unit}/s"
    return f"{bits} bit/s"
