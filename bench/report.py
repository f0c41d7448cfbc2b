"""The start-up benchmark's report: the table, its notes, the extras, and each target with
PASS or MISS and its margin."""

from __future__ import annotations

import statistics

from contenders import Contender
from fixtures import CELL_LINE, MEM_BYTES, NSM_LIMITS, PIDS

# Ratios of medians, nsmagic row against a yardstick row.
TARGETS_VS_CRUN = [("nsmagic-warm", "nsmagic warm median", 0.5),
                   ("nsmagic-cell", "%%container pass cell median", 1.0),
                   ("nsmagic-cold", "nsmagic run (cold) median", 1.5)]
TARGETS_VS_PEERS = [("nsmagic-cold", "docker", "nsmagic run (cold) median", 0.25),
                    ("nsmagic-cold", "podman", "nsmagic run (cold) median", 0.4)]
TARGET_LOAD_EXT_MS = 150.0
TARGET_HUNDRED_S = 2.0
TARGET_PER_CONTAINER_MIB = 2.0


def ms(ns: float) -> float:
    return ns / 1e6


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def verdict(value: float, limit: float, unit: str, scale_ms: float | None = None) -> str:
    """PASS/MISS for value <= limit; scale_ms converts a ratio to ms for the margin."""
    tag, diff, word = ("PASS", limit - value, "under") if value <= limit else (
        "MISS", value - limit, "over")
    pct = diff / limit * 100 if limit else 0.0
    if scale_ms is not None:
        return f"{tag} ({diff:.2f}x = {diff * scale_ms:.1f} ms {word}, {pct:.0f}%)"
    return f"{tag} ({diff:.2f} {unit} {word}, {pct:.0f}%)"


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    right = {1, 2, 3, 4, 5}

    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                         for i, c in enumerate(r)).rstrip()

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def report(results: dict, contenders: list[Contender], layout: str, runs: int,
           warmup: int) -> None:
    stats = statistics_of(contenders)
    base, base_desc = ratio_base(stats)
    results["meta"].update(ratio_base_ms=base, stats=stats)
    print()
    print(f"## start to exit of /bin/true, {runs} runs each after {warmup} warm-up, "
          f"round-robin; times in ms; x crun = median / ({base_desc})")
    print_table([row(c, stats.get(c.name), base) for c in contenders],
                ["contender", "median", "min", "max", "runs", "x crun", "notes"])
    print_notes(contenders, layout)
    targets = ratio_targets(stats, base, {c.name: c.reason for c in contenders})
    extras = results["extras"]
    if "load_ext" in extras:
        targets += report_load_ext(extras["load_ext"])
    if "hundred" in extras:
        targets += report_hundred(extras["hundred"])
    print()
    print("## targets")
    for t in targets:
        print(f"  {t}")
    results["targets"] = targets


def statistics_of(contenders: list[Contender]) -> dict[str, dict]:
    return {c.name: {"median": ms(statistics.median(c.ns)), "min": ms(min(c.ns)),
                     "max": ms(max(c.ns)), "n": len(c.ns)} for c in contenders if c.ns}


def ratio_base(stats: dict[str, dict]) -> tuple[float | None, str]:
    """crun's median, less its wrapper's where crun needed one (a hybrid layout)."""
    if "crun" not in stats:
        return None, "no crun baseline"
    crun = stats["crun"]["median"]
    if "crun-wrapper" not in stats:
        return crun, f"crun median {crun:.1f} ms"
    wrapper = stats["crun-wrapper"]["median"]
    return crun - wrapper, (f"crun median minus wrapper median = {crun:.1f} - {wrapper:.1f} = "
                            f"{crun - wrapper:.1f} ms")


def row(c: Contender, s: dict | None, base: float | None) -> list[str]:
    if s and c.status == "ok":
        ratio = f"{s['median'] / base:.2f}" if base else "-"
        return [c.label, fmt_ms(s["median"]), fmt_ms(s["min"]), fmt_ms(s["max"]), str(s["n"]),
                ratio, c.notes]
    partial = f" ({len(c.ns)} runs done)" if c.ns else ""
    return [c.label, "-", "-", "-", str(len(c.ns)), "-",
            f"{c.status.upper()}: {c.reason}{partial}"]


def print_notes(contenders: list[Contender], layout: str) -> None:
    names = {c.name for c in contenders}
    print()
    print("notes:")
    print("  * all contenders: new pid+mount+uts+ipc+net namespaces; nsmagic/crun/runc/docker/"
          f"podman also memory {MEM_BYTES} B + pids {PIDS}; busybox root unless noted.")
    print("  * crun/runc/unshare: 'fresh overlay' = mkdir upper+work, mount overlay, run, umount, "
          "rm -r upper, all INSIDE the timed region (nsmagic's time includes its overlay).")
    if "crun" in names and layout == "hybrid":
        print("  * crun 1.8 refuses this hybrid cgroup layout, so it ran as `unshare -m "
              "--propagation private sh -c 'umount /sys/fs/cgroup/unified && exec crun run "
              "...'` (limits still enforced, v1 controllers); the wrapper alone is the "
              "'crun's wrapper alone' row and is subtracted from crun's median for the ratio "
              "base.")
    if any(c.name in ("docker", "podman") and c.ns for c in contenders):
        print("  * docker/podman: `run --rm --network none --memory 100m --pids-limit 64` of a "
              "busybox image imported from busybox-static, against a private daemon and "
              "storage under /tmp/nsmagic-peers-* (tests/peers.py); podman uses runc here when "
              "the layout is hybrid (crun refuses it).")
    for c in contenders:
        if c.verify_result:
            print(f"  * limits check (untimed) {c.name}: {c.verify_result}")
    print(f"  * nsmagic contenders pass `{' '.join(NSM_LIMITS)}`; cell line "
          f"`%%container {CELL_LINE}`.")


def ratio_targets(stats: dict[str, dict], base: float | None,
                  reasons: dict[str, str]) -> list[str]:
    """Each nsmagic row against crun (less its wrapper), then the cold CLI against Docker and
    Podman; n/a with the reason when a row is missing."""
    def why(name: str) -> str:
        return f"{name}: {reasons.get(name) or 'not measured'}"

    targets = []
    for name, label, limit in TARGETS_VS_CRUN:
        missing = why(name) if name not in stats else why("crun")
        targets.append(ratio_target(stats, name, label, "crun", base, limit, missing))
    for name, peer, label, limit in TARGETS_VS_PEERS:
        yardstick = stats[peer]["median"] if peer in stats else None
        missing = why(name) if name not in stats else why(peer)
        targets.append(ratio_target(stats, name, label, peer, yardstick, limit, missing))
    return targets


def ratio_target(stats: dict[str, dict], name: str, label: str, against: str,
                 base: float | None, limit: float, missing: str) -> str:
    head = f"{label:<34} <= {limit:.2f} x {against}"
    if name not in stats or base is None:
        return f"{head}: n/a ({missing})"
    r = stats[name]["median"] / base
    return (f"{head}: {r:.2f} x ({stats[name]['median']:.1f} ms vs {limit * base:.1f} ms) "
            f"{verdict(r, limit, 'x', scale_ms=base)}")


def report_load_ext(le: dict) -> list[str]:
    label = f"{'%load_ext nsmagic':<34} < {TARGET_LOAD_EXT_MS:.0f} ms"
    print()
    if le.get("err"):
        print(f"## %load_ext nsmagic: not measured: {le['err']}")
        return [f"{label}: n/a (nsmagic extension not loadable)"]
    own = ms(statistics.median(le["ext_only"]))
    plain = ms(statistics.median(le["plain"]))
    diff = ms(statistics.median(le["ext_total"])) - plain
    le["summary_ms"] = {"load_ext_own": own, "total_minus_plain": diff, "plain": plain}
    print(f"## %load_ext nsmagic in a fresh process, median of {len(le['ext_only'])}: "
          f"{own:.1f} ms (load_ext timed alone after start_ipython); cross-check "
          f"median(start_ipython+load_ext) - median(plain start_ipython {plain:.1f} ms)"
          f" = {diff:.1f} ms (noisy: difference of two large medians)")
    return [f"{label}: {own:.1f} ms {verdict(own, TARGET_LOAD_EXT_MS, 'ms')}"]


def report_hundred(h: dict) -> list[str]:
    n = h["n"]
    started = f"{f'{n} containers started':<34} < {TARGET_HUNDRED_S:.0f} s"
    memory = f"{'memory per idle container':<34} < {TARGET_PER_CONTAINER_MIB:.0f} MiB"
    print()
    if h.get("err") and "start_all_s" not in h:
        print(f"## {n} containers: not measured: {h['err']}")
        return [f"{started}: n/a", f"{memory}: n/a"]
    print(f"## {n} nsmagic containers running `sleep 30` (busybox root, own cgroup and net "
          "namespace each)")
    if h.get("err"):
        print(f"  ERROR {h['err']}")
    print(f"  start all: {h['start_all_s']:.2f} s; stop+wait all: {h.get('stop_all_s', 0):.2f} s;"
          f" stop errors: {h.get('stop_error_count')} {h.get('stop_errors') or ''}")
    targets = [f"{started}: {h['start_all_s']:.2f} s "
               f"{verdict(h['start_all_s'], TARGET_HUNDRED_S, 's')}"]
    if "per_container_mib" in h:
        print_memory(h, n)
        v = h["per_container_mib"]
        targets.append(f"{memory}: {v:.2f} MiB {verdict(v, TARGET_PER_CONTAINER_MIB, 'MiB')}")
    clean = print_leftovers(h)
    targets.append(f"{'clean after stopping all':<34}: "
                   + ("PASS" if clean else "MISS (still left after 3 s; listed above)"))
    return targets


def print_memory(h: dict, n: int) -> None:
    print(f"  workload processes: {h['workload_procs']} (distinct net ns {h['distinct_netns']}, "
          f"distinct cgroups {h['distinct_cgroups']}); nsmagic helper processes: "
          f"{h['helper_procs']} {h['helper_comms']}")
    print(f"  memory per container (method: PSS from /proc/<pid>/smaps_rollup of all new "
          f"non-workload processes started by nsmagic + PSS growth of this process, / {n}): "
          f"{h['per_container_mib']:.3f} MiB [helpers {h['helper_pss_kib']} KiB, this process "
          f"{h['own_pss_delta_kib']:+d} KiB, workload PSS {h['workload_pss_kib']} KiB excluded]")
    print(f"  cross-check incl. kernel objects (MemAvailable drop {h['memavail_delta_kib']} KiB "
          f"minus workload PSS, / {n}): {h['per_container_memavail_mib']:.3f} MiB")


def print_leftovers(h: dict) -> bool:
    """Print what the stop left (tests/leaks.py's scan); True when, in the end, nothing."""
    clean = True
    for when in ("immediately", "after 3 s"):
        left = h.get(f"leftovers_{when}")
        if left is not None:
            clean = not left
            print(f"  after stop+wait+close, {when}: "
                  + ("CLEAN" if clean else f"LEFTOVERS: {len(left)} {left[:5]}"))
    return clean
