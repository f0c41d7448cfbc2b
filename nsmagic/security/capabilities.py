"""Linux capabilities by name and number (linux/capability.h), Docker's default set, and
Docker's --cap-add/--cap-drop arithmetic.

Stdlib only: PID 1 imports this. Names are kept in the kernel's spelling, "CAP_SYS_ADMIN",
as Docker's seccomp profile and the OCI runtime spec write them; parse() also takes
"sys_admin", "SYS_ADMIN" and "ALL".
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import SpecError

# Index = the capability's number in linux/capability.h (0 .. 40, Linux 5.9+).
NAMES: tuple[str, ...] = tuple("CAP_" + n for n in (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID",                    # 0-4
    "KILL", "SETGID", "SETUID", "SETPCAP", "LINUX_IMMUTABLE",                         # 5-9
    "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK",          # 10-14
    "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE",               # 15-19
    "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE",                 # 20-24
    "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",                    # 25-29
    "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",                # 30-34
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",                    # 35-39
    "CHECKPOINT_RESTORE",                                                             # 40
))
NUMBERS: dict[str, int] = {name: number for number, name in enumerate(NAMES)}
ALL: frozenset[str] = frozenset(NAMES)

# What `docker run` keeps without --cap-add/--cap-drop/--privileged.
DOCKER_DEFAULT: frozenset[str] = frozenset("CAP_" + n for n in (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
))


def canonical(name: str) -> str:
    """"net_admin", "NET_ADMIN" or "CAP_NET_ADMIN" -> "CAP_NET_ADMIN"; SpecError otherwise."""
    text = name.strip().upper()
    full = text if text.startswith("CAP_") else "CAP_" + text
    if full not in NUMBERS:
        raise SpecError(f"unknown capability {name!r}: use a name from capabilities(7) such as "
                        f"NET_ADMIN or CAP_SYS_TIME, or ALL.")
    return full


def parse(name: str) -> frozenset[str]:
    """One capability as the user wrote it ("CAP_NET_ADMIN", "net_admin") or "ALL", as a set
    of kernel names."""
    if name.strip().upper() == "ALL":
        return ALL
    return frozenset((canonical(name),))


def parse_all(names: Iterable[str]) -> frozenset[str]:
    """The union of parse() over `names`."""
    out: frozenset[str] = frozenset()
    for name in names:
        out |= parse(name)
    return out


def resolve(add: Iterable[str] = (), drop: Iterable[str] = (),
            base: frozenset[str] = DOCKER_DEFAULT) -> frozenset[str]:
    """The set a run keeps, as Docker computes it from --cap-add and --cap-drop: ALL added
    gives every capability but those dropped; ALL dropped gives only those added; otherwise
    `base` less the dropped plus the added (an added name wins over a dropped one)."""
    add, drop = list(add), list(drop)
    adds, drops = parse_all(add), parse_all(drop)
    if any(n.strip().upper() == "ALL" for n in add):
        return ALL - drops
    if any(n.strip().upper() == "ALL" for n in drop):
        return adds
    return (base - drops) | adds


def number(name: str) -> int:
    """The number of one capability, by any spelling canonical() takes."""
    return NUMBERS[canonical(name)]


def numbers(names: Iterable[str]) -> list[int]:
    """The numbers of `names` (any spelling parse() takes, ALL included), ascending."""
    return sorted(NUMBERS[n] for n in parse_all(names))


def mask(names: Iterable[str]) -> int:
    """`names` as a bit mask (bit n = capability n), the form of /proc/<pid>/status CapBnd."""
    return sum(1 << n for n in numbers(names))


def names(numbers_: Iterable[int]) -> frozenset[str]:
    """Kernel names of capability numbers; a number this table does not know (a newer
    kernel's) raises SpecError."""
    out = set()
    for n in numbers_:
        if not 0 <= n < len(NAMES):
            raise SpecError(f"unknown capability number {n}: this nsmagic knows 0 to "
                            f"{len(NAMES) - 1}.")
        out.add(NAMES[n])
    return frozenset(out)
