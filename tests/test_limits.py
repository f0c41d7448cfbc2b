"""cgroup limits, enforced by the kernel, and the accounting that reports them."""

import pytest
from conftest import needs_root

pytestmark = [pytest.mark.kernel, needs_root, pytest.mark.usefixtures("no_leaks")]

HOG = """
import time
chunks = []
for _ in range(200):
    chunks.append(bytearray(1 << 20))   # touched: bytearray zero-fills
print("survived", flush=True)
"""


def test_memory_limit_ends_in_an_oom_kill_that_the_result_reports(py):
    got = py("--mem 64M", HOG)
    r = got.result
    assert r.exit_code == 137 and r.oom_killed and r.oom_kills >= 1, got
    assert "survived" not in got.out
    assert "OOM killed" in r.summary()
    assert r.memory_peak is not None and r.memory_peak <= 64 << 20
    assert r.memory_peak > 32 << 20   # it really climbed to the limit


def test_memory_under_the_limit_is_fine_and_peak_is_measured(py):
    got = py("--mem 200M", "x = bytearray(50 << 20); print(len(x))")
    assert got.result.exit_code == 0 and not got.result.oom_killed, got
    assert 50 << 20 < got.result.memory_peak < 200 << 20


def test_swap_is_held_at_zero(sh):
    """A limit that swap could soften would not be the limit the user asked for."""
    got = sh("--mem 64M", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
                          "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes 2>/dev/null || "
                          "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory.swap.max")
    values = got.out.split()
    assert values[0] == str(64 << 20) and values[1] in (str(64 << 20), "0"), got


def test_cpu_quota_gives_about_half_a_core(py):
    cell = """
import os, time
t0, c0 = time.monotonic(), os.times()
while time.monotonic() - t0 < 2.0:
    pass
c1 = os.times()
print((c1.user + c1.system - c0.user - c0.system) / (time.monotonic() - t0))
"""
    got = py("--cpus 0.5", cell)
    share = float(got.out.strip())
    assert 0.4 <= share <= 0.6, got
    assert got.result.throttled_s > 0.3


def test_pids_limit_contains_a_fork_bomb(sh):
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 1; echo survived"
    got = sh("--pids 32 --timeout 20", bomb)
    r = got.result
    assert r.pids_peak is not None and r.pids_peak <= 32, got
    assert not r.timed_out
    assert "fork" in got.err.lower() or "resource" in got.err.lower(), got


def test_limits_are_visible_inside_through_the_cgroup_namespace(sh):
    got = sh("--mem 100M --pids 50", "cat /proc/self/cgroup; cat /sys/fs/cgroup/pids/pids.max "
                                      "2>/dev/null || cat /sys/fs/cgroup/pids.max")
    own = [line.split(":", 2) for line in got.out.splitlines() if line.count(":") >= 2]
    memory = [path for _, ctrl, path in own if ctrl in ("memory", "")]
    assert memory and memory[0] == "/", got    # its own group is the root of its view
    assert got.out.split()[-1] == "50"


# --- exit codes, as Docker's

@pytest.mark.parametrize("script,code", [("exit 0", 0), ("exit 3", 3), ("kill -TERM $$", 143),
                                         ("kill -KILL $$", 137)])
def test_exit_codes(sh, script, code):
    assert sh("", script).result.exit_code == code


def test_not_found_is_127_and_not_executable_is_126(sh):
    from conftest import run_spec
    missing = run_spec("-- /no/such/program")
    assert missing.result.exit_code == 127 and "not found" in missing.result.error
    not_exec = run_spec("-- /etc/hostname")
    assert not_exec.result.exit_code == 126 and "cannot be executed" in not_exec.result.error


def test_setup_failure_is_125_with_a_sentence(busybox_root):
    from conftest import run_spec
    got = run_spec(f"--rootfs {busybox_root} -w /etc/motd -- true")
    assert got.result.exit_code == 125 and "working directory /etc/motd" in got.result.error
    assert "not a directory" in got.result.error and "\n" not in got.result.error, got
