"""A %%container Python cell behaves like a notebook cell, as Jupyter sees it: through a real
kernel (jupyter_client), with the messages checked (issue 12). Kernel tier: root, real
containers."""

from __future__ import annotations

import os
import re
import sys
import time
import zipfile

import pytest
from conftest import REPO, needs_root

pytestmark = [pytest.mark.kernel, needs_root, pytest.mark.usefixtures("no_leaks")]

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def kernel():
    from jupyter_client.manager import KernelManager
    km = KernelManager(kernel_name="python3")   # ipykernel's own spec: this venv's Python
    km.start_kernel(cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    kc = km.client()
    kc.manager = km      # for the stop button
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    messages, reply, _ = execute(kc, "%load_ext nsmagic")
    assert reply["content"]["status"] == "ok", messages
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def execute(kc, code, answers=(), allow_stdin=True, timeout=60):
    """Run a cell: its iopub messages until idle, its reply, and the input requests it made
    (each answered in turn from `answers`)."""
    msg_id = kc.execute(code, allow_stdin=allow_stdin)
    messages, asked, answers = [], [], list(answers)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers:
            try:
                request = kc.get_stdin_msg(timeout=0.01)
                asked.append(request["content"])
                kc.input(answers.pop(0))
            except Exception:   # noqa: BLE001 - queue.Empty: no request yet
                pass
        try:
            msg = kc.get_iopub_msg(timeout=0.05)
        except Exception:   # noqa: BLE001 - queue.Empty
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        messages.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=10)
    while reply["parent_header"].get("msg_id") != msg_id:   # a late reply of another cell
        reply = kc.get_shell_msg(timeout=10)
    return messages, reply, asked


def kinds(messages):
    return [m["msg_type"] for m in messages if m["msg_type"] not in ("status", "execute_input")]


def streams(messages):
    return [(m["content"]["name"], m["content"]["text"]) for m in messages
            if m["msg_type"] == "stream"]


def text(messages) -> str:
    return "".join(t for _, t in streams(messages))


def value(kc, expression):
    """What an expression evaluates to in the kernel, as its repr."""
    messages, reply, _ = execute(kc, f"print(repr(({expression})))")
    assert reply["content"]["status"] == "ok", messages
    return text(messages).strip()


def test_a_short_cell_costs_no_plot_and_no_matplotlib_in_the_kernel(kernel):
    messages, reply, _ = execute(kernel, "%%container\npass")
    assert reply["content"]["status"] == "ok"
    assert set(kinds(messages)) == {"stream"}, kinds(messages)    # the summary line only
    assert text(messages).startswith("exit 0 ·")
    assert value(kernel, "'matplotlib' in sys.modules or 'ipywidgets' in sys.modules"
                 " if (sys := __import__('sys')) else 0") == "False"


def test_plt_show_is_a_png_in_order_with_the_text(kernel):
    messages, reply, _ = execute(kernel, "%%container --no-plot\n"
                                         "import matplotlib.pyplot as plt\n"
                                         "print('before')\n"
                                         "plt.plot([1, 3, 2]); plt.title('inside')\n"
                                         "plt.show()\n"
                                         "print('after')")
    assert reply["content"]["status"] == "ok", text(messages)
    shown = [i for i, m in enumerate(messages) if m["msg_type"] == "display_data"]
    assert len(shown) == 1, kinds(messages)
    data = messages[shown[0]]["content"]["data"]
    import base64
    assert base64.b64decode(data["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")
    assert data["text/plain"].startswith("<Figure size")
    said = [i for i, m in enumerate(messages) if m["msg_type"] == "stream"]
    before = next(i for i in said if "before" in messages[i]["content"]["text"])
    after = next(i for i in said if "after" in messages[i]["content"]["text"])
    assert before < shown[0] < after


def test_the_last_expression_is_out_n_with_its_whole_bundle(kernel):
    messages, reply, _ = execute(kernel, "%%container --no-plot\n"
                                         "from IPython.display import HTML, Markdown, display\n"
                                         "display(HTML('<b>shown</b>'))\n"
                                         "display(Markdown('*also*'))\n"
                                         "class Table:\n"
                                         "    def _repr_html_(self): return '<table>t</table>'\n"
                                         "    def __repr__(self): return 'Table()'\n"
                                         "Table()")
    assert reply["content"]["status"] == "ok", text(messages)
    displays = [m["content"]["data"] for m in messages if m["msg_type"] == "display_data"]
    assert displays[0]["text/html"] == "<b>shown</b>"
    assert displays[1]["text/markdown"] == "*also*"
    results = [m["content"] for m in messages if m["msg_type"] == "execute_result"]
    assert len(results) == 1
    assert results[0]["data"] == {"text/html": "<table>t</table>", "text/plain": "Table()"}
    assert results[0]["execution_count"] == reply["content"]["execution_count"]
    # a cell ending in a semicolon, or in a statement, has no Out
    messages, _, _ = execute(kernel, "%%container --no-plot\n6 * 7;")
    assert "execute_result" not in kinds(messages)


def test_input_and_getpass_ask_in_the_notebooks_input_box(kernel):
    messages, reply, asked = execute(kernel, "%%container --no-plot\n"
                                             "import getpass\n"
                                             "name = input('name? ')\n"
                                             "secret = getpass.getpass('secret? ')\n"
                                             "print(name, len(secret))",
                                     answers=["Ada", "hunter2"])
    assert reply["content"]["status"] == "ok", text(messages)
    assert asked == [{"prompt": "name? ", "password": False},
                     {"prompt": "secret? ", "password": True}]
    assert text(messages).startswith("Ada 7\n")


def test_input_where_the_frontend_takes_none_is_eof_with_a_sentence(kernel):
    messages, reply, _ = execute(kernel, "%%container --no-plot\n"
                                         "try:\n"
                                         "    input('name? ')\n"
                                         "except EOFError as err:\n"
                                         "    print('EOFError:', err)", allow_stdin=False)
    assert reply["content"]["status"] == "ok"
    assert "EOFError: input() in a container cell asks in the notebook's input box, and " \
           "this frontend takes no input" in text(messages)


def test_an_exception_shows_the_cells_own_frames_and_fails_the_cell(kernel):
    messages, reply, _ = execute(kernel, "%%container --no-plot\n"
                                         "def invert(x):\n"
                                         "    return 1 / x\n"
                                         "invert(0)")
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "ZeroDivisionError"
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert len(errors) == 1
    assert (errors[0]["ename"], errors[0]["evalue"]) == ("ZeroDivisionError", "division by zero")
    trace = ANSI.sub("", "\n".join(errors[0]["traceback"]))
    count = reply["content"]["execution_count"]
    assert f"Cell In[{count}], line 3" in trace and "----> 3 invert(0)" in trace
    assert f"Cell In[{count}], line 2, in invert" in trace and "return 1 / x" in trace
    assert "nsmagic" not in trace and "host" not in trace and "site-packages" not in trace
    assert "--no-raise-error" not in trace + text(messages)
    assert value(kernel, "_container.exit_code") == "1"


def test_stdout_and_stderr_keep_their_order(kernel):
    messages, reply, _ = execute(kernel, "%%container --no-plot\n"
                                         "import os, sys\n"
                                         "for i in range(4):\n"
                                         "    print(f'out {i}', flush=True)\n"
                                         "    print(f'err {i}', file=sys.stderr, flush=True)\n"
                                         "os.system('echo from a subprocess')\n"
                                         "print('after it')\n"
                                         "!echo from the shell")
    assert reply["content"]["status"] == "ok"
    got = streams(messages)
    expected = [(name, f"{name[3:]} {i}\n") for i in range(4) for name in ("stdout", "stderr")]
    assert got[:8] == expected, got
    out = text(messages)
    assert out.index("from a subprocess\n") < out.index("after it") < out.index("from the shell")


def test_variables_go_in_and_come_back(kernel):
    execute(kernel, "import datetime, decimal, numpy as np\n"
                    "a = np.arange(12.0).reshape(3, 4)\n"
                    "meta = {'when': datetime.date(2026, 12, 1), 'step': decimal.Decimal('0.5')}")
    messages, reply, _ = execute(kernel, "%%container --no-plot --input a,meta --output b,c\n"
                                         "b = a * 2\n"
                                         "c = {'sum': float(a.sum()), 'meta': meta, "
                                         "'shape': b.shape, 'tags': {'x', 'y'}}")
    assert reply["content"]["status"] == "ok", text(messages)
    assert value(kernel, "bool((b == a * 2).all()), b.dtype.name") == "(True, 'float64')"
    assert value(kernel, "c == {'sum': 66.0, 'meta': meta, 'shape': (3, 4), "
                         "'tags': {'x', 'y'}}") == "True"


def test_output_refuses_what_is_not_plain_data(kernel, tmp_path):
    marker = tmp_path / "ran-in-the-kernel"
    messages, reply, _ = execute(kernel, "%%container --no-plot --output p,evil,ok\n"
                                         "import os\n"
                                         "class Point: pass\n"
                                         "class Evil:\n"
                                         "    def __reduce__(self):\n"
                                         f"        return (os.system, ('touch {marker}',))\n"
                                         "p, evil, ok = Point(), Evil(), [1, 2]")
    assert reply["content"]["status"] == "error"
    error = next(m["content"] for m in messages if m["msg_type"] == "error")
    assert error["ename"] == "VariableError" and len(error["traceback"]) == 1
    assert "--output p: refused to build a __main__.Point from the container" in error["evalue"]
    assert "--output evil: refused to build a posix.system" in error["evalue"]
    assert not marker.exists()
    assert value(kernel, "ok") == "[1, 2]"          # what could come back, came back
    messages, reply, _ = execute(kernel, "%%container --no-plot --output nothing\nx = 1")
    error = next(m["content"] for m in messages if m["msg_type"] == "error")
    assert error["evalue"] == "--output nothing: the cell defined no variable nothing."


def test_input_refuses_what_cannot_be_pickled(kernel):
    execute(kernel, "square = lambda x: x * x\nlog = open('/dev/null')")
    for name, what in (("square", "a function cannot be pickled"),
                       ("log", "a _io.TextIOWrapper cannot be pickled"),
                       ("missing", "the notebook has no variable missing")):
        messages, reply, _ = execute(kernel, f"%%container --no-plot --input {name}\npass")
        error = next(m["content"] for m in messages if m["msg_type"] == "error")
        assert error["evalue"].startswith(f"--input {name}: {what}"), error["evalue"]
        assert "exit" not in text(messages)                  # no container was started


def test_a_missing_command_says_why_in_the_cell(kernel):
    messages, reply, _ = execute(kernel, "%%container nosuchprogram")
    assert reply["content"]["status"] == "error"
    error = next(m["content"] for m in messages if m["msg_type"] == "error")
    assert error["traceback"] == ["ContainerError: nosuchprogram: not found in the container; "
                                  "check the name and PATH (exit 127)"]
    messages, reply, _ = execute(kernel, "%%container --no-raise-error nosuchprogram")
    assert reply["content"]["status"] == "ok"
    assert "nsmagic: nosuchprogram: not found in the container" in text(messages)


@pytest.mark.parametrize("cell", ["%%container --help", "%container --help",
                                  "%%container --mem 10M --help\nprint('not run')"])
def test_help_prints_the_help_and_nothing_else(kernel, cell):
    messages, reply, _ = execute(kernel, cell)
    assert reply["content"]["status"] == "ok"
    assert set(kinds(messages)) == {"stream"}, kinds(messages)
    assert text(messages).startswith("usage: %%container") and "--input NAMES" in text(messages)
    assert "Line magic:" in text(messages) and "not run" not in text(messages)


def test_ipython_syntax_works_inside(kernel):
    messages, reply, _ = execute(kernel, "%%container --no-plot\n"
                                         "!echo shell says $((6 * 7))\n"
                                         "%cd /tmp\n"
                                         "%env GREETING=hi\n"
                                         "import os\n"
                                         "print(os.getcwd(), os.environ['GREETING'])\n"
                                         "%timeit -n 1 -r 1 pass\n"
                                         "len?")
    assert reply["content"]["status"] == "ok", text(messages)
    out = text(messages)
    assert "shell says 42" in out and "/tmp hi\n" in out and "per loop" in out
    pages = [m["content"]["data"]["text/plain"] for m in messages
             if m["msg_type"] == "display_data"]
    assert pages and "Return the number of items" in ANSI.sub("", pages[0])


def _wheel(where) -> str:
    """A one-module wheel, made by hand: nothing to build, nothing to download."""
    name = "nsmagic_probe-1.0-py3-none-any.whl"
    info = "nsmagic_probe-1.0.dist-info"
    files = {"nsmagic_probe.py": "ANSWER = 42\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: nsmagic-probe\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(where / name, "w") as z:
        for path, content in files.items():
            z.writestr(path, content)
    return name


def test_pip_install_inside_works_and_goes_with_the_run(kernel, tmp_path):
    wheel = _wheel(tmp_path)
    messages, reply, _ = execute(kernel, f"%%container --no-plot -v {tmp_path}:/wheels:ro\n"
                                         f"%pip install -q --no-index /wheels/{wheel}\n"
                                         "import nsmagic_probe\n"
                                         "print('answer', nsmagic_probe.ANSWER)", timeout=120)
    assert reply["content"]["status"] == "ok", text(messages)
    assert "answer 42" in text(messages)
    messages, reply, _ = execute(kernel, "%%container --no-plot\n"
                                         "from importlib.util import find_spec\n"
                                         "print('again', find_spec('nsmagic_probe'))")
    assert "again None" in text(messages)
    assert value(kernel, "__import__('importlib.util').util.find_spec('nsmagic_probe')") == "None"
    site = [p for p in sys.path if p.endswith("site-packages")]
    assert not any(os.path.exists(os.path.join(p, "nsmagic_probe.py")) for p in site)


def test_a_cell_run_again_finds_ipython_started_ahead(kernel):
    code = "%%container --no-plot --profile -h again\nprint(open('/proc/self/cmdline').read())"
    execute(kernel, code)
    execute(kernel, "from nsmagic.core import settle; settle()")
    messages, reply, _ = execute(kernel, code)
    out = text(messages)
    assert "ready spare taken" in out and "interpreter waits for the cell" in out, out
    assert "cell received" in out and "cell ran" in out
    cmdline = out.splitlines()[0].split("\0")
    assert cmdline[:2] == [sys.executable, "-c"] and len(cmdline[2]) < 300


def test_a_python_cell_on_a_root_without_python_says_why(kernel, busybox_root):
    messages, reply, _ = execute(kernel, f"%%container --no-plot --rootfs {busybox_root}\n"
                                         "print('never')")
    assert reply["content"]["status"] == "error"
    error = next(m["content"] for m in messages if m["msg_type"] == "error")
    assert error["traceback"] == [f"ContainerError: {sys.executable}: not found in the "
                                  "container; with --rootfs, give a command the root has (such "
                                  "as sh) (exit 127)"]


def test_the_stop_button_while_input_waits_stops_the_container_in_one_line(kernel):
    msg_id = kernel.execute("%%container --no-plot\nname = input('name? ')", allow_stdin=True)
    assert kernel.get_stdin_msg(timeout=30)["content"]["prompt"] == "name? "
    kernel.manager.interrupt_kernel()
    messages = []
    while not messages or messages[-1]["content"].get("execution_state") != "idle":
        msg = kernel.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id:
            messages.append(msg)
    assert kernel.get_shell_msg(timeout=10)["content"]["status"] == "error"
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert len(errors) == 1 and len(errors[0]["traceback"]) == 1, errors
    assert errors[0]["traceback"][0].startswith("Container was interrupted (stopped with")
    assert value(kernel, "_container.interrupted") == "True"


def test_a_python_cells_output_arrives_while_it_runs(kernel):
    msg_id = kernel.execute("%%container --no-plot\nimport time\nprint('one')\n"
                            "time.sleep(1.2)\nprint('two')")
    arrived = {}
    while "idle" not in arrived:
        msg = kernel.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            for word in ("one", "two"):
                if word in msg["content"]["text"]:
                    arrived.setdefault(word, time.monotonic())
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            arrived["idle"] = time.monotonic()
    kernel.get_shell_msg(timeout=10)
    assert arrived["two"] - arrived["one"] > 0.8, arrived    # not all at the end
