#!/usr/bin/env python3
"""Networking benchmark (issue 14): what a bridged container's start costs.

Not a test: it measures and prints one table. Rows (``--only`` names):

  none          nsmagic.core.run(`--network none -- true`) in this process (warm)
  bridge        the same with --network bridge (the network helper already running)
  cli-none      ``nsmagic run --network none -- true`` as a fresh process
  cli-bridge    ``nsmagic run --network bridge -- true`` as a fresh process (helper warm)
  helper-cold   the first bridged run of a process when no helper runs yet (it is started
                and imports pyroute2: once per user and code version, not per run)
  pyroute2      whether a runner imported pyroute2 during its bridged runs (it must not)
  hundred       100 bridged containers started from one runner (target < 3 s), then removed;
                nothing left after (veth, bridge, lease, rule)
  podman        ``podman run --rm --network bridge`` (CNI: cni-podman0, iptables), rootful
  docker        ``docker run --rm`` on dockerd's default bridge (docker0, iptables)

Podman and Docker run on private storage through tests/peers.py; the bridges and iptables
rules they leave are removed after (undo_network). Run as root, on a quiet machine:

  /work/main/.venv/bin/python bench/network.py [--runs 30] [--only none,bridge,hundred]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[1:1] = [str(REPO), str(REPO / "tests")]

ROWS = ["none", "bridge", "cli-none", "cli-bridge", "helper-cold", "pyroute2", "hundred",
        "podman", "docker"]


def api(network: str, runs: int) -> list[float]:
    from nsmagic.core import run, settle
    from nsmagic.spec import Spec
    spec, times = Spec.from_argv(["--network", network, "--", "true"]), []
    for _ in range(runs + 2):
        t0 = time.perf_counter()
        result = run(spec)
        times.append(time.perf_counter() - t0)
        assert result.exit_code == 0, result.summary()
        settle()      # untimed: what a notebook has between two cells
    return times[2:]


def cli(network: str, runs: int) -> list[float]:
    argv = [sys.executable, "-m", "nsmagic", "run", "--network", network, "--", "true"]
    times = []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=REPO, check=True)
        times.append(time.perf_counter() - t0)
    return times[1:]


def helper_cold(runs: int) -> list[float]:
    """The helper stopped (SIGTERM once it has nothing attached), then one bridged run."""
    from nsmagic.net import netd
    times = []
    for _ in range(max(1, runs // 10)):
        _stop_helper(netd.socket_path())
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nsmagic", "run", "--network", "bridge", "--",
                        "true"], cwd=REPO, check=True)
        times.append(time.perf_counter() - t0)
    return times


def _stop_helper(path: str) -> None:
    import json
    import socket
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX,
                                                     socket.SOCK_SEQPACKET) as conn:
        conn.connect(path)
        conn.send(json.dumps({"op": "ping", "seq": 0}).encode())
        pid = json.loads(conn.recv(4096))["pid"]
        conn.close()
        os.kill(pid, 15)
        while os.path.exists(f"/proc/{pid}"):
            time.sleep(0.01)


def pyroute2_imported() -> str:
    code = ("import sys; from nsmagic.core import run; from nsmagic.spec import Spec; "
            "[run(Spec.from_argv('--network bridge -- true')) for _ in range(3)]; "
            "print('pyroute2' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True)
    return "imported by the runner (MISS)" if done.stdout.strip() == "True" else \
        "never imported by a runner (PASS)"


def hundred() -> str:
    from leaks import network_leftovers

    from nsmagic.core import settle, start
    from nsmagic.spec import Spec
    before = set(network_leftovers(settle=True))
    spec, runs = Spec.from_argv(["--network", "bridge", "--", "sleep", "60"]), []
    t0 = time.perf_counter()
    for _ in range(100):
        runs.append(start(spec))
    started = time.perf_counter() - t0
    assert len({r.network["ip"] for r in runs}) == 100
    t1 = time.perf_counter()
    for r in runs:
        r.kill_all()
    for r in runs:
        r.wait()
        r.close()
    settle()
    removed = time.perf_counter() - t1
    left = set(network_leftovers(settle=True)) - before
    return (f"started in {started:.2f} s ({'PASS' if started < 3 else 'MISS'} < 3 s), "
            f"stopped and removed in {removed:.2f} s, left: {sorted(left) or 'nothing'}")


def peer(tool: str, runs: int) -> list[float]:
    import peers
    before = peers.snapshot()
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    before["policy"] = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True,
                                      text=True).stdout.splitlines()[:1]
    try:
        context = peers.podman_argv() if tool == "podman" else peers.docker_daemon(bridge=True)
        with context as argv:
            image = peers.busybox_image(argv)
            network = "bridge"
            run = peers.run_argv(argv, image, "true", network=network)
            times = []
            for _ in range(runs + 2):
                t0 = time.perf_counter()
                subprocess.run(run, check=True, capture_output=True)
                times.append(time.perf_counter() - t0)
            return times[2:]
    finally:
        undo_network(before, forward)


def undo_network(before: dict, forward: str) -> None:
    """What a peer's bridge networking left: its devices, its iptables rules and chains,
    ip_forward and the FORWARD policy as they were."""
    import peers
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        for name in os.listdir("/sys/class/net"):
            if name.startswith(peers.NETDEVS) and f"netdev {name}" not in before["netdevs"]:
                with contextlib.suppress(Exception):
                    ipr.link("del", index=ipr.link_lookup(ifname=name)[0])
    table, rules, chains = None, [], []
    for line in subprocess.run(["iptables-save"], capture_output=True, text=True).stdout \
            .splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif any(w in line.lower() for w in ("docker", "cni", "podman")):
            if line.startswith("-A "):
                rules.append((table, shlex.split(line[3:])))
            elif line.startswith(":"):
                chains.append((table, line[1:].split()[0]))
    for table, rule in rules:
        subprocess.run(["iptables", "-w", "-t", table, "-D", *rule], capture_output=True)
    for op in ("-F", "-X"):
        for table, chain in chains:
            if chain not in ("INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"):
                subprocess.run(["iptables", "-w", "-t", table, op, chain], capture_output=True)
    Path("/proc/sys/net/ipv4/ip_forward").write_text(forward)
    if before.get("policy") == ["-P FORWARD ACCEPT"]:   # dockerd sets DROP, and leaves it
        subprocess.run(["iptables", "-w", "-P", "FORWARD", "ACCEPT"], capture_output=True)
    left = peers.leftovers(before)
    if left:
        print(f"  (left by the peer: {left})")


def line(name: str, times: list[float]) -> str:
    ms = sorted(t * 1e3 for t in times)
    return (f"{name:<12} median {statistics.median(ms):7.1f} ms   p90 "
            f"{ms[int(len(ms) * 0.9) - 1] if len(ms) > 1 else ms[0]:7.1f} ms   "
            f"({len(ms)} runs)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--only", default=",".join(ROWS))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/network.py needs root (bridges, NAT rules).")
    for name in args.only.split(","):
        try:
            if name in ("none", "bridge"):
                print(line(name, api(name, args.runs)), flush=True)
            elif name.startswith("cli-"):
                print(line(name, cli(name[4:], args.runs)), flush=True)
            elif name == "helper-cold":
                print(line(name, helper_cold(args.runs)), flush=True)
            elif name == "pyroute2":
                print(f"{name:<12} {pyroute2_imported()}", flush=True)
            elif name == "hundred":
                print(f"{name:<12} {hundred()}", flush=True)
            elif name in ("podman", "docker"):
                print(line(name, peer(name, args.runs)), flush=True)
            else:
                print(f"{name:<12} unknown; names: {', '.join(ROWS)}")
        except Exception as err:  # noqa: BLE001 - a row that cannot run says why
            print(f"{name:<12} not measured: {type(err).__name__}: {err}", flush=True)


if __name__ == "__main__":
    main()
