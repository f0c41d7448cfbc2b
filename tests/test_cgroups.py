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
