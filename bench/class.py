#!/usr/bin/env python3
"""A class at once: N kernels started through jupyter_client, all running their cells at the
same time, each cell a `%%container --mem 64M --pids 64` with the live view on, against the
same cells run by one kernel alone. Not a test: it measures and prints one table.

As root (where the Hub tier runs) each kernel is a student of its own: a user made for the
run (nsmagic-stu1..N), given a subtree by `nsmagic setup-user` and started inside it, as
JupyterHub's hook starts a server (docs/jupyterhub.md); as a user, every kernel is that user.

Reported: cell latency (p50, p95, max; the first cell, which starts the kernel's fork server,
apart) for the class and for one kernel alone; failures (target 0); host memory per kernel
(PSS of the kernel and its fork server) and per container (its cgroup's memory, sampled while
it runs); the CPU the runner side takes (kernels and fork servers: the follow loop, the
sampler and the plot together), in core-seconds and per cell, and with --no-plot beside it
when --compare-plot; and what is left once every kernel has shut down (target nothing).

    /work/main/.venv/bin/python bench/class.py                 # 8 kernels: CI-sized, minutes
    /work/main/.venv/bin/python bench/class.py --kernels 40 --json bench/output/class.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

CELL = """%%container --mem {mem} --pids {pids}{extra}
x = bytearray(32 << 20)
for i in range(0, len(x), 4096):
    x[i] = 1
import time
time.sleep({sleep})
"""


# --- the kernels

class Student:
    """One kernel (as a user of its own, or as the caller) and its client."""

    def __init__(self, name: str | None, package: str, runtime: str):
        from jupyter_client import KernelManager
        self.name = name
        self.entry = None
        self.km = KernelManager(kernel_name="python3")
        self.km.connection_file = os.path.join(runtime, f"kernel-{name or os.getpid()}.json")
        env = {**os.environ, "PYTHONPATH": package}
        kwargs = {}
        if name:
            import pwd

            from students import become, env_of
            self.entry = pwd.getpwnam(name)
            env = env_of(self.entry, PYTHONPATH=package)
            drop = become(self.entry, join=True)
            connection, uid, gid = self.km.connection_file, self.entry.pw_uid, self.entry.pw_gid

            def preexec():   # jupyter_client writes the file (root's, 0600) just before
                os.chown(connection, uid, gid)
                drop()
            kwargs = {"preexec_fn": preexec, "cwd": self.entry.pw_dir}
        # the kernel's own output (its warnings, a crash) to a log beside its connection file
        self.log = open(self.km.connection_file.replace(".json", ".log"), "w")
        self.km.start_kernel(env=env, stdout=self.log, stderr=self.log, **kwargs)
        self.client = self.km.blocking_client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=120)
        self.latencies: list[float] = []
        self.container_cpu: list[float] = []
        self.failures: list[str] = []
        self.run("%load_ext nsmagic")

    def run(self, code: str, timeout: float = 300) -> tuple[float, str | None]:
        """Execute code; (seconds to the reply, the error or None). The container's own CPU
        time comes back in the same reply (a user expression on `_container`)."""
        t0 = time.monotonic()
        msg_id = self.client.execute(code, user_expressions={
            "cpu": "_container.cpu_s if '_container' in dir() and _container else 0"})
        while True:
            reply = self.client.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        took = time.monotonic() - t0
        content = reply["content"]
        error = None if content["status"] == "ok" else f"{content.get('ename')}: " \
                                                       f"{content.get('evalue')}"
        cpu = content.get("user_expressions", {}).get("cpu", {}).get("data", {})
        self.container_cpu.append(float(cpu.get("text/plain", "0") or 0))
        self._drain()
        return took, error

    def _drain(self) -> None:
        """Throw away iopub (frames, output): a frontend would render it; we only count."""
        while True:
            try:
                self.client.get_iopub_msg(timeout=0)
            except Exception:  # noqa: BLE001 - queue.Empty, whatever the client raises
                return

    def cells(self, cell: str, count: int, start: threading.Barrier | None = None) -> None:
        if start:
            start.wait()
        for _ in range(count):
            took, error = self.run(cell)
            self.latencies.append(took)
            if error:
                self.failures.append(error)

    def pids(self) -> list[int]:
        """The kernel and its fork server (the runner side of every cell)."""
        pid = self.km.provisioner.pid if self.km.provisioner else None
        return [pid, *_children(pid)] if pid else []

    def shutdown(self) -> None:
        self.client.stop_channels()
        self.km.shutdown_kernel(now=False)
        self.km.cleanup_resources()
        self.log.close()


def _children(pid: int) -> list[int]:
    """Direct children that are no container (the fork server, `python -I -S`)."""
    found = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(p) for p in f.read().split()]
    except OSError:
        return []
    for kid in kids:
        try:
            with open(f"/proc/{kid}/cmdline", "rb") as f:
                if b"zygote" in f.read():
                    found.append(kid)
        except OSError:
            pass
    return found


# --- what the machine says

def pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class Sampler(threading.Thread):
    """Every half second: the memory of every container of these kernels (their run groups
    are named after them: others' runs on the machine are not counted), and their count."""

    def __init__(self, kernel_pids: list[int]):
        super().__init__(daemon=True)
        self.kernel_pids = set(kernel_pids)
        self.per_container: list[float] = []
        self.most = 0
        self._done = threading.Event()

    def run(self) -> None:
        from nsmagic.ps import owner, running  # containers, not spares made ahead
        while not self._done.wait(0.5):
            groups = []
            for cg in running():
                if owner(cg) in self.kernel_pids:
                    groups.append(cg)
                else:
                    cg.close()
            used = []
            for cg in groups:
                try:
                    used.append(cg.usage().memory_current)
                finally:
                    cg.close()
            used = [u for u in used if u > 0]
            if used:
                self.per_container.append(statistics.mean(used))
                self.most = max(self.most, len(used))

    def stop(self) -> None:
        self._done.set()
        self.join()


def leftovers(uids: list[int], kernel_pids: list[int], within: float = 5.0) -> list[str]:
    """What is still there `within` seconds after the kernels shut down (a kernel hands its
    last teardown to a thread that finishes after it replied)."""
    deadline = time.monotonic() + within
    while True:
        found = _scan(uids, kernel_pids)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _scan(uids: list[int], kernel_pids: list[int]) -> list[str]:
    """The kernels' run groups (nsmagic-<kernel pid>-*), any process still in one, and any
    process of the students made for the run; not a zombie only init has left to reap
    (tests/leaks.py: nothing of it runs, and this machine's init reaps late)."""
    import glob

    from leaks import _zombie
    names = tuple(f"nsmagic-{pid}-" for pid in kernel_pids)
    found = [g for g in glob.glob("/sys/fs/cgroup/**/nsmagic-*-*", recursive=True)
             if os.path.basename(g).startswith(names) and os.path.isdir(g)]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if _zombie(pid):
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid in uids:
                found.append(f"process {pid} ({_comm(pid)}, uid {os.stat(f'/proc/{pid}').st_uid})")
                continue
            with open(f"/proc/{pid}/cgroup") as f:
                if any(n in f.read() for n in names):
                    found.append(f"process {pid} ({_comm(pid)}, in a run's group)")
        except OSError:
            pass
    return found


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
    except OSError:
        return "?"


# --- the run

def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    return {"n": len(values), "p50": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "max": ordered[-1]}


def class_run(students: list[Student], cell: str, count: int) -> dict:
    before = {id(s): [cpu_seconds(p) for p in s.pids()] for s in students}
    sampler = Sampler([s.pids()[0] for s in students])
    sampler.start()
    start = threading.Barrier(len(students))
    threads = [threading.Thread(target=s.cells, args=(cell, count, start)) for s in students]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    sampler.stop()
    cpu = sum(cpu_seconds(p) - c for s in students for p, c in zip(s.pids(), before[id(s)]))
    return {"wall_s": wall, "runner_cpu_s": cpu, "sampler": sampler}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", type=int, default=8)
    ap.add_argument("--cells", type=int, default=20)
    ap.add_argument("--sleep", type=float, default=1.5,
                    help="seconds each cell sleeps (the live view draws a run from 1 s on)")
    ap.add_argument("--users", choices=("auto", "yes", "no"), default="auto",
                    help="a user per kernel (root only; auto: when root)")
    ap.add_argument("--compare-plot", action="store_true",
                    help="run the class again with --no-plot, for the plot's share")
    ap.add_argument("--json", help="write the numbers here too")
    args = ap.parse_args(argv)
    as_users = args.users == "yes" or (args.users == "auto" and os.geteuid() == 0)
    report = Report(args)
    with Classroom(args.kernels, as_users) as room:
        cell = CELL.format(mem="64M", pids=64, extra="", sleep=args.sleep)
        alone = room.students[0]
        alone.cells(cell, args.cells)
        report.alone = list(alone.latencies)
        alone.latencies.clear()
        for s in room.students[1:]:
            s.run(cell)   # each kernel's fork server started: the class measures warm kernels
        report.idle_pss = room.kernel_pss()
        report.live = class_run(room.students, cell, args.cells)
        report.students = room.students
        report.live_latencies = [t for s in room.students for t in s.latencies]
        report.container_cpu = [c for s in room.students for c in s.container_cpu[-args.cells:]]
        if args.compare_plot:
            for s in room.students:
                s.latencies.clear()
            no_plot = CELL.format(mem="64M", pids=64, extra=" --no-plot", sleep=args.sleep)
            report.no_plot = class_run(room.students, no_plot, args.cells)
            report.no_plot_latencies = [t for s in room.students for t in s.latencies]
    report.left = room.left
    print(report.text())
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report.numbers(), f, indent=1)
    return 0 if not report.failures() and not room.left else 1


class Classroom:
    """The kernels, started (as users made for the run, or as the caller), and everything
    removed at the end; what was left after they shut down is in `left`."""

    def __init__(self, count: int, as_users: bool):
        self.count, self.as_users = count, as_users
        self.students: list[Student] = []
        self.users = []
        self.left: list[str] = []

    def __enter__(self) -> Classroom:
        try:
            return self._start()
        except BaseException:
            self.__exit__()   # users and kernels made so far go too
            raise

    def _start(self) -> Classroom:
        from students import make_users
        self.package = tempfile.mkdtemp(prefix="nsmagic-class-pkg-")
        shutil.copytree(os.path.join(REPO, "nsmagic"), os.path.join(self.package, "nsmagic"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["chmod", "-R", "a+rX", self.package], check=True)
        self.runtime = tempfile.mkdtemp(prefix="nsmagic-class-run-")
        os.chmod(self.runtime, 0o755)
        if self.as_users:
            self.users = make_users(self.count)
            for entry in self.users:
                subprocess.run([sys.executable, "-m", "nsmagic", "setup-user", entry.pw_name,
                                "--mem", "2G", "--pids", "2048"], cwd=REPO, check=True,
                               capture_output=True)
        names = [u.pw_name for u in self.users] or [None] * self.count
        for name in names:
            self.students.append(Student(name, self.package, self.runtime))
        self.kernel_pids = [s.pids()[0] for s in self.students]
        return self

    def kernel_pss(self) -> list[int]:
        return [sum(pss(p) for p in s.pids()) for s in self.students]

    def __exit__(self, *exc) -> None:
        from students import remove_user
        if not hasattr(self, "package"):
            return
        for s in self.students:
            try:
                s.shutdown()
            except Exception as err:  # noqa: BLE001 - shut the others down anyway
                print(f"class: a kernel did not shut down: {err}", file=sys.stderr)
        self.left = leftovers([u.pw_uid for u in self.users], getattr(self, "kernel_pids", []))
        for entry in self.users:
            remove_user(entry.pw_name)
        shutil.rmtree(self.package, ignore_errors=True)
        shutil.rmtree(self.runtime, ignore_errors=True)


class Report:
    def __init__(self, args):
        self.args = args
        self.alone: list[float] = []
        self.live: dict = {}
        self.no_plot: dict | None = None
        self.no_plot_latencies: list[float] = []
        self.live_latencies: list[float] = []
        self.container_cpu: list[float] = []
        self.students: list[Student] = []
        self.idle_pss: list[int] = []
        self.left: list[str] = []

    def failures(self) -> list[str]:
        return [f for s in self.students for f in s.failures]

    def numbers(self) -> dict:
        class_lat = self.live_latencies
        cells = len(class_lat)
        sampler = self.live.get("sampler")
        out = {
            "kernels": self.args.kernels, "cells_per_kernel": self.args.cells,
            "as_users": bool(self.students and self.students[0].name),
            "alone": percentiles(self.alone[1:]), "alone_first_cell_s": self.alone[0],
            "class": percentiles(class_lat), "class_wall_s": self.live.get("wall_s"),
            "failures": len(self.failures()), "failure_examples": self.failures()[:3],
            "kernel_pss_mib": statistics.mean(self.idle_pss) / 2**20 if self.idle_pss else None,
            "container_mib": (statistics.mean(sampler.per_container) / 2**20
                              if sampler and sampler.per_container else None),
            "containers_at_once_max": sampler.most if sampler else None,
            "runner_cpu_s": self.live.get("runner_cpu_s"),
            "runner_cpu_ms_per_cell": (1e3 * self.live["runner_cpu_s"] / cells
                                       if cells else None),
            "container_cpu_ms_per_cell": (1e3 * statistics.mean(self.container_cpu)
                                          if self.container_cpu else None),
            "left_after_shutdown": self.left,
        }
        if self.no_plot:
            n = len(self.no_plot_latencies) or 1
            out["no_plot"] = {**percentiles(self.no_plot_latencies),
                              "runner_cpu_s": self.no_plot["runner_cpu_s"],
                              "runner_cpu_ms_per_cell": 1e3 * self.no_plot["runner_cpu_s"] / n,
                              "wall_s": self.no_plot["wall_s"]}
        return out

    def text(self) -> str:
        n = self.numbers()
        ms = lambda d, k: f"{1e3 * d[k]:8.0f}" if d.get(k) is not None else "       -"  # noqa
        lines = [f"class: {n['kernels']} kernels x {n['cells_per_kernel']} cells "
                 f"(%%container --mem 64M --pids 64, live view on; "
                 f"{'a user each' if n['as_users'] else 'one user'})",
                 f"{'cell latency ms':<34}{'p50':>8}{'p95':>8}{'max':>8}",
                 f"{'one kernel alone (warm cells)':<34}{ms(n['alone'], 'p50')}"
                 f"{ms(n['alone'], 'p95')}{ms(n['alone'], 'max')}",
                 f"{'the class, all kernels at once':<34}{ms(n['class'], 'p50')}"
                 f"{ms(n['class'], 'p95')}{ms(n['class'], 'max')}"]
        if "no_plot" in n:
            lines.append(f"{'the class, --no-plot':<34}{ms(n['no_plot'], 'p50')}"
                         f"{ms(n['no_plot'], 'p95')}{ms(n['no_plot'], 'max')}")
        lines += [
            "first cell of a kernel (starts its fork server): "
            f"{1e3 * n['alone_first_cell_s']:.0f} ms",
            f"failures: {n['failures']} of {n['class'].get('n', 0)}"
            + (f" ({'; '.join(n['failure_examples'])})" if n["failures"] else ""),
            f"host memory per kernel (PSS, kernel + fork server, idle): "
            f"{_mib(n['kernel_pss_mib'])}",
            f"host memory per container (its cgroup, while running): {_mib(n['container_mib'])}"
            f"; at most {n['containers_at_once_max']} containers at once",
            f"CPU of the runner side (follow loop, sampler, plot; kernels + fork servers): "
            f"{n['runner_cpu_s']:.1f} core-s over {n['class_wall_s']:.1f} s wall, "
            f"{n['runner_cpu_ms_per_cell']:.0f} ms per cell",
        ]
        if n["container_cpu_ms_per_cell"] is not None:
            lines.append(f"CPU inside the containers (the cell's interpreter and its work): "
                         f"{n['container_cpu_ms_per_cell']:.0f} ms per cell")
        if "no_plot" in n:
            lines.append(f"  with --no-plot: {n['no_plot']['runner_cpu_s']:.1f} core-s, "
                         f"{n['no_plot']['runner_cpu_ms_per_cell']:.0f} ms per cell "
                         f"(the plot's share: the difference)")
        lines.append("left after every kernel shut down: "
                     + (", ".join(n["left_after_shutdown"]) or "nothing"))
        return "\n".join(lines)


def _mib(value) -> str:
    return f"{value:.1f} MiB" if value is not None else "-"


if __name__ == "__main__":
    sys.exit(main())
