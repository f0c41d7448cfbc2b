#!/usr/bin/env python3
"""A cell's time as a person sees it: from the execute request to the kernel's idle status,
through a real kernel and jupyter_client, as a frontend measures it. Not a test: it prints
one table (median, 10th and 90th percentile per row) and the targets with PASS/MISS.

Rows (``--only`` names):

  plain        a plain ``pass`` cell: the floor of any cell
  no-plot      ``%%container --no-plot`` with ``pass``
  default      ``%%container`` with ``pass`` and the default live view
  display      ``%%container --no-plot``: display(HTML) and a last expression (Out[n])
  input        ``%%container --no-plot --input a``, a 10 MB NumPy array, summed inside
  output       ``%%container --no-plot --output a``, a 10 MB NumPy array made inside
  figure       ``%%container --no-plot``: a matplotlib figure shown with plt.show()
  short        ``%%container --no-plot`` sleeping 0.3 s
  short-plot   ``%%container`` sleeping 0.3 s, default live view
  long-plot    ``%%container`` sleeping 1.5 s, default live view (its plot is shown)

Between two cells it waits, untimed, for nsmagic's background work (what a notebook has
between two cells: the last run's teardown, the next run's container made ahead).

Run as root with the project's venv, on a quiet machine:

  /work/main/.venv/bin/python bench/roundtrip.py [--runs 30] [--only plain,default]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

ROWS = {
    "plain": "pass",
    "no-plot": "%%container --no-plot\npass",
    "default": "%%container\npass",
    "display": "%%container --no-plot\nfrom IPython.display import HTML, display\n"
               "display(HTML('<b>bold</b>'))\n6 * 7",
    "input": "%%container --no-plot --input a\nint(a.sum())",
    "output": "%%container --no-plot --output a\nimport numpy as np\n"
              "a = np.ones(10 * 2**20 // 8)",
    "figure": "%%container --no-plot\nimport matplotlib.pyplot as plt\n"
              "plt.plot([1, 3, 2]); plt.show()",
    "short": "%%container --no-plot\nimport time; time.sleep(0.3)",
    "short-plot": "%%container\nimport time; time.sleep(0.3)",
    "long-plot": "%%container\nimport time; time.sleep(1.5)",
}
SETUP = ("%load_ext nsmagic\nimport numpy as np\na = np.ones(10 * 2**20 // 8)\n"
         "from nsmagic.core import settle as _settle")
# (row, against, most ms more): the targets
TARGETS = [("default", "plain", 20.0)]


def execute(kc, code: str, timeout: float = 120) -> float:
    """Seconds from the request to the idle status of its parent; fails on an error."""
    begin = time.perf_counter()
    msg_id = kc.execute(code)
    failed = None
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "error":
            failed = msg["content"]
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            elapsed = time.perf_counter() - begin
            break
    kc.get_shell_msg(timeout=timeout)
    if failed:
        raise RuntimeError(f"{code!r} failed: {failed['ename']}: {failed['evalue']}")
    return elapsed


def between(kc) -> None:
    """Untimed: nsmagic's background work done, the output of a late frame drained."""
    execute(kc, "_settle()")
    time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", default="", help="comma list of: " + ", ".join(ROWS))
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(ROWS)
    unknown = set(names) - set(ROWS)
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}; known: {', '.join(ROWS)}")
    if os.geteuid() != 0:
        print("roundtrip.py needs root (namespaces, cgroups, overlay mounts)", file=sys.stderr)
        return 2
    from jupyter_client.manager import KernelManager
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        execute(kc, SETUP)
        times = {name: [] for name in names}
        for r in range(args.warmup + args.runs):
            for name in names[r % len(names):] + names[:r % len(names)]:
                between(kc)
                elapsed = execute(kc, ROWS[name])
                if r >= args.warmup:
                    times[name].append(elapsed * 1e3)
            print(f"round {r + 1}/{args.warmup + args.runs}", file=sys.stderr, flush=True)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    report(times, args.runs)
    return 0


def report(times: dict[str, list[float]], runs: int) -> None:
    print(f"\n## execute request to idle through a real kernel, {runs} runs each, ms")
    print(f"{'row':<12} {'median':>8} {'p10':>8} {'p90':>8}  cell")
    medians = {}
    for name, values in times.items():
        values.sort()
        medians[name] = statistics.median(values)
        p10, p90 = values[len(values) // 10], values[(len(values) * 9) // 10]
        first = ROWS[name].replace("\n", " ⏎ ")
        print(f"{name:<12} {medians[name]:8.1f} {p10:8.1f} {p90:8.1f}  "
              f"{first[:60]}")
    for row, against, most in TARGETS:
        if row in medians and against in medians:
            more = medians[row] - medians[against]
            verdict = "PASS" if more <= most else "MISS"
            print(f"{verdict}: {row} within {most:.0f} ms of {against} "
                  f"({more:.1f} ms more)")


if __name__ == "__main__":
    sys.exit(main())
