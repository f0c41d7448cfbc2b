"""A Python cell run again finds its whole container made ahead (root built, interpreter
started and waiting for the cell on its stdin). That must not show: the same cell sees the
same container, under the same limits, with whatever was installed in between."""

import io
import os
import signal
import site
import threading
import time

import pytest
from conftest import run_spec

from nsmagic.core import run, settle
from nsmagic.runtime.spares import Spares
from nsmagic.spec import Spec

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

LOOK_AROUND = r"""
import os, sys, socket
print(os.getpid(), socket.gethostname(), os.environ["HOSTNAME"], os.getcwd(), sys.argv)
print(open("/proc/self/cmdline").read().split("\0"), sys.flags.no_site, sys.flags.isolated)
print([l for l in open("/proc/self/status")
       if l.startswith(("Cap", "NoNewPrivs", "Uid", "Seccomp"))])
print(sorted(os.listdir("/proc/self/fd")), os.environ.get("GREETING"))
open("/etc/motd", "w").write("mine\n"); print(open("/etc/motd").read().strip())
"""


def cell(options: str, code: str):
    got = run_spec(options + " --profile", script=code)
    settle()          # the pause between two cells, when the next one is made
    made_ahead = any(step == "ready spare taken" for step, _ in got.result.profile)
    return got, made_ahead


@pytest.mark.usefixtures("no_leaks")
def test_a_cell_run_again_sees_the_same_container_made_ahead():
    options = "--mem 100M --pids 64 -h again -w /work -e GREETING=hi"
    first, first_ahead = cell(options, LOOK_AROUND)
    second, second_ahead = cell(options, LOOK_AROUND)
    assert not first_ahead and second_ahead
    assert first.result.exit_code == second.result.exit_code == 0, (first, second)
    assert first.out == second.out and first.err == second.err
    assert "again again /work ['-']" in second.out and "mine" in second.out
    assert "'Seccomp:\\t2\\n'" in second.out, second    # the filter came along
    assert first.result.memory_limit == second.result.memory_limit
    with open("/etc/motd") as f:
        assert "mine" not in f.read()


@pytest.mark.usefixtures("no_leaks")
def test_limits_hold_in_a_container_made_ahead():
    grow = "b = []\nwhile True: b.append(bytearray(1 << 20))"
    cell("--mem 40M -h limits", "pass")
    oom, ahead = cell("--mem 40M -h limits", grow)
    assert ahead and oom.result.exit_code == 137 and oom.result.oom_killed, oom


@pytest.mark.usefixtures("no_leaks")
def test_a_pth_installed_between_cells_is_seen():
    """An interpreter started before a `pip install` would miss its .pth: made afresh."""
    pth = os.path.join(site.getsitepackages()[0], f"nsmagic-test-{os.getpid()}.pth")
    show = "import os; print(os.environ.get('NSMAGIC_TEST_PTH'))"
    cell("-h pth", show)
    assert any(kind.ready for kind in Spares._ready), "no container was made ahead"
    try:
        with open(pth, "w") as f:
            f.write("import os; os.environ['NSMAGIC_TEST_PTH'] = 'seen'\n")
        got, ahead = cell("-h pth", show)
    finally:
        os.unlink(pth)
    assert got.out.strip() == "seen" and not ahead, got
    settle()


@pytest.mark.usefixtures("no_leaks")
def test_a_cell_in_a_container_made_ahead_stops_on_interrupt():
    options = "-h stop --profile"
    cell(options, "pass")
    timer = threading.Timer(0.8, lambda: signal.pthread_kill(threading.main_thread().ident,
                                                             signal.SIGINT))
    out = io.StringIO()
    timer.start()
    with pytest.raises(KeyboardInterrupt) as info:
        run(Spec.from_argv(options, script="import time\nprint('up')\ntime.sleep(100)"),
            out=out, err=io.StringIO())
    result = info.value.result
    assert out.getvalue() == "up\n"
    assert any(step == "ready spare taken" for step, _ in result.profile)
    assert result.stopped_by == "SIGINT" and result.exit_code == 130, result


def ready_spare():
    return next(spare for kind, spare in Spares._ready.items() if kind.ready)


@pytest.mark.usefixtures("no_leaks")
def test_one_container_is_made_ahead_for_the_latest_cell_only():
    cell("-h first", "pass")
    first = ready_spare().cgroup.name
    cell("-h second", "pass")
    assert ready_spare().cgroup.name != first
    assert [kind.ready.hostname for kind in Spares._ready if kind.ready] == ["second"]


@pytest.mark.usefixtures("no_leaks")
def test_a_fork_of_the_runner_does_not_hold_a_cell_up():
    """multiprocessing's workers are forks of the kernel: one that lives on must not keep
    a container made ahead from seeing the end of its cell on stdin."""
    cell("-h forked", "pass")
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    try:
        got, ahead = cell("-h forked --timeout 10", "print('ran')")
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    assert ahead and got.out == "ran\n" and not got.result.timed_out, got


@pytest.mark.usefixtures("no_leaks")
def test_a_container_whose_interpreter_died_while_it_waited_is_not_used():
    cell("-h died", "pass")
    spare = ready_spare()
    interpreter = [pid for pid in spare.cgroup.pids() if pid != spare.pid1.pid]
    assert len(interpreter) == 1
    os.kill(interpreter[0], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while spare.pid1.running() and time.monotonic() < deadline:   # its PID 1 goes with it
        time.sleep(0.01)
    got, ahead = cell("-h died", "print('fresh')")
    assert not ahead and got.out == "fresh\n", got


def test_a_killed_runner_takes_its_container_made_ahead_along():
    """Kernel death with a ready interpreter waiting: nothing of it may live on."""
    import subprocess
    import sys

    from conftest import REPO, kill_runner, leftovers, processes_left
    code = ("import io, sys; from nsmagic.core import run; from nsmagic.spec import Spec; "
            "from nsmagic.core import settle; from nsmagic.runtime.spares import Spares; "
            "run(Spec.from_argv('--mem 64M', script='pass'), out=io.StringIO(), "
            "err=io.StringIO()); settle(); "
            "print(sum(k.ready is not None for k in Spares._ready), flush=True); "
            "sys.stdin.readline()")
    runner = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert runner.stdout.readline() == "1\n"
    assert len(processes_left(runner.pid)) >= 2   # PID 1s and the waiting interpreter
    assert kill_runner(runner, within=2.0) == []
    done = subprocess.run([sys.executable, "-m", "nsmagic", "run", "--", "true"], cwd=REPO)
    assert done.returncode == 0 and leftovers(runner.pid) == []   # the next start sweeps
