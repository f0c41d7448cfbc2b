"""Faults found by reading the code (issue 10), each with the behaviour that was wrong:
the cgroup layer's edges (a delegated group's leaf swept, a kill that gave up silently, a
limit file that is not a number) and the CLI interrupted at any point of a run."""

import contextlib
import glob
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, leftovers, needs_root

from nsmagic import cgroups
from nsmagic.cgroups.base import read_limit
from nsmagic.cgroups.layout import Layout
from nsmagic.cgroups.v2 import LEAF, CgroupV2
from nsmagic.errors import CgroupError

UNIFIED = "/sys/fs/cgroup/unified"   # this kind of machine: a cgroup2 beside the v1 ones


@pytest.mark.core
def test_a_limit_file_that_is_not_a_number_is_one_sentence(tmp_path):
    (tmp_path / "memory.max").write_text("banana\n")
    with pytest.raises(CgroupError, match="memory.max.*'banana' is not a number"):
        read_limit(str(tmp_path / "memory.max"))
    (tmp_path / "pids.max").write_text("max\n")
    assert read_limit(str(tmp_path / "pids.max")) is None


def _cgroup2() -> str:
    """A cgroup2 hierarchy to make scratch groups in: the unified one beside v1 here, or
    /sys/fs/cgroup where it is v2."""
    layout = cgroups.detect()
    if layout.v2_mount is None:
        pytest.skip("this kernel has no cgroup2 hierarchy mounted")
    return layout.v2_mount


def _sleeper_in(group: str) -> subprocess.Popen:
    proc = subprocess.Popen(["sleep", "60"])
    with open(f"{group}/cgroup.procs", "w") as f:
        f.write(str(proc.pid))
    return proc


def _remove_groups(*groups: str) -> None:
    """A test's scratch groups, in order (children first); a group whose last process was
    just killed may stay busy for a moment."""
    for group in groups:
        for _ in range(100):
            try:
                os.rmdir(group)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.kernel
@needs_root
def test_sweep_never_touches_a_delegated_groups_leaf(tmp_path):
    """A delegated v2 group's own processes (the runner, a Jupyter server, other kernels)
    move to its leaf; sweep removes dead runners' run groups beside it, never the leaf,
    whoever made it (the old leaf, named after the runner that made it, was killed with
    everything in it once that runner died)."""
    mount = _cgroup2()
    scope = f"{mount}/nsmagic-test-scope-{os.getpid()}"
    os.mkdir(scope)
    os.mkdir(f"{scope}/{LEAF}")
    dead_run = f"{scope}/nsmagic-{_dead_pid()}-abc"
    os.mkdir(dead_run)
    kept, gone = _sleeper_in(f"{scope}/{LEAF}"), _sleeper_in(dead_run)
    try:
        layout = Layout("v2", v2_mount=mount, v2_path=scope[len(mount):] + "/" + LEAF)
        removed = cgroups.sweep(layout)
        # (other dead runners' groups under <cgroup2>/nsmagic, a hybrid host's, go too)
        assert dead_run in removed and not [p for p in removed if p.startswith(scope + "/")
                                            and p != dead_run], removed
        assert kept.poll() is None, "the leaf's process was killed"
        assert gone.wait(5) == -signal.SIGKILL
        assert os.path.isdir(f"{scope}/{LEAF}")
    finally:
        for proc in (kept, gone):
            proc.kill()
            proc.wait()
        _remove_groups(dead_run, f"{scope}/{LEAF}", scope)


@pytest.fixture
def v2_group():
    mount = _cgroup2()
    path = f"{mount}/nsmagic-test-kill-{os.getpid()}"
    os.mkdir(path)
    group = CgroupV2.attach(os.path.basename(path), path, cgroups.detect())
    yield group
    group.kill()
    os.rmdir(path)


@pytest.mark.kernel
@needs_root
def test_the_freeze_and_kill_fallback_kills_for_real(v2_group, monkeypatch):
    """Where the kernel has no cgroup.kill (before 5.14), kill() freezes, kills, thaws."""
    sleeper = _sleeper_in(v2_group.dir)
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists",
                        lambda p: False if p.endswith("cgroup.kill") else real_exists(p))
    v2_group.kill()
    assert sleeper.wait(5) == -signal.SIGKILL and v2_group.pids() == []


@pytest.mark.kernel
@needs_root
def test_the_freeze_and_kill_fallback_says_when_it_gives_up(v2_group, monkeypatch):
    """Processes that outlive every round (here: a kill that never lands) are one sentence,
    not a silent return with the group still full."""
    sleeper = _sleeper_in(v2_group.dir)
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists",
                        lambda p: False if p.endswith("cgroup.kill") else real_exists(p))
    monkeypatch.setattr(os, "kill", lambda pid, sig: None)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    try:
        with pytest.raises(CgroupError, match="kept coming back"):
            v2_group.kill()
    finally:
        monkeypatch.undo()
        sleeper.kill()
        sleeper.wait()


def _group_made(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if glob.glob(f"/sys/fs/cgroup/*/nsmagic-{pid}-*") or glob.glob(
                f"/sys/fs/cgroup/**/nsmagic-{pid}-*", recursive=True):
            return True
        time.sleep(0.002)
    return False


@pytest.mark.kernel
@needs_root
@pytest.mark.parametrize("sig,after", [(signal.SIGINT, a) for a in (0.0, 0.005, 0.02, 0.1, 0.3)]
                         + [(signal.SIGTERM, a) for a in (0.0, 0.1)]
                         + [(signal.SIGHUP, a) for a in (0.0, 0.1)])
def test_the_cli_interrupted_at_any_point_of_a_run_says_so_in_one_line(sig, after):
    """Ctrl-C (or a kill's SIGTERM, a closed terminal's SIGHUP: they killed the CLI outright
    and left its groups) while the run starts (its group just made), runs or ends: one
    line, exit 128 + the signal or the container's status, no traceback, nothing left
    behind. (A stop during start() carries no result of a stopped container, and the CLI
    read one.)"""
    cli = subprocess.Popen([sys.executable, "-m", "nsmagic", "run", "--mem", "64M", "--",
                            "sleep", "0.3"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert _group_made(cli.pid), "the run's group never appeared"
    time.sleep(after)
    cli.send_signal(sig)
    err = cli.communicate(timeout=30)[1]
    assert "Traceback" not in err, err
    assert cli.returncode == 0 or cli.returncode >= 128, (cli.returncode, err)
    if cli.returncode:
        assert len(err.strip().splitlines()) == 1 and "interrupted" in err, err
        # the signal's own status, or the container's, ended by the stop (SIGINT, SIGTERM)
        assert cli.returncode in (128 + sig, 128 + signal.SIGINT, 128 + signal.SIGTERM), err
    assert leftovers(cli.pid) == []


@pytest.mark.kernel
@needs_root
def test_groups_a_killed_runner_left_under_another_cgroup_go_after_the_next_run():
    """A runner started from another cgroup (another shell's, another kernel's scope) and
    killed left its groups there, where a later start's sweep (beside its own group) does not
    look. After its run, any runner walks the trees once and removes such groups that are
    empty and old; a busy one (its owner may be a live runner in another pid namespace) or a
    young one (just made, not yet joined) stays."""
    layout = cgroups.detect()
    mount = layout.v2_mount if layout.kind == "v2" else layout.v1_mounts["memory"]
    other = f"{mount}/nsmagic-test-elsewhere-{os.getpid()}"
    dead = _dead_pid()
    old, busy, young = (f"{other}/nsmagic-{dead}-{tag * 12}" for tag in "abc")
    os.mkdir(other)
    for group in (old, busy, young):
        os.mkdir(group)
    an_hour_ago = time.time() - 3600
    for group in (old, busy):
        os.utime(group, (an_hour_ago, an_hour_ago))
    sleeper = _sleeper_in(busy)
    try:
        done = subprocess.run([sys.executable, "-m", "nsmagic", "run", "--mem", "64M", "--",
                               "true"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10   # the CLI's cleanup fork does it after the exit
        while os.path.exists(old) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(old), "an old empty group of a dead runner was left"
        assert os.path.isdir(busy) and sleeper.poll() is None, "a busy group was touched"
        assert os.path.isdir(young), "a group made a moment ago was removed"
    finally:
        sleeper.kill()
        sleeper.wait()
        _remove_groups(old, busy, young, other)


@pytest.mark.core
def test_exit_while_a_spare_is_being_asked_for_joins_it_instead_of_failing(monkeypatch):
    """The process exits (Spares.close at exit, main thread) while the teardown thread asks
    for the next spare: close() found the new worker listed but not started yet and its
    join raised 'cannot join thread before it is started' (seen once at exit)."""
    import threading

    from nsmagic.runtime import spares
    monkeypatch.setattr(spares.Spares, "_ready", {})
    monkeypatch.setattr(spares.Spares, "_making", {})
    monkeypatch.setattr(spares.Spares, "_closed", False)
    monkeypatch.setattr(spares, "make_spare", lambda kind, layout: None)
    Thread = threading.Thread   # spares.threading is the threading module: patched below
    closing: list[threading.Thread] = []
    failed: list[BaseException] = []

    def close():
        try:
            spares.Spares.close()
        except BaseException as e:  # noqa: BLE001 - the test reports it
            failed.append(e)

    class ExitComesFirst(Thread):
        def start(self):   # the process's exit begins between listing and starting
            closing.append(Thread(target=close))
            closing[0].start()
            time.sleep(0.1)
            super().start()

    monkeypatch.setattr(spares.threading, "Thread", ExitComesFirst)
    spares.Spares.refill(spares.SpareKind(rootless=False, network="private",
                                          unconfined=False), None)
    closing[0].join(10)
    assert not closing[0].is_alive() and not failed, failed


@pytest.mark.kernel
@needs_root
def test_a_run_whose_shared_parent_goes_meanwhile_makes_it_again(monkeypatch):
    """root's runs share <cgroup2>/nsmagic, which the last run's teardown removes: a run
    starting at that moment found it gone between the parent's mkdir and its own (seen in
    CI: 'cannot create cgroup .../nsmagic/nsmagic-...: no such file or directory')."""
    from nsmagic.cgroups import v2
    layout = cgroups.detect()
    if layout.v2_mount is None:
        pytest.skip("this kernel has no cgroup2 hierarchy mounted")
    real, calls, removed = v2.run_parent, [], []

    def parent_then_gone(layout):
        parent = real(layout)
        calls.append(parent)
        if len(calls) == 1:     # another run's teardown, just now
            with contextlib.suppress(OSError):   # (busy: other runs are in it)
                os.rmdir(parent)
                removed.append(parent)
        return parent
    monkeypatch.setattr(v2, "run_parent", parent_then_gone)
    parent, group = v2.make_run_group(layout, f"nsmagic-{os.getpid()}-parentgone")
    try:
        assert os.path.isdir(group)
        assert len(calls) == (2 if removed else 1)   # made again, then the group in it
    finally:
        _remove_groups(group)
        v2.remove_shared_parent(parent)
