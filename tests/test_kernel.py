"""A whole kernel in a container (`nsmagic kernel install`), driven through jupyter_client as
a notebook server drives it: its ports reach the client, interrupt, restart and shutdown
work, another kernel sees its accounting, and a kernel over its memory limit is OOM-killed
with the client told it died and why."""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import REPO, leftovers, needs_root

pytestmark = [pytest.mark.kernel, needs_root]

MEM = 160 << 20


@pytest.fixture(scope="module")
def kernels_dir():
    prefix = tempfile.mkdtemp(prefix="nsmagic-kernelspec-test-")
    done = subprocess.run([sys.executable, "-m", "nsmagic", "kernel", "install", "--name",
                           "nsmagic-test", "--prefix", prefix, "--mem", "160M", "--pids", "64",
                           "--display-name", "Python in a container"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done
    yield os.path.join(prefix, "share", "jupyter", "kernels")
    shutil.rmtree(prefix)


def _manager(kernels_dir, name="nsmagic-test"):
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    ksm = KernelSpecManager(kernel_dirs=[kernels_dir])
    return KernelManager(kernel_spec_manager=ksm, kernel_name=name)


class Kernel:
    """A started kernel, its client, and what it wrote to stderr (the server's log)."""

    def __init__(self, km, log):
        self.km, self.log = km, log
        env = dict(os.environ, PYTHONPATH=REPO)
        km.start_kernel(cwd=REPO, env=env, stdout=log, stderr=log)
        self.client = km.blocking_client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def execute(self, code, timeout=60):
        msg_id = self.client.execute(code)
        out = {"stdout": "", "stderr": "", "status": None, "ename": None}
        deadline = time.monotonic() + timeout
        while True:
            msg = self.client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out[content["name"]] += content["text"]
            elif kind == "error":
                out["ename"] = content["ename"]
            elif kind == "status" and content["execution_state"] == "idle":
                break
        reply = self.client.get_shell_msg(timeout=10)
        out["status"] = reply["content"]["status"]
        return out

    def runner_pid(self):
        return self.km.provisioner.process.pid

    def stop(self):
        self.client.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=False)


@pytest.fixture
def kernel(kernels_dir, tmp_path):
    log = open(tmp_path / "kernel.log", "w+")
    k = Kernel(_manager(kernels_dir), log)
    yield k
    k.stop()
    log.close()


def test_the_kernelspec_says_what_it_runs(kernels_dir):
    from jupyter_client.kernelspec import KernelSpecManager
    spec = KernelSpecManager(kernel_dirs=[kernels_dir]).get_kernel_spec("nsmagic-test")
    assert spec.display_name == "Python in a container"
    assert spec.interrupt_mode == "message"
    assert spec.argv[1:5] == ["-m", "nsmagic", "kernel", "run"]
    assert spec.argv[-2:] == ["--", "{connection_file}"] and "--mem" in spec.argv


def test_the_kernel_runs_in_its_container_and_its_ports_reach_the_client(kernel):
    limit = ("/sys/fs/cgroup/memory.max" if os.path.exists("/sys/fs/cgroup/cgroup.procs")
             else "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    got = kernel.execute(f"import os\nprint(os.getpid(), open({limit!r}).read().strip())\n"
                         "print(open('/proc/1/comm').read().strip())")
    assert got["stdout"].split() == ["2", str(MEM), "nsmagic-init"], got


def test_interrupt_stops_the_cell_not_the_kernel(kernel):
    msg_id = kernel.client.execute("import time\ntime.sleep(60)")
    time.sleep(1.5)
    kernel.km.interrupt_kernel()
    deadline = time.monotonic() + 15
    while True:
        reply = kernel.client.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert kernel.execute("print(1 + 1)")["stdout"] == "2\n"


def test_restart_gives_a_fresh_kernel_and_removes_the_old_container(kernel):
    kernel.execute("x = 42")
    old = kernel.runner_pid()
    kernel.km.restart_kernel(now=False)
    kernel.client.wait_for_ready(timeout=60)
    got = kernel.execute("print('x' in dir())")
    assert got["stdout"] == "False\n" and kernel.runner_pid() != old
    assert leftovers(old) == []


def test_another_kernel_sees_its_accounting(kernel):
    from jupyter_client import KernelManager
    other = Kernel(KernelManager(kernel_name="python3"), subprocess.DEVNULL)
    try:
        listing = other.execute("%load_ext nsmagic\n%container ps")["stdout"]
        assert f"(runner {kernel.runner_pid()}," in listing, listing   # Docker's columns
        stats = other.execute("%container stats --no-stream")["stdout"]   # and its memory
        row = next((ln for ln in stats.splitlines() if str(kernel.runner_pid()) in ln), "")
        assert "/ 160.0 MiB" in row, stats
    finally:
        other.stop()


def test_shutdown_leaves_nothing(kernels_dir, tmp_path):
    with open(tmp_path / "log", "w") as log:
        k = Kernel(_manager(kernels_dir), log)
        runner = k.runner_pid()
        k.stop()
    assert leftovers(runner) == []


def test_a_kernel_over_its_memory_limit_is_oom_killed_and_the_client_told_why(kernel):
    kernel.client.execute("x = bytearray(400 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1")
    deadline = time.monotonic() + 60
    while kernel.km.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not kernel.km.is_alive(), "the kernel outlived its memory limit"
    assert kernel.km.provisioner.process.wait(10) == 137
    kernel.log.flush()
    kernel.log.seek(0)
    said = kernel.log.read()
    assert "the kernel was OOM-killed: its container reached its memory limit of 160.0 MiB" \
        in said, said
    kernel.km.restart_kernel(now=True)     # what the server's restarter does
    kernel.client.wait_for_ready(timeout=60)
    got = kernel.execute("print('back')")
    assert got["stdout"] == "back\n"
    assert "the previous kernel was OOM-killed" in got["stderr"], got
