"""Shared fixtures. Tests build a spec, run it for real, and check one thing (as crun's do)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from leaks import leftovers, processes_left  # noqa: E402 - tests import them from here too
from outside import outside_world  # noqa: E402,F401 - a fixture: the world behind the host

from nsmagic.core import run  # noqa: E402
from nsmagic.spec import Spec  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


def kill_runner(runner: subprocess.Popen, within: float) -> list[str]:
    """SIGKILL a runner (a kernel dying) and give its containers `within` seconds to die
    with it; returns the container processes still alive then."""
    runner.kill()
    runner.wait()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and processes_left(runner.pid):
        time.sleep(0.02)
    return processes_left(runner.pid)


@pytest.fixture
def no_leaks():
    """Fails the test if it leaves a cgroup, mount or container process behind."""
    before = set(leftovers())
    yield
    after = set(leftovers()) - before
    assert not after, f"left behind: {sorted(after)}"


@pytest.fixture(scope="session")
def ipython():
    """IPython's test shell with nsmagic loaded: one per session (start_ipython makes it
    the first time only, and returns nothing after)."""
    from IPython.terminal.interactiveshell import TerminalInteractiveShell
    from IPython.testing.globalipapp import start_ipython
    start_ipython()
    shell = TerminalInteractiveShell.instance()
    shell.run_line_magic("load_ext", "nsmagic")
    return shell


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty image store of the test's own (NSMAGIC_STORE, which CLI runs inherit)."""
    from nsmagic.images.store import Store
    monkeypatch.setenv("NSMAGIC_STORE", str(tmp_path / "store"))
    return Store().ensure()


class Captured:
    def __init__(self, result, out, err):
        self.result, self.out, self.err = result, out, err

    def __repr__(self):
        return f"<{self.result.summary()!r} out={self.out!r} err={self.err!r}>"


def run_spec(argv, script=None) -> Captured:
    out, err = io.StringIO(), io.StringIO()
    spec = Spec.from_argv(argv, script=script)
    result = run(spec, out=out, err=err)
    return Captured(result, out.getvalue(), err.getvalue())


@pytest.fixture
def sh():
    """Run a shell script in a container: sh("--mem 64M", "echo hi")."""
    def go(options: str, script: str) -> Captured:
        return run_spec(f"{options} -- sh -c {_quote(script)}")
    return go


@pytest.fixture
def py():
    """Run a Python cell (the kernel's Python) in a container."""
    def go(options: str, cell: str) -> Captured:
        return run_spec(options, script=cell)
    return go


def _quote(s: str) -> str:
    import shlex
    return shlex.quote(s)


@pytest.fixture(scope="session")
def busybox_root(tmp_path_factory):
    """A tiny root file system from Debian's busybox-static, nothing downloaded."""
    busybox = shutil.which("busybox") or "/usr/bin/busybox"
    if not os.path.exists(busybox):
        pytest.fail("busybox is missing: apt-get install busybox-static (.ci/run does)")
    root = tmp_path_factory.mktemp("busybox-root")
    (root / "bin").mkdir()
    shutil.copy(busybox, root / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", root / "bin" / applet)
    for d in ("etc", "tmp", "proc", "sys", "dev", "root"):
        (root / d).mkdir()
    (root / "etc" / "motd").write_text("busybox image\n")
    return str(root)


# --- what the tests run as user nobody: an interpreter and a copy of the checkout

_nobody_note: list[str] = []


@pytest.fixture(scope="session")
def nobody_python() -> str:
    """An interpreter user nobody can run, with the dependencies and test extras (see
    tests/nobody.py): this venv's own, or the one tests/install-deps makes from
    /usr/bin/python3 when this one is out of nobody's reach; which one is said at the end."""
    import nobody
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to a user")
    python, note = nobody.choose()
    _nobody_note.append(note)
    if python is None:
        pytest.fail(note, pytrace=False)
    return python


@pytest.fixture(scope="session")
def nobody_checkout() -> str:
    """A copy of this checkout's package, tests and pyproject.toml that any user can read
    (the checkout may sit under root's home): PYTHONPATH or cwd for what runs as nobody.
    In a directory of its own under /tmp, not pytest's /tmp/pytest-of-root: another pytest
    session of root's (a second checkout's) makes that 0700 again, or removes old runs' dirs,
    and a user's PYTHONPATH into it then silently finds nothing."""
    import tempfile
    from pathlib import Path
    where = Path(tempfile.mkdtemp(prefix="nsmagic-checkout-"))
    skip = shutil.ignore_patterns("__pycache__", "output")
    shutil.copytree(os.path.join(REPO, "nsmagic"), where / "nsmagic", ignore=skip)
    shutil.copytree(os.path.join(REPO, "tests"), where / "tests", ignore=skip)
    shutil.copy(os.path.join(REPO, "pyproject.toml"), where / "pyproject.toml")
    subprocess.run(["chmod", "-R", "a+rX", str(where)], check=True)
    yield str(where)
    shutil.rmtree(where, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    if _nobody_note:
        terminalreporter.write_sep("-", "user nobody's Python")
        terminalreporter.write_line(_nobody_note[0])
