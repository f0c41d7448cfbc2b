#!/usr/bin/env python3
"""Start-up benchmark: nsmagic against its peers on the same work.

Not a test: it measures and prints one table (plus a few extra measurements and the
project's targets with PASS/MISS).

The work, identical for every contender: start to exit of ``/bin/true`` (busybox) in new
pid, mount, uts, ipc and net namespaces, with a 100 MiB memory limit and a pids limit of 64,
on a fresh overlay upper layer over one busybox root filesystem that this script builds once
per run from Debian's busybox-static (nothing is downloaded).  Contenders that cannot do part
of that work say so in the notes column; those not installed or unable to start here are
listed with the reason.

Contenders (``--only`` names; bench/contenders.py):

  nsmagic-warm   nsmagic.core.run() called in this process
  nsmagic-cold   ``nsmagic run ...`` as a fresh process (console script, or
                 ``python -m nsmagic run``)
  nsmagic-cell   ``%%container ... pass`` through a real IPython shell in this process
                 (default root filesystem: a Python cell needs Python); the same cell
                 again, so its container was made ahead
  nsmagic-cell-new  the same with only PID 1 made ahead (READY_SPARES off), as for a first
                 cell or a cell with new options
  python-floor   reference: ``python -c pass``, the floor of any Python CLI
  crun, runc     OCI bundle, fresh overlay mounted/unmounted per run (inside the timed region)
  crun-wrapper   the cost of the wrapper crun needs on a hybrid cgroup layout
  docker         ``docker run --rm`` of a busybox image, against containerd and dockerd
                 started by this script on private sockets (tests/peers.py)
  podman         ``podman run --rm`` of the same image, rootful, private storage
  bwrap          bubblewrap --unshare-all (no limits)
  unshare        util-linux unshare -fpmuin (no limits)
  overlay        reference: mkdir + overlay mount + umount + rm alone

Extra measurements (also ``--only`` names; bench/fixtures.py):

  load-ext       ``%load_ext nsmagic`` in a fresh Python process
  hundred        100 nsmagic containers running ``sleep 30``: start time, memory per idle
                 container, clean stop

Between two nsmagic runs the benchmark waits, untimed, for nsmagic's background work (what a
notebook has between two cells). bench/report.py prints the table and the targets.

Run as root with the project's venv, on a quiet machine:

  /work/main/.venv/bin/python bench/startup.py [--runs 50] [--only a,b]
                                               [--json bench/output/startup.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[1:1] = [str(REPO), str(REPO / "tests")]   # nsmagic from this checkout; peers, leaks

import contenders  # noqa: E402
import fixtures  # noqa: E402
from contenders import Contender, Skip, short_exc  # noqa: E402
from fixtures import log  # noqa: E402
from report import report  # noqa: E402

EXTRAS = ["load-ext", "hundred"]
NAMES = contenders.ORDER + EXTRAS


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="names for --only: " + ", ".join(NAMES))
    ap.add_argument("--runs", type=int, default=50, help="timed runs per contender (50)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs per contender first (3)")
    ap.add_argument("--only", default="", help="comma list of contender/extra names")
    ap.add_argument("--json", metavar="FILE", help="also write raw results as JSON")
    ap.add_argument("--containers", type=int, default=100, help="containers for 'hundred'")
    ap.add_argument("--load-ext-runs", type=int, default=10)
    args = ap.parse_args()
    args.wanted = set(NAMES)
    if args.only:
        args.wanted = {w.strip() for w in args.only.split(",") if w.strip()}
        if args.wanted - set(NAMES):
            ap.error(f"unknown names {sorted(args.wanted - set(NAMES))}; known: {NAMES}")
        if "crun" in args.wanted:
            args.wanted.add("crun-wrapper")
    return args


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        log("startup.py needs root (namespaces, cgroups, overlay mounts)")
        return 2
    if not os.path.exists(fixtures.BUSYBOX):
        log(f"{fixtures.BUSYBOX} missing: apt-get install busybox-static")
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):   # like Ctrl-C: the cleanup runs
        signal.signal(signum, interrupt)
    results: dict = {"meta": {}, "contenders": {}, "extras": {}}
    with contextlib.ExitStack() as stack:
        scene = fixtures.scene(stack)
        chosen = contenders.contenders(args.wanted, scene)
        for c in chosen:
            stack.callback(c.cleanup)
        # last registered runs first: ignore further Ctrl-C while cleaning up
        stack.callback(signal.signal, signal.SIGINT, signal.SIG_IGN)
        print_header(results["meta"], scene, args)
        active = prepare(chosen, args.warmup)
        verify(active)
        round_robin(active, args.runs)
        results["contenders"] = {c.name: {"label": c.label, "status": c.status,
                                          "reason": c.reason, "notes": c.notes, "ns": c.ns}
                                 for c in chosen}
        results["extras"] = extras(args, scene)
        results["meta"]["loadavg_end"] = fixtures.loadavg()
        print(f"# load average at end {results['meta']['loadavg_end']} "
              "(other work on this machine adds noise)")
        report(results, chosen, scene.layout, args.runs, args.warmup)
        write_json(results, args.json)
    return 0


def interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def print_header(meta: dict, scene: fixtures.Scene, args: argparse.Namespace) -> None:
    version = fixtures.tool_version
    meta.update(kernel=platform.release(), cpus=os.cpu_count(),
                python=sys.version.split()[0], cgroup_layout=scene.layout, runs=args.runs,
                warmup=args.warmup, nsmagic_origin=scene.origin, rootfs=scene.rootfs,
                busybox=version([fixtures.BUSYBOX]), loadavg_start=fixtures.loadavg(),
                peers={tool: version([tool, "--version"]) for tool in
                       ("crun", "runc", "bwrap", "unshare", "dockerd", "podman")})
    print(f"# nsmagic start-up benchmark  kernel {meta['kernel']}  {meta['cpus']} cpus  "
          f"python {meta['python']}  cgroups {scene.layout}")
    print(f"# nsmagic from: {scene.origin}; load average at start {meta['loadavg_start']}")
    print(f"# peers: {'; '.join(str(v) for v in meta['peers'].values())}")
    print(f"# busybox root built at {scene.rootfs} ({meta['busybox']})")


def prepare(chosen: list[Contender], warmup: int) -> list[Contender]:
    """Prepare and warm up each contender; those that cannot run say why."""
    active = []
    for c in chosen:
        try:
            c.prepare()
            for w in range(warmup):
                c.once(-1 - w)
            active.append(c)
        except Skip as e:
            c.status, c.reason = "skipped", str(e)
        except Exception as e:  # noqa: BLE001
            c.status, c.reason = "failed", f"warm-up failed: {short_exc(e)}"
        log(f"  {c.name}: {c.status} {c.reason}")
    return active


def verify(active: list[Contender]) -> None:
    """Untimed, once: do the limits really hold in the others' containers?"""
    for c in active:
        try:
            c.verify_result = c.verify() or ""
        except Exception as e:  # noqa: BLE001
            c.verify_result = f"check failed: {short_exc(e)}"


def round_robin(active: list[Contender], runs: int) -> None:
    """Timed: each round every contender once, the starting one rotating each round."""
    log(f"timing {len(active)} contenders x {runs} runs, round-robin ...")
    for r in range(runs):
        k = r % max(1, len(active))
        for c in active[k:] + active[:k]:
            if c.status != "ok":
                continue
            try:
                c.ns.append(c.once(r))
                c.between()
            except Exception as e:  # noqa: BLE001
                c.status, c.reason = "failed", f"run {r} failed: {short_exc(e)}"
                log(f"  {c.name}: {c.reason}")
        if (r + 1) % 10 == 0:
            log(f"  round {r + 1}/{runs}")


def extras(args: argparse.Namespace, scene: fixtures.Scene) -> dict:
    out = {}
    if "load-ext" in args.wanted:
        log("measuring %load_ext nsmagic in fresh processes ...")
        out["load_ext"] = fixtures.measure_load_ext(scene.env, args.load_ext_runs)
    if "hundred" in args.wanted:
        log(f"starting {args.containers} nsmagic containers ...")
        out["hundred"] = fixtures.hundred(scene.rootfs, args.containers)
    return out


def write_json(results: dict, path: str | None) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        print(f"# raw results written to {path}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up", file=sys.stderr)
        sys.exit(130)
