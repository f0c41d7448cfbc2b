"""The IPython face, through a real IPython shell and through a real kernel (jupyter_client)."""

import os
import time

import pytest
from conftest import REPO, needs_root

pytestmark = [pytest.mark.kernel, needs_root, pytest.mark.usefixtures("no_leaks")]


@pytest.fixture(scope="module")
def ip(ipython):
    return ipython


def test_cell_runs_python_in_the_container(ip, capsys):
    ip.run_cell_magic("container", "--mem 100M --hostname magic-box",
                      "import os, socket\nprint(os.getpid(), socket.gethostname())")
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "2 magic-box", out
    assert "exit 0" in out and "of 100.0 MiB" in out   # the summary line
    result = ip.user_ns["_container"]
    assert result.exit_code == 0 and result.memory_limit == 100 << 20


def test_command_after_the_options_gets_the_cell_as_its_script(ip, capsys):
    ip.run_cell_magic("container", "--out captured sh", "echo from-sh; hostname")
    assert ip.user_ns["captured"].startswith("from-sh\n")
    assert "from-sh" not in capsys.readouterr().out


def test_non_zero_exit_raises_unless_told_not_to(ip):
    from nsmagic.magics import ContainerError
    with pytest.raises(ContainerError) as info:
        ip.run_cell_magic("container", "", "raise SystemExit(4)")
    assert info.value.returncode == 4
    ip.run_cell_magic("container", "--no-raise-error", "raise SystemExit(4)")
    assert ip.user_ns["_container"].exit_code == 4


def test_bad_option_is_a_usage_error_and_starts_nothing(ip):
    from IPython.core.error import UsageError
    with pytest.raises(UsageError, match="--mem 'banana' is not a size"):
        ip.run_cell_magic("container", "--mem banana", "print(1)")
    with pytest.raises(UsageError, match="unrecognized arguments"):
        ip.run_cell_magic("container", "--frobnicate", "print(1)")


def test_info_line_magic(ip, capsys):
    ip.run_line_magic("container", "info")
    out = capsys.readouterr().out
    assert "Cgroup layout:" in out and "Namespaces:" in out and "pid        yes" in out


# --- through a real kernel, as Jupyter runs it

@pytest.fixture(scope="module")
def kernel():
    from jupyter_client.manager import KernelManager
    km = KernelManager(kernel_name="python3")   # ipykernel's own spec: this venv's Python
    km.start_kernel(cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    _execute(kc, "%load_ext nsmagic")
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def _execute(kc, code, timeout=60, on_message=None):
    msg_id = kc.execute(code)
    messages = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=deadline - time.monotonic())
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        msg["received"] = time.monotonic()
        messages.append(msg)
        if on_message:
            on_message(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=10)
    return messages, reply


def test_output_streams_during_execution_through_a_real_kernel(kernel):
    _, kc = kernel
    messages, reply = _execute(kc, "%%container --no-plot sh\necho one; sleep 1.5; echo two")
    assert reply["content"]["status"] == "ok"
    streams = [m for m in messages if m["msg_type"] == "stream"]
    one = next(m for m in streams if "one" in m["content"]["text"])
    two = next(m for m in streams if "two" in m["content"]["text"])
    assert two["received"] - one["received"] > 1.0   # not all at the end


def test_interrupt_through_a_real_kernel(kernel):
    km, kc = kernel
    started = []

    def interrupt_when_running(msg):
        if msg["msg_type"] == "stream" and "ready" in msg["content"]["text"] and not started:
            started.append(time.monotonic())
            km.interrupt_kernel()

    messages, reply = _execute(kc, "%%container --no-plot sh\necho ready; sleep 100",
                               on_message=interrupt_when_running)
    assert started, messages
    ended = messages[-1]["received"]
    assert ended - started[0] < 1.5
    # one line, and no traceback through nsmagic's frames
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert len(errors) == 1 and len(errors[0]["traceback"]) == 1, errors
    assert errors[0]["traceback"][0].startswith("Container was interrupted (stopped with SIG")
    assert reply["content"]["status"] == "error"
    # _container is the interrupted run's, and the kernel runs the next cell
    messages, reply = _execute(kc, "print(_container.interrupted, _container.stopped_by)")
    text = "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream")
    assert reply["content"]["status"] == "ok" and text.startswith("True SIG"), text
    _, reply = _execute(kc, "%%container --no-plot\nprint('after')")
    assert reply["content"]["status"] == "ok"


def test_config_makes_no_plot_and_interval_the_default(ip):
    ip.run_line_magic("config", "ContainerMagics.interval = 0.1")
    try:
        ip.run_cell_magic("container", "--no-plot", "import time; time.sleep(0.6)")
        samples = ip.user_ns["_container"].samples
        assert len(samples) >= 5, len(samples)   # ~every 0.1 s, not every 0.25 s
    finally:
        ip.run_line_magic("config", "ContainerMagics.interval = 0.25")


def test_stats_plots_every_running_container_live(kernel):
    import subprocess
    import sys
    _, kc = kernel
    other = subprocess.Popen([sys.executable, "-m", "nsmagic", "run", "--mem", "80M", "--cpus",
                              "0.5", "--", "sh", "-c", "echo up; while :; do :; done"],
                             cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert other.stdout.readline() == b"up\n"
        messages, reply = _execute(kc, "%container stats --seconds 2")
    finally:
        other.kill()
        other.wait()
    assert reply["content"]["status"] == "ok"
    shown = [m for m in messages if m["msg_type"] == "display_data"]
    updates = [m for m in messages if m["msg_type"] == "update_display_data"]
    text = "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream")
    assert f"nsmagic-{other.pid}-" in text
    assert shown and "image/png" in shown[0]["content"]["data"]
    assert len(updates) >= 2, [m["msg_type"] for m in messages]
