"""A network's /etc/hosts: every container on it by name and host name, so that they find
each other by name (Docker's user-defined networks resolve names; nsmagic's default bridge
does too). One file per network, bound read-only at /etc/hosts in each of its containers
and rewritten in place when one comes or goes: a bind mount shows the same inode, so a
file replaced by rename would not be seen. Stdlib only."""

from __future__ import annotations

import os

BASE = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def text(live: dict[str, dict]) -> str:
    lines = [BASE]
    for ip, holder in sorted(live.items(), key=lambda item: tuple(
            int(part) for part in item[0].split("."))):
        names = dict.fromkeys(n for n in (holder.get("name"), holder.get("hostname")) if n)
        lines.append(f"{ip}\t{' '.join(names)}\n")
    return "".join(lines)


def ensure(path: str) -> None:
    """The file exists (empty) before a container binds it: its own line is written by the
    helper before its workload starts."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    os.close(fd)


def write(path: str, content: str) -> None:
    """In place: the new text over the old, then cut to its length (one write each, so a
    reader sees the old list or the new one but for that instant)."""
    data = content.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
