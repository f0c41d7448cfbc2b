"""The shell face: `nsmagic run` exits with the container's status; `nsmagic info`."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, needs_root

pytestmark = [pytest.mark.kernel, needs_root, pytest.mark.usefixtures("no_leaks")]


def nsmagic(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "nsmagic", *args], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_run_exits_with_the_container_status_and_streams_apart():
    done = nsmagic("run", "--mem", "50M", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert done.returncode == 3 and done.stdout == "out\n" and done.stderr == "err\n"


def test_a_run_from_the_shell_leaves_nothing_once_it_exited():
    """The CLI prints its result before its PID 1 has finished exiting; it still removes
    all of it before it exits itself."""
    from conftest import leftovers
    cli = subprocess.Popen([sys.executable, "-m", "nsmagic", "run", "--mem", "32M", "--pids",
                            "8", "--", "true"], cwd=REPO)
    assert cli.wait(60) == 0
    assert leftovers(cli.pid) == []


def test_json_result_is_the_last_line_of_stdout():
    done = nsmagic("run", "--json", "--mem", "64M", "--", "sh", "-c", "echo hello")
    lines = done.stdout.splitlines()
    assert lines[0] == "hello"
    result = json.loads(lines[-1])
    assert result["exit_code"] == 0 and result["memory_limit"] == 64 << 20
    assert result["oom_killed"] is False and result["cgroup_version"] in ("v1", "v2")


def test_python_from_stdin_without_a_command():
    done = nsmagic("run", stdin="import os; print(os.getpid())")
    assert done.stdout.strip() == "2", done


@pytest.mark.parametrize("args,words", [
    (["run", "--mem", "banana", "--", "true"], ["--mem", "banana"]),
    (["run", "--cpus", "-1", "--", "true"], ["--cpus"]),
    (["run", "--rootfs", "/no/such", "--", "true"], ["--rootfs", "no such directory"]),
    (["run", "-v", "/no/such:/x", "--", "true"], ["/no/such", "does not exist"]),
    (["run", "--bogus", "--", "true"], ["unrecognized", "--bogus"]),
    (["frobnicate"], ["not an nsmagic command"]),
])
def test_bad_input_is_one_sentence_and_exit_125(args, words):
    done = nsmagic(*args)
    assert done.returncode == 125
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nsmagic: "), done.stderr
    for word in words:
        assert word in lines[0]


def test_not_found_is_127():
    done = nsmagic("run", "--", "no-such-program")
    assert done.returncode == 127 and "not found" in done.stderr


def test_info_reports_this_machine():
    done = nsmagic("info", "--json")
    info = json.loads(done.stdout)
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    types = {m[4]: m[m.index("-") + 1] for m in mounts}
    if types.get("/sys/fs/cgroup") == "cgroup2":
        expected = "v2"
    else:
        expected = "hybrid" if "cgroup2" in types.values() else "v1"
    assert info["cgroup_layout"] == expected
    assert info["root"] is True and info["mode"].startswith("full")
    assert all(err is None for err in info["namespaces"].values()), info["namespaces"]
    assert info["overlay"] is None


def test_unconfined_runs_without_isolation_and_says_so(tmp_path):
    target = tmp_path / "written-from-unconfined"
    done = nsmagic("run", "--unconfined", "--", "sh", "-c", f"echo $$; echo x > {target}")
    assert done.returncode == 0 and int(done.stdout) > 2
    assert target.read_text() == "x\n"   # no overlay: the write reached the host
    assert "UNCONFINED" in done.stderr


def test_ps_lists_running_containers_of_any_runner():
    other = subprocess.Popen([sys.executable, "-m", "nsmagic", "run", "--mem", "48M", "--",
                              "sh", "-c", "echo up; sleep 30"], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert other.stdout.readline() == b"up\n"
        listing = nsmagic("ps").stdout   # Docker's columns; its runner named in STATUS
        row = next(line for line in listing.splitlines() if f"(runner {other.pid}," in line)
        assert '"sh -c echo up; sleep' in row, listing
        stats = nsmagic("stats", "--no-stream").stdout   # the memory is stats' to show
        row = next(line for line in stats.splitlines() if line.endswith(f" {other.pid}"))
        assert "/ 48.0 MiB" in row, stats
    finally:
        other.kill()
        other.wait()
    assert str(other.pid) not in nsmagic("ps").stdout   # a dead runner's group is no container


@pytest.mark.parametrize("what, spares_made", [
    ("Spec.from_argv('-- true')", 1),
    # a Python cell: also its whole container, its interpreter waiting for the next cell
    ("Spec.from_argv('', script='pass'), out=io.StringIO(), err=io.StringIO()", 2)])
def test_a_runners_spares_are_no_containers_and_go_when_the_runner_exits(what, spares_made):
    """After a run, a notebook keeps the next run's PID 1 ready (joined to its group): `ps`
    must not list it, and a runner that exits normally takes it along."""
    from conftest import leftovers
    code = ("import io, sys; from nsmagic.core import run; from nsmagic.spec import Spec; "
            "from nsmagic.core import settle; "
            f"run({what}); print(sorted(settle()), flush=True); "
            "sys.stdin.readline()")
    runner = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    spares = json.loads(runner.stdout.readline().replace("'", '"'))
    assert len(spares) == spares_made
    assert all(s.startswith(f"nsmagic-{runner.pid}-") for s in spares), spares
    there = leftovers(runner.pid, within=0)   # while it lives, its spares are there
    assert all(any(s in line for line in there) for s in spares)   # they exist...
    assert str(runner.pid) not in nsmagic("ps").stdout             # ...but are no containers
    runner.communicate("\n", timeout=30)
    assert leftovers(runner.pid) == []
