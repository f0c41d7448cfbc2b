"""The same core as an unprivileged user: a user namespace (root inside, the user outside),
overlay with userxattr, and a banner when cgroup limits cannot be enforced."""

import os
import subprocess

import pytest

pytestmark = [pytest.mark.unprivileged,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to a user")]

NOBODY = 65534
# Debian's own Python, with nothing but the package: the CLI needs no dependency to run.
PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def package(nobody_checkout):
    """A copy of nsmagic any user can read (the checkout may sit under root's home)."""
    if not os.path.exists(PYTHON):
        pytest.fail(f"no {PYTHON} for the unprivileged user: apt-get install python3")
    return nobody_checkout


def as_user(package, *args, stdin=None, python=PYTHON):
    return subprocess.run([python, "-m", "nsmagic", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, user=NOBODY, group=NOBODY, extra_groups=[],
                          cwd="/", env={"PYTHONPATH": package, "PATH": "/usr/bin:/bin",
                                        "HOME": "/"})


def test_root_inside_pid_1_and_own_hostname(package):
    done = as_user(package, "run", "--hostname", "rootless", "--", "sh", "-c",
                   "id -u; echo $$; hostname; ps -eo pid,comm | tail -n +2")
    lines = done.stdout.split("\n")
    assert lines[:3] == ["0", "2", "rootless"], done
    assert lines[3].split() == ["1", "nsmagic-init"]


def test_writes_stay_in_the_upper_layer(package):
    done = as_user(package, "run", "--", "sh", "-c", "echo x > /tmp/f && cat /tmp/f && "
                   "echo y > /etc/nsmagic-rootless-test; ls /etc/nsmagic-rootless-test")
    assert done.stdout.startswith("x\n"), done
    assert not os.path.exists("/etc/nsmagic-rootless-test")


def test_python_cell_as_a_user(package):
    done = as_user(package, "run", stdin="import os; print(os.getpid(), os.getuid())")
    assert done.stdout.strip() == "2 0", done


def test_python_cell_as_a_user_from_a_venv(package, nobody_python):
    """A user's venv (the one the other unprivileged tests use): its prefix and the base
    Python's are bound into the container, and the cell imports from its site-packages."""
    done = as_user(package, "run", python=nobody_python,
                   stdin="import os, sys, pyroute2; print(os.getpid(), sys.prefix)")
    assert done.stdout.split() == ["2", os.path.dirname(os.path.dirname(nobody_python))], done


def test_limits_without_delegation_get_a_banner_and_strict_refuses(package):
    done = as_user(package, "run", "--mem", "64M", "--", "true")
    assert done.returncode == 0
    assert "limits NOT enforced" in done.stderr and "--strict" in done.stderr
    strict = as_user(package, "run", "--strict", "--mem", "64M", "--", "true")
    assert strict.returncode == 125 and "delegate" in strict.stderr


def test_user_flag_needs_root(package):
    done = as_user(package, "run", "--user", "1000", "--", "true")
    assert done.returncode == 125 and "--user needs root" in done.stderr


def test_info_as_a_user_says_what_is_missing_and_leaves_no_probe_behind(package):
    import glob
    before = set(glob.glob("/tmp/nsmagic-probe-*"))
    done = as_user(package, "info")
    assert "Running as root:   no" in done.stdout
    assert "rootless" in done.stdout
    assert set(glob.glob("/tmp/nsmagic-probe-*")) == before   # overlay's work/work is 000


def test_host_network_as_a_user_gets_a_read_only_sys(package):
    """A user namespace on the host's network may not mount a sysfs of its own: the host's
    /sys is bound and made read-only (a whole kernel in a container runs so, for its ports)."""
    done = as_user(package, "run", "--network", "host", "--", "sh", "-c",
                   "grep ' /sys ' /proc/self/mounts; touch /sys/x")
    assert done.stdout.split()[3].split(",")[0] == "ro", done
    assert "Read-only file system" in done.stderr, done
NOTEBOOK_CELL = r"""
import io
from nsmagic.cell.channel import Channel
from nsmagic.core import run
from nsmagic.spec import Spec
cell = "import os\nprint(os.getuid())\n!echo from the shell\n6 * 7"
spec = Spec.from_argv("", script=cell).replace(ipython=True)
channel, out = Channel(spec), io.StringIO()
result = run(spec, out=out, err=out, channel=channel)
print(out.getvalue().strip(), repr(channel.result), result.exit_code, channel.error)
"""


def test_a_notebook_cell_as_a_user_runs_through_ipython(package, nobody_python):
    """The magic's way of running a Python cell (cell/host.py through IPython), rootless: the
    user's venv is an overlay lower layer (userxattr), IPython starts from it, `!` works."""
    done = subprocess.run([nobody_python, "-c", NOTEBOOK_CELL], capture_output=True, text=True,
                          timeout=60, user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
                          env={"PYTHONPATH": package, "PATH": "/usr/bin:/bin", "HOME": "/"})
    assert done.stdout.split() == ["0", "from", "the", "shell", "42", "0", "None"], done


# --- networking without root: pasta (passt)

REACH = ("import socket, sys; s = socket.create_connection((sys.argv[1], 9000), timeout=5); "
         "print(s.recv(64).decode())")


def test_a_rootless_container_reaches_what_the_host_reaches(package, outside_world):
    """Through pasta: the test's "outside" namespace, behind the host, sees the host's
    address (pasta's sockets are the user's on the host)."""
    from outside import OUTSIDE_HOST, OUTSIDE_PEER
    done = as_user(package, "run", "--network", "pasta", "--", "python3", "-c", REACH,
                   OUTSIDE_PEER)
    assert done.returncode == 0, done
    assert done.stdout.strip() == OUTSIDE_HOST
    cut_off = as_user(package, "run", "--", "python3", "-c", REACH, OUTSIDE_PEER)
    assert cut_off.returncode != 0   # --network none, still nothing


def test_a_rootless_container_publishes_a_port(package):
    import socket
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    serve = ("import socket; s = socket.socket(); s.bind(('', 8000)); s.listen(); "
             "print('up', flush=True); c, _ = s.accept(); c.sendall(b'from inside'); c.close()")
    server = subprocess.Popen(["/usr/bin/python3", "-m", "nsmagic", "run", "--network", "pasta",
                               "-p", f"{port}:8000", "--", "python3", "-c", serve],
                              stdout=subprocess.PIPE, text=True, user=NOBODY, group=NOBODY,
                              extra_groups=[], cwd="/",
                              env={"PYTHONPATH": package, "PATH": "/usr/bin:/bin",
                                   "HOME": "/"})
    try:
        assert server.stdout.readline() == "up\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            assert conn.recv(64) == b"from inside"
        assert server.wait(timeout=20) == 0
    finally:
        server.kill()
        server.wait()
    with pytest.raises(OSError):        # pasta went with the container
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_rootless_network_errors_are_one_sentence(package):
    bridge = as_user(package, "run", "--network", "bridge", "--", "true")
    assert bridge.returncode == 125 and bridge.stderr.strip() == (
        "nsmagic: --network bridge needs root (a bridge and NAT rules of the host); without "
        "root use --network pasta.")
    info = as_user(package, "info")
    assert "pasta (rootless) yes" in info.stdout and "bridge           no: needs root" in \
        info.stdout
