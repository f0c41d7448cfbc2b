"""Containers that outlive their command (issue 14, part 2): `nsmagic run -d` under a monitor
process of its own, the store's record and log, and Docker's commands on them: ps, logs,
exec, top, stop, kill, start, restart, rm, inspect, wait, stats; `--network container:NAME`;
a cell run inside a named container. Each test removes what it starts and checks that
nothing of it is left: no cgroup, process, veth, lease or rule."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, leftovers, needs_root
from leaks import network_leftovers

from nsmagic.containers import records

pytestmark = [pytest.mark.kernel, needs_root]


def nsmagic(*argv, check=True, **kw):
    done = subprocess.run([sys.executable, "-m", "nsmagic", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=60, **kw)
    if check:
        assert done.returncode == 0, done
    return done


@pytest.fixture
def detached():
    """Start detached containers (`detached("--name", "x", "--", "sleep", "60")`), each
    removed after the test, its monitor's groups checked gone."""
    started, before = [], set(network_leftovers(settle=True))

    def start(*argv) -> dict:
        name = nsmagic("run", "-d", *argv).stdout.strip()
        record = records.load(name)
        started.append(record)
        return record
    yield start
    for record in started:
        nsmagic("rm", "-f", record["id"], check=False)
    for record in started:
        if record.get("monitor"):
            assert leftovers(record["monitor"], within=10) == [], record["name"]
    deadline = time.monotonic() + 10
    while set(network_leftovers(settle=True)) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(network_leftovers(settle=True)) - before


def _wait_for(predicate, within=10.0):
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def test_run_d_prints_the_name_and_a_monitor_outlives_the_cli(detached):
    t0 = time.monotonic()
    record = detached("--name", "nsmagic-t-sleeper", "--", "sh", "-c",
                      "echo started; echo oops >&2; sleep 60")
    assert time.monotonic() - t0 < 10
    assert record["name"] == "nsmagic-t-sleeper" and records.status(record) == "running"
    monitor = record["monitor"]
    assert _comm(monitor) == "nsmagic-monitor"
    with open(f"/proc/{monitor}/cmdline") as f:
        assert f.read().strip("\0 ") == "nsmagic-monitor nsmagic-t-sleeper"
    _wait_for(lambda: _comm(record["pid"]) == "nsmagic-init")   # once it has its run
    with open(f"/proc/{record['pid']}/stat") as f:   # PID 1 is the monitor's own child
        assert int(f.read().rpartition(")")[2].split()[1]) == monitor
    _wait_for(lambda: "oops" in nsmagic("logs", "nsmagic-t-sleeper").stderr)
    logs = nsmagic("logs", "nsmagic-t-sleeper")
    assert logs.stdout == "started\n" and logs.stderr == "oops\n"
    listing = nsmagic("ps").stdout.splitlines()
    assert listing[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS",
                                  "PORTS", "NAMES"]
    row = next(line for line in listing if "nsmagic-t-sleeper" in line)
    assert record["id"][:12] in row and "Up " in row and '"sh -c echo started' in row


def test_a_generated_name_and_a_taken_one(detached):
    first = detached("--", "sleep", "60")
    assert "_" in first["name"]
    again = nsmagic("run", "-d", "--name", first["name"], "--", "true", check=False)
    assert again.returncode == 125 and again.stderr.strip() == (   # the store's sentence
        f"nsmagic: the name {first['name']} is in use by container {first['id'][:12]}; "
        f"remove it (nsmagic rm {first['name']}) or choose another.")


def test_a_monitor_records_the_exit_and_goes(detached):
    record = detached("--", "sh", "-c", "echo bye; exit 3")
    assert nsmagic("wait", record["name"]).stdout.strip() == "3"
    _wait_for(lambda: not records.monitor_alive(record))
    kept = records.load(record["id"])
    assert kept["state"] == "exited" and kept["exit_code"] == 3 and kept["finished_at"]
    assert "Exited (3)" in nsmagic("ps", "-a").stdout
    assert record["name"] not in nsmagic("ps").stdout
    assert nsmagic("logs", record["name"]).stdout == "bye\n"
    state = json.loads(nsmagic("inspect", record["name"]).stdout)[0]["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 3 and not state["Running"]


def test_logs_tail_and_follow(detached):
    record = detached("--", "sh", "-c", "for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done")
    follow = nsmagic("logs", "-f", record["name"])
    assert follow.stdout == "".join(f"line {i}\n" for i in range(1, 6))   # to its end
    assert nsmagic("logs", "--tail", "2", record["name"]).stdout == "line 4\nline 5\n"


def test_stop_sends_sigterm_then_sigkill_after_the_grace(detached):
    polite = detached("--", "sleep", "60")
    stubborn = detached("--", "sh", "-c", "trap '' TERM; while :; do sleep 0.1; done")
    t0 = time.monotonic()
    nsmagic("stop", "-t", "1", polite["name"], stubborn["name"])
    assert time.monotonic() - t0 < 8
    assert records.load(polite["id"])["exit_code"] == 143       # 128 + SIGTERM
    assert records.load(stubborn["id"])["exit_code"] == 137     # 128 + SIGKILL, after 1 s


def test_kill_sends_the_signal_through_pid_1(detached):
    record = detached("--", "sh", "-c", "trap 'echo got USR1; exit 7' USR1; "
                                        "while :; do sleep 0.1; done")
    time.sleep(0.3)
    nsmagic("kill", "-s", "USR1", record["name"])
    assert nsmagic("wait", record["name"]).stdout.strip() == "7"
    assert "got USR1" in nsmagic("logs", record["name"]).stdout
    bad = nsmagic("kill", "-s", "NOPE", record["name"], check=False)
    assert "is not a signal" in bad.stderr


def test_restart_keeps_the_name_and_runs_it_again(detached):
    record = detached("--", "sh", "-c", "echo run; sleep 60")
    nsmagic("restart", "-t", "1", record["name"])
    again = records.load(record["id"])
    assert records.status(again) == "running" and again["pid"] != record["pid"]
    _wait_for(lambda: nsmagic("logs", record["name"]).stdout == "run\nrun\n")
    nsmagic("stop", "-t", "0", record["name"])
    nsmagic("start", record["name"])
    assert records.status(records.load(record["id"])) == "running"


def test_start_runs_its_image_again_on_the_files_it_left(detached):
    """As Docker's: a started container is the same container: its image (busybox here,
    not the host's directories) and its writable layer as its last run left it."""
    record = detached("busybox", "sh", "-c",
                      "echo run >> /runs; wc -l < /runs; readlink -f /bin/sh")
    for runs in (1, 2, 3):
        _wait_for(lambda: records.status(records.load(record["id"])) == "exited")
        log = nsmagic("logs", record["name"]).stdout.split()
        assert log[-2:] == [str(runs), "/bin/busybox"], log   # not the host's dash
        if runs < 3:
            nsmagic("start", record["name"])
    assert nsmagic("diff", record["name"]).stdout == "A /runs\n"


def test_rm_refuses_a_running_one_and_forces(detached):
    record = detached("--", "sleep", "60")
    refused = nsmagic("rm", record["name"], check=False)
    assert refused.returncode == 125 and "is running; stop it first, or use rm -f" in \
        refused.stderr
    nsmagic("rm", "-f", record["name"])
    assert nsmagic("ps", "-a").stdout.count(record["name"]) == 0
    with pytest.raises(records.NoSuchContainer):
        records.load(record["id"])
    assert not os.path.exists(record["_dir"])


def test_rm_option_forgets_it_once_it_exits(detached):
    name = nsmagic("run", "-d", "--rm", "--", "true").stdout.strip()
    _wait_for(lambda: name not in nsmagic("ps", "-a").stdout)


def test_rm_on_exit_stops_it_when_its_starter_exits(detached):
    """The shell that ran `nsmagic run -d --rm-on-exit` exits: its container goes."""
    starter = subprocess.Popen(["sh", "-c", f"{sys.executable} -m nsmagic run -d --rm-on-exit "
                                            "-- sleep 60; read line"], cwd=REPO,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    name = starter.stdout.readline().strip()
    record = records.load(name)
    assert records.status(record) == "running"
    starter.communicate("\n", timeout=10)
    _wait_for(lambda: name not in nsmagic("ps", "-a").stdout)
    assert leftovers(record["monitor"], within=10) == []


@pytest.mark.parametrize("network", ["none", "bridge"])
def test_a_starter_killed_during_the_start_leaves_the_container_running(network):
    """`run -d --rm` whose CLI is SIGKILLed while the container starts (its record made,
    its start not yet told): the container runs on, as Docker's. Its monitor died writing
    "ok" to the gone CLI, took the container along and left its record."""
    name = f"nsmagic-t-starter-{network}-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    cli = subprocess.Popen([sys.executable, "-m", "nsmagic", "run", "-d", "--rm", "--name",
                            name, "--network", network, "--", "sleep", "60"], cwd=REPO,
                           stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:   # the record appears at the start's beginning
            try:
                records.load(name)
                break
            except Exception:  # noqa: BLE001 - not there yet, or being written
                time.sleep(0.001)
        cli.kill()
        cli.wait()
        _wait_for(lambda: records.load(name)["state"] != "created")
        time.sleep(1)
        assert records.status(records.load(name)) == "running"
    finally:
        nsmagic("rm", "-f", name, check=False)


def test_a_killed_monitor_of_an_rm_container_leaves_no_record(detached):
    record = detached("--rm", "--", "sleep", "60")
    os.kill(record["monitor"], signal.SIGKILL)
    _wait_for(lambda: not records.pid1_alive(records.load(record["id"])))
    assert record["name"] not in nsmagic("ps", "-a").stdout
    assert all(r["id"] != record["id"] for r in records.all_records())


def test_a_killed_monitor_takes_its_container_along(detached):
    record = detached("--network", "bridge", "--", "sleep", "60")
    os.kill(record["monitor"], signal.SIGKILL)
    _wait_for(lambda: records.status(records.load(record["id"])) == "exited")
    assert not records.pid1_alive(record)
    assert "Exited" in nsmagic("ps", "-a").stdout


# --- exec: the container's view and no more than the container's rights


def test_exec_sees_its_processes_files_and_network(detached):
    record = detached("--network", "bridge", "--mem", "64M", "--hostname", "inside", "--",
                      "sh", "-c", "echo secret > /tmp/made-inside; sleep 60")
    time.sleep(0.3)
    done = nsmagic("exec", record["name"], "sh", "-c",
                   "ps -e -o pid,comm; cat /tmp/made-inside; hostname; "
                   "ip -4 -o addr show eth0; cat /proc/self/cgroup")
    out = done.stdout
    assert "1 nsmagic-init" in out.replace("  ", " ") and "sleep" in out
    assert "secret\n" in out and "inside\n" in out
    assert f"inet {records.load(record['id'])['ip']}/" in out
    assert all(line.endswith(":/") for line in out.splitlines() if line[:1].isdigit()
               and line.count(":") == 2), out   # its cgroup namespace's root: the container's


def test_exec_can_do_no_more_than_the_container(detached):
    record = detached("--mem", "32M", "--pids", "40", "--", "sleep", "60")
    status = "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status"
    inside = nsmagic("exec", record["name"], "sh", "-c", status).stdout
    with open(f"/proc/{record['pid']}/task/{record['pid']}/children") as f:
        workload = int(f.read().split()[0])
    with open(f"/proc/{workload}/status") as f:
        theirs = "".join(line for line in f if line.split(":")[0] in
                         ("CapEff", "CapBnd", "NoNewPrivs", "Seccomp"))
    assert inside == theirs                 # the same capabilities, no_new_privs, filter
    refused = nsmagic("exec", record["name"], "sh", "-c",
                      "mount -t tmpfs none /mnt 2>&1; echo mount=$?; "
                      "unshare -U true 2>&1; echo unshare=$?", check=False).stdout
    assert "mount=0" not in refused and "unshare=0" not in refused
    hog = nsmagic("exec", record["name"], "python3", "-c",
                  "b = bytearray(256 << 20); print('allocated')", check=False)
    assert hog.returncode == 137 and "allocated" not in hog.stdout   # the container's limit
    assert records.status(records.load(record["id"])) == "running"   # the OOM was exec's


def test_exec_with_a_terminal(detached):
    import pty
    record = detached("--", "sleep", "60")
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "nsmagic", "exec", "-it",
                                  record["name"], "sh"])
    os.write(fd, b"tty; echo $((6 * 7)); exit 5\n")
    seen = b""
    try:
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            seen += chunk
    except OSError:
        pass
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 5
    assert b"/dev/pts/" in seen and b"42" in seen


def test_exec_into_a_stopped_or_unknown_container_is_one_sentence(detached):
    record = detached("--", "true")
    nsmagic("wait", record["name"])
    stopped = nsmagic("exec", record["name"], "true", check=False)
    assert stopped.stderr.strip() == (f"nsmagic: the container {record['name']} is not "
                                      f"running; start it with `nsmagic start "
                                      f"{record['name']}`.")
    unknown = nsmagic("exec", "nsmagic-no-such", "true", check=False)
    assert unknown.stderr.strip() == ("nsmagic: there is no container nsmagic-no-such here; "
                                      "`nsmagic ps -a` lists them.")


def test_top_and_stats(detached):
    record = detached("--network", "bridge", "--mem", "48M", "--", "sleep", "60")
    top = nsmagic("top", record["name"]).stdout.splitlines()
    assert top[0].split() == ["PID", "CPID", "USER", "TIME", "COMMAND"]
    assert any(line.split()[1] == "2" and "sleep 60" in line for line in top[1:])
    stats = nsmagic("stats", "--no-stream", record["name"]).stdout.splitlines()
    row = next(line for line in stats if record["name"] in line)
    assert "/ 48.0 MiB" in row and " / " in row.split("MiB")[-1]   # net I/O column


# --- --network container:NAME


def test_a_run_joins_another_containers_network(detached):
    web = detached("--network", "bridge", "--name", "nsmagic-t-web", "-w", "/etc", "--",
                   "python3", "-m", "http.server", "8000")
    fetch = ("import urllib.request, time\nfor _ in range(100):\n    try:\n        print("
             "urllib.request.urlopen('http://127.0.0.1:8000/hostname').read().decode())\n"
             "        break\n    except OSError:\n        time.sleep(0.05)")
    done = nsmagic("run", "--network", "container:nsmagic-t-web", "--", "python3", "-c",
                   fetch)
    assert done.stdout.strip() == web["hostname"]     # its server, at its loopback
    eth0 = nsmagic("run", "--network", "container:nsmagic-t-web", "--", "ip", "-4", "-o",
                   "addr", "show", "eth0").stdout
    assert f"inet {records.load(web['id'])['ip']}/" in eth0
    missing = nsmagic("run", "--network", "container:nsmagic-nope", "--", "true", check=False)
    assert "there is no container 'nsmagic-nope'" in missing.stderr, missing.stderr


def test_a_python_cell_joins_another_containers_network(detached):
    """The cell's own path (a container made ahead between cells, IPython inside), not the
    CLI's: its eth0 is the named container's."""
    from IPython.testing.globalipapp import get_ipython  # started if no test did yet
    web = detached("--network", "bridge", "--name", "nsmagic-t-cellnet", "--", "sleep", "60")
    ip = get_ipython()
    ip.run_line_magic("load_ext", "nsmagic")
    for _ in range(2):   # the second cell's container was made ahead, with that namespace
        ip.run_cell_magic("container", "--network container:nsmagic-t-cellnet --no-plot "
                          "--output links,routes", "import os\nlinks = sorted(os.listdir("
                          "'/sys/class/net'))\nroutes = open('/proc/net/fib_trie').read()")
        assert ip.user_ns["_container"].exit_code == 0
        assert ip.user_ns["links"] == ["eth0", "lo"]
        assert records.load(web["id"])["ip"] in ip.user_ns["routes"]


# --- the notebook's face


def test_a_cell_runs_inside_a_named_detached_container(detached):
    from IPython.testing.globalipapp import get_ipython  # started if no test did yet
    record = detached("--name", "nsmagic-t-cell", "--", "sh", "-c",
                      "echo 41 > /tmp/value; sleep 60")
    time.sleep(0.3)
    ip = get_ipython()
    ip.run_line_magic("load_ext", "nsmagic")
    ip.run_cell_magic("container", "--name nsmagic-t-cell --no-plot --out seen",
                      "print(int(open('/tmp/value').read()) + 1)")
    assert ip.user_ns["seen"] == "42\n"
    assert ip.user_ns["_container"].exit_code == 0
    assert records.status(records.load(record["id"])) == "running"   # still there after


def test_a_notebooks_detached_containers_go_with_its_kernel():
    """%container run -d from a kernel passes --rm-on-exit (the notebook's default): the
    kernel's exit stops and removes them; detached_outlive_kernel keeps them."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from IPython.testing.globalipapp import start_ipython\n"
            "ip = start_ipython(); ip.run_line_magic('load_ext', 'nsmagic')\n"
            "ip.run_line_magic('container', 'run -d --name nsmagic-t-kernel -- sleep 60')\n"
            "ip.run_line_magic('config', 'ContainerMagics.detached_outlive_kernel = True')\n"
            "ip.run_line_magic('container', 'run -d --name nsmagic-t-kept -- sleep 60')\n"
            % REPO)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.split() == ["nsmagic-t-kernel", "nsmagic-t-kept"], done
    try:
        _wait_for(lambda: "nsmagic-t-kernel" not in nsmagic("ps", "-a").stdout)
        kept = records.load("nsmagic-t-kept")
        assert records.status(kept) == "running"
    finally:
        nsmagic("rm", "-f", "nsmagic-t-kept", "nsmagic-t-kernel", check=False)
    assert leftovers(kept["monitor"], within=10) == []


def test_a_log_line_without_end_is_kept_in_pieces(tmp_path):
    """A detached container's `yes | tr -d '\\n'` must not grow its monitor without bound
    (nor re-split an ever longer line): entries of 16 KiB, as Docker's json-file makes."""
    from nsmagic.containers import logs
    fd = logs.open_log(str(tmp_path / "log"))
    writer = logs.LogWriter(fd, "stdout")
    for _ in range(100):
        writer.write(b"y" * 1000)
        assert len(writer.partial) < logs.MAX_LINE
    writer.write(b"end\n")
    writer.finish()
    os.close(fd)
    got = logs.entries(str(tmp_path / "log"))
    assert "".join(e["log"] for e in got) == "y" * 100_000 + "end\n"
    assert max(len(e["log"]) for e in got) <= logs.MAX_LINE


def test_an_exec_whose_runner_died_before_it_started_goes_at_once():
    """nsmagic-exec sets its parent-death signal once its interpreter has started: a runner
    that died before then (its config already in the socket) must not leave it running on
    the host, outside any container group, with the command it was asked to start."""
    import socket

    from nsmagic.containers.exec import ENTER
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:   # the runner named is not its parent: as if it had died and the
        done = subprocess.run([sys.executable, "-I", "-S", ENTER, str(theirs.fileno()),
                               str(os.getpid() + 1)], pass_fds=(theirs.fileno(),),
                              timeout=30)   # process been re-parented
    assert done.returncode == 125


def test_stop_of_an_rm_container_is_not_refused(detached):
    """stop waits for the recorded end, which a --rm container's monitor removes at once:
    "there is no container" was said for a stop that worked."""
    record = detached("--rm", "--", "sleep", "60")
    done = nsmagic("stop", "-t", "1", record["name"], check=False)
    assert (done.returncode, done.stdout) == (0, record["name"] + "\n"), done.stderr
