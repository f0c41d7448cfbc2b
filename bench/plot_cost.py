#!/usr/bin/env python3
"""What watching a run costs: the sampler at 10 Hz and the live plot at 4 Hz, as a share of
one core, over a real ten-second run. Not a test: it measures and prints one table, with the
project's targets (sampler < 1 %, plot < 5 %) and PASS/MISS.

The run: a container (`--mem 200M --cpus 0.5`) whose Python grows its memory by 4 MiB every
quarter second and burns some CPU, for ten seconds. Meanwhile, in this process:

  sampler   a thread that calls the run's `cgroup.usage()` (pread on kept-open cgroup files)
            every 0.1 s; its CPU is the thread's own (time.thread_time)
  plot      the main thread, every 0.25 s: Series.add of the newest samples, Plot.render
            (restore the cached background, draw the moving artists, write the stats line,
            encode the PNG), base64 and the JSON of the display message, as LiveView sends it

Also measured: a frame's cost (median, 95th percentile, the full redraws when an axis doubles),
a frame's PNG size, and the naive way (a full draw + `print_png` every frame) for comparison.

Run as root with the project's venv:

  /work/main/.venv/bin/python bench/plot_cost.py [--seconds 10] [--json bench/output/plot.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nsmagic.core import start  # noqa: E402
from nsmagic.spec import Spec  # noqa: E402

WORKLOAD = """
import time
blocks, end = [], time.monotonic() + {seconds}
while time.monotonic() < end:
    blocks.append(bytearray(4 * 2**20))
    if len(blocks) > 40:
        del blocks[:20]
    t = time.monotonic() + 0.1
    while time.monotonic() < t:
        pass
    time.sleep(0.15)
"""

TARGETS = {"sampler": 1.0, "plot": 5.0}


def sampler(cgroup, hz: float, stop: threading.Event, out: list, cost: dict) -> None:
    period = 1.0 / hz
    begin_cpu, begin = time.thread_time(), time.monotonic()
    next_at = begin
    while not stop.is_set():
        out.append(cgroup.usage())
        next_at += period
        stop.wait(max(0.0, next_at - time.monotonic()))
    cost["cpu"] = time.thread_time() - begin_cpu
    cost["wall"] = time.monotonic() - begin
    cost["reads"] = len(out)


def plot_loop(run, samples: list, hz: float, seconds: float, naive: bool) -> dict:
    from nsmagic.display import Plot, stats_line
    from nsmagic.monitor import Series
    plot = Plot(run.spec.memory, run.spec.cpus)
    series = Series(start=run.started)
    period, taken, frames, sizes = 1.0 / hz, 0, [], []
    begin_cpu, begin = time.thread_time(), time.monotonic()
    end, next_at = begin + seconds, begin
    while time.monotonic() < end:
        t0 = time.thread_time()
        new = samples[taken:]
        taken += len(new)
        series.extend(new)
        if series.samples:
            if naive:
                import io
                buf = io.BytesIO()
                plot.canvas.print_png(buf)     # a full draw, then encode
                png = buf.getvalue()
            else:
                png = plot.render(series)
            message = json.dumps({"data": {"image/png": base64.b64encode(png).decode(),
                                           "text/plain": stats_line(series)}})
            sizes.append(len(message))
            frames.append(time.thread_time() - t0)
        next_at += period
        time.sleep(max(0.0, next_at - time.monotonic()))
    return {"cpu": time.thread_time() - begin_cpu, "wall": time.monotonic() - begin,
            "frames": frames, "full_draws": plot.full_draws, "sizes": sizes}


def measure(seconds: float, naive: bool = False) -> dict:
    code = WORKLOAD.format(seconds=seconds + 0.5)
    spec = Spec.from_argv(["--mem", "200M", "--cpus", "0.5", "--", sys.executable, "-c", code])
    run = start(spec)
    try:
        if run.cgroup is None:
            sys.exit("no cgroup for the run: run as root")
        samples, stop, cost = [], threading.Event(), {}
        thread = threading.Thread(target=sampler, args=(run.cgroup, 10.0, stop, samples, cost))
        process_begin = time.process_time()
        thread.start()
        plot = plot_loop(run, samples, 4.0, seconds, naive)
        stop.set()
        thread.join()
        process = time.process_time() - process_begin
    finally:
        run.stop(grace=0.2)
        run.close()
    return {"sampler": cost, "plot": plot, "process_cpu": process, "samples": len(samples)}


def share(cpu: float, wall: float) -> float:
    return cpu / wall * 100 if wall else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--no-naive", action="store_true", help="skip the full-redraw comparison")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("plot_cost.py needs root (a real run's cgroup)")

    import matplotlib  # noqa: F401  (its import is a one-off, not part of a frame)
    r = measure(args.seconds)
    s, p = r["sampler"], r["plot"]
    sampler_share = share(s["cpu"], s["wall"])
    plot_share = share(p["cpu"], p["wall"])
    frames = sorted(p["frames"])
    median = statistics.median(frames) * 1e3
    p95 = frames[int(len(frames) * 0.95) - 1] * 1e3
    naive = None
    if not args.no_naive:
        n = measure(min(args.seconds, 5.0), naive=True)["plot"]
        naive = {"share": share(n["cpu"], n["wall"]),
                 "median_ms": statistics.median(n["frames"]) * 1e3}

    rows = [
        ("sampler, 10 Hz (usage() on the run's cgroup)", f"{sampler_share:.2f} %",
         f"< {TARGETS['sampler']:g} %", sampler_share < TARGETS["sampler"],
         f"{s['reads']} reads, {s['cpu'] / max(1, s['reads']) * 1e6:.0f} µs CPU each"),
        ("live plot, 4 Hz (render + encode + message)", f"{plot_share:.2f} %",
         f"< {TARGETS['plot']:g} %", plot_share < TARGETS["plot"],
         f"{len(frames)} frames: median {median:.1f} ms, p95 {p95:.1f} ms, "
         f"{p['full_draws']} full draws"),
    ]
    print(f"\nnsmagic live-view cost over a {args.seconds:g} s run "
          f"({os.cpu_count()} cores, share of one core)\n")
    width = max(len(row[0]) for row in rows)
    print(f"{'what':<{width}}  {'CPU':>8}  {'target':>7}  result  notes")
    for what, value, target, ok, notes in rows:
        print(f"{what:<{width}}  {value:>8}  {target:>7}  {'PASS' if ok else 'MISS':>6}  {notes}")
    print(f"\nframe message: median {statistics.median(p['sizes']) / 1024:.0f} KiB "
          f"({statistics.median(p['sizes']) * 4 / 1024:.0f} KiB/s at 4 Hz); "
          f"this process in all: {share(r['process_cpu'], p['wall']):.2f} % of a core")
    if naive:
        print(f"for comparison, a full draw + print_png every frame: "
              f"{naive['share']:.1f} % of a core, median {naive['median_ms']:.1f} ms a frame")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"seconds": args.seconds, "sampler_share": sampler_share,
                       "plot_share": plot_share, "frame_median_ms": median,
                       "frame_p95_ms": p95, "full_draws": p["full_draws"],
                       "naive": naive, "targets": TARGETS}, f, indent=2)


if __name__ == "__main__":
    main()
