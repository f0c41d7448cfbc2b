"""A run's life: output streams while it runs; interrupts, timeouts and a killed runner end
everything at once; nothing is left behind, not after 200 runs either."""

import io
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, kill_runner, leftovers, needs_root, processes_left, run_spec

from nsmagic.core import run
from nsmagic.spec import Spec

pytestmark = [pytest.mark.kernel, needs_root]


class TimedWriter(io.StringIO):
    """Remembers when the first text arrived."""

    first = None

    def write(self, s):
        if s and self.first is None:
            self.first = time.monotonic()
        return super().write(s)


@pytest.mark.usefixtures("no_leaks")
def test_first_line_arrives_before_the_child_exits():
    out = TimedWriter()
    spec = Spec.from_argv("-- sh -c 'echo first; sleep 1.5; echo second'")
    t0 = time.monotonic()
    result = run(spec, out=out, err=io.StringIO())
    end = time.monotonic()
    assert out.getvalue() == "first\nsecond\n"
    assert out.first - t0 < 0.8 and end - out.first > 1.0, result


@pytest.mark.usefixtures("no_leaks")
def test_stdout_and_stderr_are_kept_apart_and_utf8_is_never_split():
    # a 3-byte character split across two writes, with a pause between them
    got = run_spec(["--", "sh", "-c", "printf '\\342\\202'; sleep 0.3; printf '\\254 ok\\n'; "
                                      "echo oops >&2"])
    assert got.out == "€ ok\n" and got.err == "oops\n", got


@pytest.mark.usefixtures("no_leaks")
def test_large_cell_script_is_fed_completely():
    cell = "x = 0\n" + "x += 1\n" * 50000 + "print(x)\n"   # ~350 kB, more than a pipe holds
    got = run_spec("", script=cell)
    assert got.out.strip() == "50000", got


def interrupted_run(script: str, after: float):
    """Run `sh -c script` and press the stop button (SIGINT to this thread) after `after` s;
    returns (stdout, result, seconds until run() returned)."""
    timer = threading.Timer(after, lambda: signal.pthread_kill(threading.main_thread().ident,
                                                               signal.SIGINT))
    out = io.StringIO()
    t0 = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt) as info:
        run(Spec.from_argv(["--", "sh", "-c", script]), out=out, err=io.StringIO())
    return out.getvalue(), info.value.result, time.monotonic() - t0


@pytest.mark.usefixtures("no_leaks")
def test_interrupt_mid_run_kills_every_process():
    out, result, took = interrupted_run("sleep 100 & sleep 100 & trap '' INT TERM; "
                                        "echo ready; while true; do sleep 1; done", 0.8)
    assert out == "ready\n"
    assert result.interrupted and result.stopped_by == "SIGKILL"   # it ignored INT and TERM
    assert took < 0.8 + 1.0, took
    assert not [line for line in leftovers() if line.startswith("process")]


@pytest.mark.usefixtures("no_leaks")
def test_interrupt_is_forwarded_as_sigint_first():
    out, result, _ = interrupted_run("trap 'echo got-INT; exit 130' INT; echo ready; "
                                     "while true; do sleep 0.05; done", 0.6)
    assert "got-INT" in out
    assert result.stopped_by == "SIGINT" and result.exit_code == 130


@pytest.mark.usefixtures("no_leaks")
def test_timeout_stops_the_container():
    got = run_spec("--timeout 0.5 -- sh -c 'sleep 30'")
    assert got.result.timed_out and got.result.exit_code in (130, 143, 137)
    assert got.result.wall_s < 2.5


def test_no_leaks_after_200_runs_in_a_row():
    before = set(leftovers())
    fds_before = len(os.listdir("/proc/self/fd"))
    spec = Spec.from_argv("--mem 32M --pids 16 -- true")
    for _ in range(200):
        assert run(spec).exit_code == 0
    assert set(leftovers()) == before
    assert len(os.listdir("/proc/self/fd")) <= fds_before


def test_killed_runner_takes_the_container_with_it_and_the_next_start_sweeps():
    code = ("import sys; from nsmagic.core import run; from nsmagic.spec import Spec; "
            "run(Spec.from_argv('--mem 64M -- sh -c \"echo up; sleep 100\"'), out=sys.stdout)")
    runner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=REPO)
    assert runner.stdout.readline() == b"up\n"
    assert processes_left(runner.pid)
    assert kill_runner(runner, within=1.0) == []
    assert leftovers(runner.pid), "the dead runner's empty groups should still be there"
    # the next start sweeps what the dead runner could not remove
    sweep = subprocess.run([sys.executable, "-m", "nsmagic", "run", "--", "true"], cwd=REPO)
    assert sweep.returncode == 0
    assert leftovers(runner.pid) == []
