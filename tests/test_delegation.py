"""`nsmagic setup-user`: root delegates a cgroup subtree to a student, on whatever layout the
kernel has (the VM tier runs this file in v2, v1 and hybrid guests), under ceilings the
student cannot lift; the student's nsmagic finds it by itself and enforces every limit; each
student sees only their own containers."""

import json
import os
import subprocess

import pytest
from students import become, env_of, make_users, remove_user

from nsmagic.cgroups import delegation, detect
from nsmagic.cgroups.layout import USERS_DIR

pytestmark = [pytest.mark.unprivileged,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make users")]

PYTHON = "/usr/bin/python3"      # Debian's own: the CLI needs no dependency
LAYOUT = detect()
# cgroup v2 lets only root move a process into the subtree: the student's commands start
# there, as a spawner starts a student's server. v1 needs no move: the student's nsmagic
# uses the subtree from wherever it runs.
JOIN = LAYOUT.kind == "v2"
CEILING = ["--mem", "64M", "--cpus", "0.5", "--pids", "40"]


def nsmagic_root(*args):
    return subprocess.run([PYTHON, "-m", "nsmagic", *args], capture_output=True, text=True,
                          timeout=60, cwd=os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def students():
    made = make_users(2)
    yield made
    for entry in made:
        remove_user(entry.pw_name)
    assert not _users_dirs_left(), "setup-user left groups after every student was removed"


def _users_dirs_left():
    return [d for d in (os.path.join(m, USERS_DIR) for m in delegation.hierarchies(LAYOUT))
            if os.path.exists(d)]


@pytest.fixture(scope="module")
def student(students):
    """The first student, delegated a subtree with ceilings; the second has none."""
    done = nsmagic_root("setup-user", students[0].pw_name, *CEILING)
    assert done.returncode == 0, done
    return students[0]


def as_student(entry, package, *args, join=JOIN, timeout=60, stdin=None, wait=True):
    cmd = [PYTHON, "-m", "nsmagic", *args]
    kwargs = dict(preexec_fn=become(entry, join), cwd="/",
                  env=env_of(entry, PYTHONPATH=package))
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, **kwargs)
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout,
                          **kwargs)


def result_of(done) -> dict:
    assert done.stdout.strip(), done
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- setup-user: what it makes

def test_the_subtree_is_the_students_and_the_ceiling_roots(student):
    for mount in delegation.hierarchies(LAYOUT):
        top = delegation.ceiling_dir(mount, student.pw_uid)
        mine = os.path.join(top, "delegated")
        assert os.stat(top).st_uid == 0 and os.stat(mine).st_uid == student.pw_uid
        assert os.stat(mine).st_mode & 0o777 == 0o700      # other students cannot look in
        assert os.stat(os.path.join(mine, "cgroup.procs")).st_uid == student.pw_uid
        limit_files = [f for f in os.listdir(mine) if f.startswith(("memory.", "pids.", "cpu."))]
        assert all(os.stat(os.path.join(mine, f)).st_uid == 0 for f in limit_files)


def test_ceiling_values_are_written(student):
    if LAYOUT.kind == "v2":
        top = delegation.ceiling_dir(LAYOUT.v2_mount, student.pw_uid)
        assert open(f"{top}/memory.max").read().strip() == str(64 << 20)
        assert open(f"{top}/cpu.max").read().split() == ["50000", "100000"]
        assert open(f"{top}/pids.max").read().strip() == "40"
        return
    top = {c: delegation.ceiling_dir(m, student.pw_uid) for c, m in LAYOUT.v1_mounts.items()}
    assert open(f"{top['memory']}/memory.limit_in_bytes").read().strip() == str(64 << 20)
    assert open(f"{top['cpu']}/cpu.cfs_quota_us").read().strip() == "50000"
    assert open(f"{top['pids']}/pids.max").read().strip() == "40"


# --- the student's nsmagic finds it and enforces every limit, --strict included

def test_info_says_which_delegation_it_found(student, nobody_checkout):
    done = as_student(student, nobody_checkout, "info")
    assert "Mode:              rootless: user namespace, cgroup limits" in done.stdout, done
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("Cgroup delegation:"))
    assert f"nsmagic setup-user, for uid {student.pw_uid}" in line
    assert "memory 64.0 MiB, cpus 0.5, pids 40" in line


def test_memory_limit_enforced_and_the_oom_seen(student, nobody_checkout):
    done = as_student(student, nobody_checkout, "run", "--strict", "--json", "--mem", "32M",
                      "--", PYTHON, "-c", "x = [bytearray(1 << 20) for _ in range(100)]")
    result = result_of(done)
    assert result["exit_code"] == 137 and result["oom_killed"] and result["oom_kills"] >= 1
    assert result["limits_enforced"] and result["memory_peak"] <= 32 << 20


def test_pids_limit_enforced(student, nobody_checkout):
    done = as_student(student, nobody_checkout, "run", "--strict", "--json", "--pids", "12",
                      "--", "sh", "-c", "for i in $(seq 30); do sleep 3 & done; wait")
    result = result_of(done)
    assert result["pids_peak"] is not None and result["pids_peak"] <= 12, result
    assert "fork" in done.stderr.lower(), done     # sh said it could not fork


def test_cpu_quota_enforced(student, nobody_checkout):
    cell = ("import os, time\nt0, c0 = time.monotonic(), os.times()\n"
            "while time.monotonic() - t0 < 2.0: pass\nc1 = os.times()\n"
            "print((c1.user + c1.system - c0.user - c0.system) / (time.monotonic() - t0))")
    done = as_student(student, nobody_checkout, "run", "--strict", "--cpus", "0.25",
                      "--", PYTHON, "-c", cell)
    assert 0.15 <= float(done.stdout) <= 0.32, done


# --- nothing the student does lifts the ceiling

def test_a_larger_limit_of_their_own_stops_at_the_ceiling(student, nobody_checkout):
    """The student's own run group is theirs to write (--mem 200M), the ceiling (64M) is not:
    the kernel holds the group below it to the ceiling."""
    done = as_student(student, nobody_checkout, "run", "--strict", "--json", "--mem", "200M",
                      "--", PYTHON, "-c", "x = [bytearray(1 << 20) for _ in range(120)]")
    result = result_of(done)
    assert result["exit_code"] == 137 and result["oom_killed"], result
    assert result["memory_peak"] <= 64 << 20


def test_the_student_cannot_write_the_ceiling_or_leave_the_subtree(student, nobody_checkout):
    """As the student on the host (more than a cell can reach: a cell sees only its own
    group, read-only): the ceiling's files, renaming or removing its group, a group beside
    it, moving themselves out to the hierarchy's root: all refused."""
    mount = LAYOUT.v2_mount if LAYOUT.kind == "v2" else LAYOUT.v1_mounts["memory"]
    top = delegation.ceiling_dir(mount, student.pw_uid)
    limit = "memory.max" if LAYOUT.kind == "v2" else "memory.limit_in_bytes"
    probe = f"""
import os
tries = {{
    "write ceiling": lambda: open({top!r} + "/{limit}", "w").write("max"),
    "write subtree_control above": lambda: open({top!r} + "/cgroup.subtree_control",
                                                "w").write("-memory"),
    "move out": lambda: open({mount!r} + "/cgroup.procs", "w").write(str(os.getpid())),
    "move to ceiling group": lambda: open({top!r} + "/cgroup.procs", "w").write(
        str(os.getpid())),
    "rename ceiling": lambda: os.rename({top!r}, {top!r} + "-x"),
    "rmdir ceiling": lambda: os.rmdir({top!r}),
    "group beside": lambda: os.mkdir(os.path.dirname({top!r}) + "/mine"),
}}
for name, attempt in tries.items():
    try:
        attempt()
        print(name, "ALLOWED")
    except OSError as err:
        print(name, "refused", err.errno)
"""
    done = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, timeout=30,
                          preexec_fn=become(student, JOIN), cwd="/", env=env_of(student))
    assert "ALLOWED" not in done.stdout and done.stdout.count("refused") == 7, done
    assert open(f"{top}/{limit}").read().strip() == str(64 << 20)


def test_a_cell_cannot_write_its_cgroup(student, nobody_checkout):
    limit = "memory.max" if LAYOUT.kind == "v2" else "memory/memory.limit_in_bytes"
    done = as_student(student, nobody_checkout, "run", "--strict", "--mem", "32M", "--", "sh",
                      "-c", f"echo max > /sys/fs/cgroup/{limit} && echo WROTE; "
                      "mount -o remount,rw /sys/fs/cgroup 2>&1 && echo REMOUNTED; true")
    assert "WROTE" not in done.stdout and "REMOUNTED" not in done.stdout, done
    assert "Read-only file system" in done.stderr, done


# --- a student without a subtree, and the errors of setup-user

def test_without_a_subtree_info_gives_the_exact_command(students, nobody_checkout):
    other = students[1]
    done = as_student(other, nobody_checkout, "info", join=False)
    assert f"setup-user {other.pw_name}`" in done.stdout, done
    strict = as_student(other, nobody_checkout, "run", "--strict", "--mem", "32M", "--", "true",
                        join=False)
    assert strict.returncode == 125 and f"setup-user {other.pw_name}`" in strict.stderr, strict


@pytest.mark.parametrize("args, said", [
    (["nsmagic-no-such-user"], "there is no user 'nsmagic-no-such-user' on this machine"),
    (["root", "--mem", "100T"], "of memory this machine has; give at most"),
    (["root", "--cpus", "4096"], "cores this machine has; give at most"),
    (["root", "--mem", "lots"], "--mem 'lots' is not a size"),
])
def test_setup_user_errors_are_one_sentence(args, said):
    done = nsmagic_root("setup-user", *args)
    assert done.returncode == 125 and said in done.stderr, done
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_setup_user_needs_root(students, nobody_checkout):
    done = as_student(students[1], nobody_checkout, "setup-user", students[1].pw_name,
                      join=False)
    assert done.returncode == 125 and "setup-user needs root" in done.stderr, done


# --- each sees only their own (priority 2)

def test_each_student_sees_only_their_own_containers(students, student, nobody_checkout):
    """Both students delegated; the first runs a container: the second's `ps` does not list
    it, cannot read its group, cannot signal it; root's lists it with its owner."""
    other = students[1]
    assert nsmagic_root("setup-user", other.pw_name).returncode == 0
    try:
        runner = as_student(student, nobody_checkout, "run", "--", "sh", "-c",
                            "echo up; sleep 20", wait=False)
        try:
            assert runner.stdout.readline() == "up\n"
            theirs = as_student(student, nobody_checkout, "ps").stdout
            assert str(runner.pid) in theirs and student.pw_name[:10] in theirs, theirs
            seen = as_student(other, nobody_checkout, "ps").stdout
            assert str(runner.pid) not in seen, seen
            assert "no nsmagic container of yours" in seen
            assert str(runner.pid) in nsmagic_root("ps").stdout
            _other_cannot_reach(other, student, runner.pid)
        finally:
            runner.kill()
            runner.wait()
    finally:
        assert nsmagic_root("setup-user", other.pw_name, "--remove", "--kill").returncode == 0


def _other_cannot_reach(other, student, runner_pid):
    mount = LAYOUT.v2_mount if LAYOUT.kind == "v2" else LAYOUT.v1_mounts["memory"]
    mine = os.path.join(delegation.ceiling_dir(mount, student.pw_uid), "delegated")
    probe = f"""
import os, signal
try:
    os.listdir({mine!r}); print("listed")
except OSError as err:
    print("list refused", err.errno)
try:
    os.kill({runner_pid}, signal.SIGTERM); print("signalled")
except OSError as err:
    print("signal refused", err.errno)
"""
    done = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, timeout=30,
                          preexec_fn=become(other, False), cwd="/", env=env_of(other))
    assert done.stdout.split("\n")[:2] == ["list refused 13", "signal refused 1"], done


def test_a_kept_container_is_its_owners_alone(students, student, nobody_checkout):
    """Containers that stay (--keep) live in their owner's store (mode 0700): another student
    neither lists, reads the logs of, inspects nor removes them; the owner does."""
    other = students[1]
    done = as_student(student, nobody_checkout, "run", "--keep", "--name", "alpha-box", "--",
                      "sh", "-c", "echo secret-output")
    assert done.returncode == 0 and "secret-output" in done.stdout, done
    try:
        assert "alpha-box" in as_student(student, nobody_checkout, "ps", "-a").stdout
        assert "alpha-box" not in as_student(other, nobody_checkout, "ps", "-a",
                                             join=False).stdout
        for command in (["logs"], ["container", "inspect"], ["rm"]):
            tried = as_student(other, nobody_checkout, *command, "alpha-box", join=False)
            assert tried.returncode != 0 and "secret-output" not in tried.stdout, tried
            assert "no container alpha-box" in tried.stderr and "Traceback" not in tried.stderr
        assert "secret-output" in as_student(student, nobody_checkout, "logs",
                                             "alpha-box").stdout
    finally:
        as_student(student, nobody_checkout, "rm", "-f", "alpha-box")


# --- remove

def test_remove_refuses_while_processes_run_unless_kill(students, nobody_checkout):
    other = students[1]
    assert nsmagic_root("setup-user", other.pw_name).returncode == 0
    sleeper = as_student(other, nobody_checkout, "run", "--", "sh", "-c", "echo up; sleep 30",
                         wait=False, join=True)
    try:
        assert sleeper.stdout.readline() == "up\n"
        done = nsmagic_root("setup-user", other.pw_name, "--remove")
        assert done.returncode == 125 and "still hold" in done.stderr and "--kill" in done.stderr
        done = nsmagic_root("setup-user", other.pw_name, "--remove", "--kill")
        assert done.returncode == 0, done
        assert sleeper.wait(10) != 0
    finally:
        sleeper.kill()
        sleeper.wait()
    for mount in delegation.hierarchies(LAYOUT):
        assert not os.path.exists(delegation.ceiling_dir(mount, other.pw_uid))


def test_setup_twice_changes_the_ceiling(student):
    done = nsmagic_root("setup-user", student.pw_name, "--mem", "96M")
    try:
        assert done.returncode == 0, done
        ceiling = delegation._read_ceiling(_layout_as(student))
        assert (ceiling.memory, ceiling.cpus, ceiling.pids) == (96 << 20, None, None)
    finally:
        assert nsmagic_root("setup-user", student.pw_name, *CEILING).returncode == 0


def _layout_as(entry):
    """The layout with the student's delegation, as their nsmagic finds it."""
    from nsmagic.cgroups.layout import _find_delegation
    layout = detect()
    _find_delegation(layout, entry.pw_uid)
    return layout


@pytest.mark.core
@pytest.mark.parametrize("layout, said", [
    ("none", "no cgroup file system is mounted here"),
    ("freezer-only", "have none of the memory, cpu and pids controllers"),
    ("no-pids", "--pids needs the pids controller"),
])
def test_a_layout_without_what_setup_needs_is_one_sentence(layout, said):
    """Checked before anything is made (the layout as detect() would give it)."""
    from nsmagic.cgroups import Layout, Limits
    from nsmagic.errors import CgroupError
    mounts = {"none": {}, "freezer-only": {"freezer": "/x/freezer"},
              "no-pids": {"memory": "/x/memory", "cpu": "/x/cpu"}}[layout]
    fake = Layout("none" if layout == "none" else "v1", mounts)
    with pytest.raises(CgroupError) as err:
        delegation._check_layout(fake, Limits(memory=64 << 20, pids=32))
    assert said in str(err.value) and str(err.value).endswith(".")
