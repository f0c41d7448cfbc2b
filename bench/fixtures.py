"""What the start-up benchmark sets up and measures besides the contenders: the busybox root,
fresh overlay upper layers, where nsmagic comes from, `%load_ext` in fresh processes, and 100
containers alive at once (start time, memory per idle container, a clean stop).

The package's helpers do the kernel work: the mount syscall, the cgroup layout and sweep
(nsmagic.cgroups), the leftovers scan (tests/leaks.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from leaks import leftovers, unmount_under

from nsmagic import cgroups
from nsmagic.core import settle
from nsmagic.inside.linux import MNT_DETACH, mount, umount
from nsmagic.runtime.spares import Spares

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
MEM = "100M"
MEM_BYTES = 100 * MIB
PIDS = 64
BUSYBOX = "/usr/bin/busybox"
APPLETS = ["true", "sh", "sleep", "cat", "ps", "ls", "echo", "mkdir", "mount", "umount", "id",
           "hostname", "env"]
# nsmagic options shared by all nsmagic contenders.  "--network none" is spelled out so the
# work is a bare new net namespace whatever nsmagic's default network mode is.
NSM_LIMITS = ["--mem", MEM, "--pids", str(PIDS), "--network", "none"]
CELL_LINE = "--mem 100M --pids 64 --network none --no-plot"
RUNTIME_STATE = ("/run/crun", "/run/runc")   # crun makes its own even for `crun --version`


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def short_exc(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:160]


# ---- the scene every contender shares


@dataclasses.dataclass
class Scene:
    """One benchmark run's scratch dir, busybox root, overlays, and names."""

    scratch: str
    rootfs: str
    overlays: Overlays
    tag: str                 # names the OCI runtimes' containers: nsbench-<pid>
    layout: str              # "v2", "v1", "hybrid" (nsmagic.cgroups.detect)
    env: dict                # for child processes: where nsmagic comes from
    origin: str


def scene(stack: contextlib.ExitStack) -> Scene:
    """Build the scene; `stack` undoes it (scratch, overlays, the runtimes' cgroups, nsmagic's
    spares) in reverse order at exit."""
    new_state = [d for d in RUNTIME_STATE if not os.path.exists(d)]
    stack.callback(remove_empty, new_state)
    scratch = tempfile.mkdtemp(prefix="nsbench-")
    stack.callback(remove_scratch, scratch)
    rootfs = os.path.join(scratch, "rootfs")
    build_rootfs(rootfs)
    overlays = Overlays(rootfs, os.path.join(scratch, "layers"))
    stack.callback(overlays.cleanup)
    tag = f"nsbench-{os.getpid()}"
    stack.callback(sweep_named, tag)        # after the runtimes' own delete (LIFO)
    stack.callback(drop_spares)
    cgroups.sweep()                         # what killed runs left before this one
    env, origin = nsmagic_env()
    compile_bytecode()

    return Scene(scratch, rootfs, overlays, tag, cgroups.detect().kind, env, origin)


def compile_bytecode() -> None:
    """Every module of the nsmagic timed (this checkout's) compiled to bytecode first, as
    `pip install` does: a run must not pay for compiling a source file nobody had imported
    yet (and with PYTHONDONTWRITEBYTECODE set, it would pay for it every time)."""
    import compileall
    compileall.compile_dir(str(REPO / "nsmagic"), quiet=1)


def build_rootfs(dst: str) -> None:
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc", "root", "sys/fs/cgroup"):
        os.makedirs(os.path.join(dst, d), exist_ok=True)
    os.chmod(os.path.join(dst, "tmp"), 0o1777)
    shutil.copy2(BUSYBOX, os.path.join(dst, "bin/busybox"))
    for a in APPLETS:
        os.symlink("busybox", os.path.join(dst, "bin", a))
    with open(os.path.join(dst, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(dst, "etc/group"), "w") as f:
        f.write("root:x:0:\n")


class Overlays:
    """Fresh overlay upper layers over one lower dir, with guaranteed cleanup."""

    def __init__(self, lower: str, scratch: str):
        self.lower = lower
        self.scratch = scratch
        self.active: set[str] = set()
        self.n = 0
        os.mkdir(scratch)

    def fresh(self, target: str) -> str:
        """mkdir upper/work, mount at target; returns the layer dir to drop."""
        self.n += 1
        layer = os.path.join(self.scratch, f"L{self.n}")
        os.mkdir(layer)
        os.mkdir(layer + "/u")
        os.mkdir(layer + "/w")
        mount("overlay", target, "overlay", 0,
              f"lowerdir={self.lower},upperdir={layer}/u,workdir={layer}/w")
        self.active.add(target)
        return layer

    def drop(self, target: str, layer: str) -> None:
        umount(target)
        self.active.discard(target)
        shutil.rmtree(layer)

    def cleanup(self) -> None:
        for t in list(self.active):
            with contextlib.suppress(OSError):
                umount(t, MNT_DETACH)
            self.active.discard(t)


def remove_scratch(scratch: str) -> None:
    if unmount_under(scratch):
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        log(f"# WARNING: mounts remain under {scratch}, not removing it")


def remove_empty(dirs: list[str]) -> None:
    for d in dirs:
        with contextlib.suppress(OSError):
            os.rmdir(d)


def sweep_named(tag: str) -> int:
    """rmdir empty cgroups whose name starts with tag: what a killed crun or runc left (they
    nest under their caller's group, in every hierarchy; nsmagic's own groups are
    nsmagic.cgroups.sweep's); returns how many went."""
    removed = 0
    for top in (e.path for e in os.scandir("/sys/fs/cgroup") if e.is_dir()):
        for dirpath, dirnames, _ in os.walk(top, topdown=False):
            for d in (d for d in dirnames if d.startswith(tag)):
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(dirpath, d))
                    removed += 1
    return removed


def drop_spares() -> None:
    """Drop nsmagic's ready spares, then say what this process's runs left (the next
    nsmagic start sweeps a dead runner's groups; while we live they are ours to report)."""
    Spares.close()
    left = [thing for thing in leftovers() if not thing.startswith("mount ")]
    if left:
        log(f"# at exit nsmagic left {len(left)} things behind: {left[:5]}")


def settle_spares() -> set[str]:
    """What a notebook has between two cells: time for nsmagic to finish a run's teardown and
    make the next run's spare. Without this pause that background work would be timed in
    whichever contender runs next. Returns the ready spares' group names."""
    return settle()


def nsmagic_env() -> tuple[dict, str]:
    """Environment for child processes, and where their nsmagic comes from: always this
    checkout, through PYTHONPATH when the venv's installed copy is another checkout's."""
    env = dict(os.environ)
    ours = {str(REPO), str(REPO / "bench"), str(REPO / "tests"), ""}
    spec = importlib.machinery.PathFinder.find_spec(
        "nsmagic", [p for p in sys.path if p not in ours])
    installed = str(spec.origin) if spec and spec.origin else "nowhere"
    if installed.startswith(str(REPO / "nsmagic") + os.sep):
        return env, f"installed from this checkout ({installed})"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env, f"this checkout {REPO}, through PYTHONPATH (the venv's is {installed})"


def tool_version(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001
        return f"? ({e})"


def loadavg() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


# ---- %load_ext nsmagic in fresh processes


LOAD_EXT_CHILD = r"""
import json, sys, time
t0 = time.perf_counter_ns()
from IPython.testing.globalipapp import start_ipython
ip = start_ipython()
t1 = time.perf_counter_ns()
err = None
if sys.argv[1] == "ext":
    try:
        import contextlib, io
        said = io.StringIO()
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            ip.run_line_magic("load_ext", "nsmagic")
        if "container" not in ip.magics_manager.magics.get("cell", {}):
            text = " ".join(said.getvalue().split())[:140] or "no message"
            err = f"%load_ext nsmagic did not register %%container yet ({text})"
    except Exception as e:
        err = f"{type(e).__name__}: {e}"
t2 = time.perf_counter_ns()
print(json.dumps({"start": t1 - t0, "ext": t2 - t1, "err": err}))
"""


def measure_load_ext(env: dict, n: int) -> dict:
    """Fresh process each time; alternates 'ext' and 'plain' runs; the first pair warms up
    (page cache, .pyc)."""
    res: dict = {"ext_total": [], "ext_only": [], "plain": [], "err": None}
    for i in range(n + 1):
        for mode in ("ext", "plain") if i % 2 == 0 else ("plain", "ext"):
            r = subprocess.run([sys.executable, "-c", LOAD_EXT_CHILD, mode], check=False,
                               env=env, capture_output=True, text=True,
                               stdin=subprocess.DEVNULL, timeout=120, cwd="/")
            if r.returncode != 0:
                text = (r.stderr.strip() or r.stdout.strip() or "(no output)").splitlines()
                res["err"] = f"exit {r.returncode}: {text[-1][:200]}"
                return res
            d = json.loads(r.stdout.strip().splitlines()[-1])
            if d["err"]:
                res["err"] = d["err"]
                return res
            if i == 0:
                continue
            if mode == "ext":
                res["ext_total"].append(d["start"] + d["ext"])
                res["ext_only"].append(d["ext"])
            else:
                res["plain"].append(d["start"])
    return res


# ---- 100 containers alive at once


def hundred(rootfs: str, n: int) -> dict:
    """Start n nsmagic containers running sleep 30; time, memory, clean stop."""
    res: dict = {"n": n}
    try:
        start = importlib.import_module("nsmagic.core").start
        Spec = importlib.import_module("nsmagic.spec").Spec
    except Exception as e:  # noqa: BLE001
        res["err"] = f"nsmagic start() API not importable yet ({short_exc(e)})"
        return res
    argv = NSM_LIMITS + ["--rootfs", rootfs, "--", "/bin/sleep", "30"]
    gc.collect()
    time.sleep(0.5)
    before, handles = Snapshot.take(), []
    try:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            handles.append(start(Spec.from_argv(argv), out=None, err=None))
        res["start_all_s"] = (time.perf_counter_ns() - t0) / 1e9
        time.sleep(1.5)  # let every container reach its idle state
        gc.collect()
        res.update(memory_per_container(before, n))
    except Exception as e:  # noqa: BLE001
        res["err"] = f"during start/measure: {short_exc(e)}"
        res["trace"] = traceback.format_exc()
    finally:
        res.update(stop_all(handles))
    res.update(left_after_stop(before.leftovers))
    return res


@dataclasses.dataclass
class Snapshot:
    """This process, the machine's processes and memory, and nsmagic's leftovers, before."""

    pids: set[int]
    own_pss: int
    available: int
    leftovers: set[str]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(set(proc_table()), pss_kib(os.getpid()), mem_available_kib(),
                   set(leftovers()))


def memory_per_container(before: Snapshot, n: int) -> dict:
    """PSS of nsmagic's new helper processes plus this process's PSS growth, per container
    (the workload excluded); MemAvailable's drop, kernel objects included, as a cross-check."""
    table, me = proc_table(), os.getpid()
    new = {p for p in table if p not in before.pids}
    own_pidns = ns_of(me, "pid")
    # the workload: the `sleep` processes in a pid namespace other than ours
    workload = {p for p in new if table[p][1] == "sleep" and ns_of(p, "pid") != own_pidns}
    w_net, w_pid = {ns_of(p, "net") for p in workload}, {ns_of(p, "pid") for p in workload}
    w_cg = {memcg_of(p) for p in workload}
    # nsmagic's helpers: new processes that are our descendants or share a container's net
    # ns, pid ns or memory cgroup (catches daemonized helpers, not unrelated processes)
    mine = descendants(me, table)
    helpers = {p for p in new - workload if p in mine or ns_of(p, "net") in w_net
               or ns_of(p, "pid") in w_pid or memcg_of(p) in w_cg}
    comms: dict[str, int] = {}
    for p in helpers:
        comms[table[p][1]] = comms.get(table[p][1], 0) + 1
    helper_pss, workload_pss = sum(map(pss_kib, helpers)), sum(map(pss_kib, workload))
    own_delta, avail_drop = pss_kib(me) - before.own_pss, before.available - mem_available_kib()
    return {
        "workload_procs": len(workload), "helper_procs": len(helpers), "helper_comms": comms,
        "distinct_netns": len(w_net), "distinct_cgroups": len(w_cg),
        "helper_pss_kib": helper_pss, "workload_pss_kib": workload_pss,
        # own delta may be negative (pages now shared with forked helpers): keep the sign
        "own_pss_delta_kib": own_delta, "per_container_mib": (helper_pss + own_delta) / n / 1024,
        "memavail_delta_kib": avail_drop,
        "per_container_memavail_mib": (avail_drop - workload_pss) / n / 1024,
    }


def stop_all(handles: list) -> dict:
    t0, errors = time.perf_counter_ns(), []
    for h in handles:
        try:
            h.stop()
        except Exception as e:  # noqa: BLE001
            errors.append(short_exc(e))
    for h in handles:
        try:
            h.wait()
            h.close()   # removes the cgroup
        except Exception as e:  # noqa: BLE001
            errors.append(short_exc(e))
    return {"stop_all_s": (time.perf_counter_ns() - t0) / 1e9, "stop_errors": errors[:5],
            "stop_error_count": len(errors)}


def left_after_stop(before: set[str]) -> dict:
    """nsmagic's leftovers (tests/leaks.py: groups, mounts, processes of this process's runs,
    ready spares excepted) new since `before`: right after the stop, and after 3 s if any."""
    res: dict = {}
    for when, pause in (("immediately", 0.2), ("after 3 s", 3.0)):
        time.sleep(pause)
        res[f"leftovers_{when}"] = left = sorted(set(leftovers()) - before)
        if not left:
            break
    return res


# ---- /proc readings for the memory measurement


def proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) for every live process."""
    out = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rindex(")") + 2:].split()
        if fields[0] != "Z":
            out[int(d)] = (int(fields[1]), s[s.index("(") + 1: s.rindex(")")])
    return out


def descendants(root: int, table: dict[int, tuple[int, str]]) -> set[int]:
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, stack = set(), [root]
    while stack:
        for c in kids.get(stack.pop(), []):
            if c not in out:
                out.add(c)
                stack.append(c)
    return out


def pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def ns_of(pid: int, kind: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return ""


def memcg_of(pid: int) -> str:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if "memory" in parts[1].split(",") or (parts[0] == "0" and parts[2] != "/"):
                return line.strip()
    return ""
