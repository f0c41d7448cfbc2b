"""Networking without root (`--network pasta`), as rootless Podman does it: passt's `pasta`
joins the container's user and network namespaces, makes a tap device there with the host's
address and routes, and carries the container's traffic through ordinary sockets of the host
(so the container reaches what its user can reach), and -p ports from the host in. No root,
no bridge, no NAT rule. Runs in the runner; stdlib only.

pasta runs in the foreground, tied to the runner's life (runtime/tied.py), and is killed
when its run closes. Its namespace's own loopback stays its own (-T none -U none): the
host's loopback services are not forwarded into it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from ..errors import SetupError, SpecError
from ..runtime import tied

READY_WITHIN = 10.0


def check(ports) -> None:
    """What pasta cannot do, said before anything starts."""
    if shutil.which("pasta") is None:
        raise SpecError("--network pasta needs passt's pasta, which is not installed; "
                        "apt-get install passt (or run as root with --network bridge).")
    for port in ports:
        if not port.host_port:
            raise SpecError(f"-p {port.container_port}: with pasta give the host's port too, "
                            f"e.g. -p 8080:{port.container_port}.")


def namespaces(pid: int) -> tuple[int, int]:
    """fds of PID 1's user and network namespaces, opened while it waits for its run: once
    it has its run it is not dumpable, and its /proc/<pid>/ns is root's to open."""
    user = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return user, os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(user)
        raise


def start(pid: int, ports, userns: int, netns: int) -> subprocess.Popen:
    """pasta for PID 1 `pid` (its namespaces as fds, see namespaces()); returns once the
    container's eth0 has its address and default route (read from its namespace's
    /proc/<pid>/net/route), or raises SetupError with pasta's own words."""
    check(ports)
    argv = ["pasta", "--config-net", "--foreground", "--quiet", "-I", "eth0",
            "-t", _spec(ports, "tcp"), "-u", _spec(ports, "udp"), "-T", "none", "-U", "none",
            "--userns", f"/proc/self/fd/{userns}", "--netns", f"/proc/self/fd/{netns}"]
    pasta = tied.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, pass_fds=(userns, netns))
    deadline = time.monotonic() + READY_WITHIN
    while not _routed(pid):
        if pasta.poll() is not None or time.monotonic() > deadline:
            stop(pasta)
            said = pasta.stderr.read().decode(errors="replace").strip().splitlines()
            raise SetupError("pasta could not connect the container: "
                             + (said[-1] if said else f"it exited with {pasta.returncode}")
                             + "; check the -p ports are free.")
        time.sleep(0.002)
    return pasta


def _spec(ports, protocol: str) -> str:
    chosen = [f"{p.host_ip + '/' if p.host_ip else ''}{p.host_port}:{p.container_port}"
              for p in ports if p.protocol == protocol]
    return ",".join(chosen) or "none"


def _routed(pid: int) -> bool:
    """The namespace has a default route (pasta configured it)."""
    try:
        with open(f"/proc/{pid}/net/route") as f:
            return any(line.split()[1:2] == ["00000000"] for line in f.readlines()[1:])
    except OSError:
        return False


def stop(pasta: subprocess.Popen) -> None:
    if pasta.poll() is None:
        pasta.kill()
    pasta.wait()


def address(pid: int) -> str | None:
    """The container's eth0 address (the host's, as pasta copies it)."""
    try:
        with open(f"/proc/{pid}/net/fib_trie") as f:
            text = f.read()
    except OSError:
        return None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "/32 host LOCAL" in line and i and not lines[i - 1].strip().endswith("127.0.0.1"):
            return lines[i - 1].split()[-1]
    return None


def counters(pid: int) -> tuple[int, int]:
    """(received, sent) bytes on the container's eth0, from its namespace's /proc/net/dev."""
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name.strip() == "eth0":
                    fields = rest.split()
                    return int(fields[0]), int(fields[8])
    except (OSError, ValueError, IndexError):
        pass
    return 0, 0

