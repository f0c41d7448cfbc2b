"""The Python that tests run as user nobody (the unprivileged tier, the delegated-v2 VM guest).

They need an interpreter that nobody can execute, with the package's dependencies and the test
extras importable. The checkout's own `.venv/bin/python` serves when it can. It cannot when it
was made from a per-user interpreter (pyenv's, under root's home, mode 0700) or sits in a
checkout only root can read: then `tests/install-deps` makes VENV from Debian's
/usr/bin/python3, outside any home, readable by every user, with the dependencies only (the
tests give nobody a readable copy of the package), and says so.

As a script (tests/install-deps runs it with .venv/bin/python, as root): make VENV if
.venv's Python will not do for nobody.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
VENV = "/opt/nsmagic-nobody-venv"
VENV_PYTHON = VENV + "/bin/python"
INSTALL_DEPS = "bash tests/install-deps"
# What runs as nobody or another user: nsmagic's dependencies, pytest (VM guest), nbclient's
# kernel (notebooks), a student's single-user server (the Hub tier).
MODULES = ("IPython", "ipykernel", "ipywidgets", "matplotlib", "pyroute2", "pytest",
           "jupyter_client", "nbclient", "nbformat", "jupyterhub", "jupyter_server")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _closed_dir(path: str) -> str:
    """' (it is /root/.pyenv/..., and /root is mode 0700)': the first directory on path's real
    path that other users cannot enter, or the file itself when they cannot execute it."""
    real = os.path.realpath(path)
    parts = real.split("/")[1:]
    for i in range(1, len(parts) + 1):
        here = "/" + "/".join(parts[:i])
        try:
            mode = os.stat(here).st_mode
        except OSError:
            return ""
        if not mode & stat.S_IXOTH:
            via = f"it is {real}, and " if real != os.path.abspath(path) else ""
            return f" ({via}{here} is mode {stat.S_IMODE(mode):04o})"
    return ""


def why_not(python: str) -> str | None:
    """None when user nobody can run `python` and find MODULES with it; else why not, in a
    clause ('/x/bin/python cannot be executed by user nobody (/x is mode 0700)')."""
    code = ("import importlib.util as u\n"
            f"print(' '.join(m for m in {MODULES!r} if u.find_spec(m) is None))")
    try:
        done = subprocess.run([python, "-I", "-c", code], user=NOBODY, group=NOBODY,
                              extra_groups=[], cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": "/"},
                              capture_output=True, text=True, timeout=120)
    except PermissionError:
        return f"{python} cannot be executed by user nobody" + _closed_dir(python)
    except FileNotFoundError:
        return f"{python} does not exist"
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"{python} fails as user nobody ({said})" + _closed_dir(python)
    missing = done.stdout.split()
    if missing:
        return f"{python} run by user nobody cannot import {', '.join(missing)}"
    return None


def choose() -> tuple[str | None, str]:
    """(the interpreter to run as nobody, or None; a sentence saying which and why).
    Needs root (it runs the candidates as nobody)."""
    own = sys.executable
    problem = why_not(own)
    if problem is None:
        return own, f"tests run as user nobody used {own}"
    fallback = why_not(VENV_PYTHON)
    if fallback is None:
        return VENV_PYTHON, (f"tests run as user nobody used {VENV_PYTHON} (made from "
                             f"{SYSTEM_PYTHON} by tests/install-deps): {problem}")
    return None, (f"no Python for user nobody: {problem}, and {fallback}; run `{INSTALL_DEPS}` "
                  f"as root: it makes {VENV} from {SYSTEM_PYTHON}")


def requirements() -> list[str]:
    """The package's dependencies and its test and hub extras, from pyproject.toml."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11: the copy pip carries
        from pip._vendor import tomli as tomllib
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    extras = project["optional-dependencies"]
    return [*project["dependencies"], *extras["test"], *extras["hub"]]


def make() -> int:
    """Make VENV when .venv's Python will not do for nobody; say what was done."""
    problem = why_not(sys.executable)
    if problem is None:
        return 0
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        print(f"install-deps: {problem}, and there is no {SYSTEM_PYTHON} to make {VENV} from "
              f"for the tests run as nobody: apt-get install python3-venv", file=sys.stderr)
        return 1
    print(f"install-deps: {problem}: the tests run as nobody use {VENV}, made from "
          f"{SYSTEM_PYTHON}", flush=True)
    if not os.path.exists(VENV_PYTHON):
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", VENV], check=True)
    subprocess.run([VENV_PYTHON, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *requirements()], check=True)
    subprocess.run(["chmod", "-R", "a+rX", VENV], check=True)    # whatever root's umask was
    problem = why_not(VENV_PYTHON)
    if problem is not None:
        print(f"install-deps: {problem}, after making it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(make())
