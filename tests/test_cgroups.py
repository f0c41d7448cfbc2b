"""The cgroup layer on whatever layout this kernel has. The VM tier boots kernels with pure
v2, v1, hybrid and a delegated v2 subtree and runs this same file in each."""

import os
import subprocess
import time

import pytest
from conftest import run_spec

from nsmagic import cgroups

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("no_leaks")]

layout = cgroups.detect()
delegated = (os.geteuid() != 0 and layout.kind == "v2"
             and os.access(os.path.join(layout.v2_dir() or "/", "cgroup.procs"), os.W_OK))
can_limit = os.geteuid() == 0 or delegated
needs_limits = pytest.mark.skipif(not can_limit, reason="needs root or a delegated cgroup")


def _mountinfo_kind():
    with open("/proc/self/mountinfo") as f:
        types = {}
        for line in f:
            parts = line.split()
            types[parts[4]] = parts[parts.index("-") + 1]
    if types.get("/sys/fs/cgroup") == "cgroup2":
        return "v2"
    has_v1 = "cgroup" in types.values()
    return "hybrid" if has_v1 and "cgroup2" in types.values() else "v1"


def test_layout_is_detected_as_mounted():
    assert layout.kind == _mountinfo_kind()


def test_info_reports_the_layout():
    from nsmagic.info import gather
    assert gather()["cgroup_layout"] == layout.kind


@needs_limits
def test_limits_are_written_and_the_group_removed():
    cg = cgroups.open_cgroup("t" + os.urandom(3).hex(), cgroups.Limits(64 << 20, 0.5, 32))
    cg.create()
    try:
        if cg.version == "v2":
            d = cg.directories()[0]
            assert open(f"{d}/memory.max").read().strip() == str(64 << 20)
            assert open(f"{d}/cpu.max").read().split() == ["50000", "100000"]
            assert open(f"{d}/pids.max").read().strip() == "32"
        else:
            assert open(f"{cg.dirs['memory']}/memory.limit_in_bytes").read().strip() == str(
                64 << 20)
            assert open(f"{cg.dirs['cpu']}/cpu.cfs_quota_us").read().strip() == "50000"
            assert open(f"{cg.dirs['pids']}/pids.max").read().strip() == "32"
    finally:
        cg.destroy()
    assert not any(os.path.exists(d) for d in cg.directories())


@needs_limits
def test_kill_ends_every_process_in_the_group():
    cg = cgroups.open_cgroup("k" + os.urandom(3).hex(), cgroups.Limits())
    cg.create()
    procs = []
    try:
        for _ in range(3):
            p = subprocess.Popen(["sleep", "60"])
            procs.append(p)
            for path in cg.procs_files():
                with open(path, "w") as f:
                    f.write(str(p.pid))
        assert sorted(cg.pids()) == sorted(p.pid for p in procs)
        t0 = time.monotonic()
        cg.kill()
        assert cg.pids() == [] and time.monotonic() - t0 < 2
        assert all(p.wait(2) == -9 for p in procs)
    finally:
        for p in procs:
            p.kill()
        cg.destroy()


@needs_limits
def test_oom_kill_is_seen():
    got = run_spec("--mem 48M", script="x = [bytearray(1 << 20) for _ in range(200)]")
    assert got.result.exit_code == 137 and got.result.oom_kills >= 1, got
    assert 24 << 20 < got.result.memory_peak <= 48 << 20


@needs_limits
def test_cpu_quota_half_a_core():
    # Measured inside the workload: under emulation start-up costs seconds of CPU.
    cell = ("import os, time\nt0, c0 = time.monotonic(), os.times()\n"
            "while time.monotonic() - t0 < 3.0: pass\nc1 = os.times()\n"
            "print((c1.user + c1.system - c0.user - c0.system) / (time.monotonic() - t0))")
    got = run_spec("--cpus 0.5", script=cell)
    assert 0.35 <= float(got.out) <= 0.6, got


@needs_limits
def test_pids_limit_stops_a_fork_bomb():
    got = run_spec(["--pids", "24", "--timeout", "60", "--", "sh", "-c",
                    "b() { b | b & }; b; sleep 1; echo done"])
    assert got.result.pids_peak is not None and got.result.pids_peak <= 24, got
    assert not got.result.timed_out


# --- child groups: a workload with its own cgroup mount (or a delegated subtree) makes them

def _make_child(parent: str, *names: str) -> str:
    """A child group path as a workload would make it; a v1 cpuset child takes its parent's
    CPUs and memory nodes, as a runtime would give them."""
    here = parent
    for name in names:
        child = os.path.join(here, name)
        os.mkdir(child)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if os.path.exists(os.path.join(child, knob)):
                with open(os.path.join(here, knob)) as f, open(os.path.join(child, knob), "w") as g:
                    g.write(f.read().strip())
        here = child
    return here


def _move(pid: int, group: str) -> None:
    with open(os.path.join(group, "cgroup.procs"), "w") as f:
        f.write(str(pid))


def _detached_sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


@needs_limits
def test_destroy_kills_what_child_groups_hold_and_removes_them_first():
    cg = cgroups.open_cgroup("c" + os.urandom(3).hex(), cgroups.Limits(pids=16))
    cg.create()
    sleeper = _detached_sleeper()
    try:
        for d in cg.directories():
            _make_child(d, "b")
            _move(sleeper.pid, _make_child(d, "a", "inner"))
        assert sleeper.pid in cg.pids()        # seen down there
        started = time.monotonic()
        cg.destroy()
        took = time.monotonic() - started
    finally:
        sleeper.kill()
        for d in cg.directories():
            for here, _, _ in sorted(os.walk(d), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(here)
                except OSError:
                    pass
    assert sleeper.wait(2) == -9
    assert not any(os.path.exists(d) for d in cg.directories())
    assert took < 1.0, f"destroy took {took:.2f} s"


@needs_limits
def test_a_runs_teardown_removes_child_groups_made_while_it_ran():
    """Made from the host side while the run lives, as a workload with a delegated subtree
    would make them, with the workload moved into one: the run still leaves nothing."""
    from conftest import leftovers

    from nsmagic.core import start
    from nsmagic.spec import Spec
    run = start(Spec.from_argv(["--pids", "32", "--", "sleep", "60"]))
    try:
        workload = [p for p in run.cgroup.pids() if p != run.pid1.pid]
        for d in run.cgroup.directories():
            inner = _make_child(d, "delegated", "inner")
            for pid in workload:
                _move(pid, inner)
    finally:
        run.kill_all()
        run.wait()
        run.close()
    assert not [thing for thing in leftovers() if thing.startswith(("/sys/fs/cgroup",
                                                                     "process"))]


def _a_dead_runners_group(layout) -> cgroups.Cgroup:
    """A group named for a runner that died (its pid no longer runs)."""
    from nsmagic.cgroups.v1 import CgroupV1
    from nsmagic.cgroups.v2 import CgroupV2
    gone = subprocess.Popen(["true"])
    gone.wait()
    backend = CgroupV2 if layout.kind == "v2" else CgroupV1
    cg = backend(f"nsmagic-{gone.pid}-{os.urandom(3).hex()}", cgroups.Limits(), layout)
    cg.make()
    return cg


@needs_limits
def test_sweep_removes_a_dead_runners_groups_with_their_children_at_once():
    cg = _a_dead_runners_group(layout)
    sleeper = _detached_sleeper()
    try:
        for d in cg.directories():
            _move(sleeper.pid, _make_child(d, "a", "inner"))
        started = time.monotonic()
        removed = cgroups.sweep()
        took = time.monotonic() - started
        assert sleeper.wait(2) == -9
    finally:
        sleeper.kill()
    if not all(d in removed for d in cg.directories()):   # busy while the sleeper died
        removed += cgroups.sweep()
    assert all(d in removed and not os.path.exists(d) for d in cg.directories()), removed
    assert took < 0.5, f"sweep took {took:.2f} s"


@pytest.mark.skipif(layout.kind == "v2" or "freezer" not in layout.v1_mounts or not can_limit,
                    reason="a v1 freezer is what keeps a killed process (and its group) here")
def test_sweep_leaves_a_busy_group_for_later_instead_of_waiting():
    """A frozen v1 group keeps its killed process until thawed, so its group stays busy:
    the sweep passes over it at once, and a later one removes it."""
    cg = _a_dead_runners_group(layout)
    sleeper = _detached_sleeper()
    freezer = cg.dirs["freezer"]
    try:
        for d in cg.directories():
            _move(sleeper.pid, d)
        with open(f"{freezer}/freezer.state", "w") as f:
            f.write("FROZEN")
        started = time.monotonic()
        first = cgroups.sweep()
        took = time.monotonic() - started
    finally:
        with open(f"{freezer}/freezer.state", "w") as f:
            f.write("THAWED")
    try:
        assert took < 0.2, f"the sweep waited {took:.2f} s on a busy group"
        assert freezer not in first and os.path.isdir(freezer)
        assert sleeper.wait(2) == -9
    finally:
        sleeper.kill()
    later = cgroups.sweep()
    assert not any(os.path.exists(d) for d in cg.directories()), later
