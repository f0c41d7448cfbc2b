"""The live accounting view: the Series arithmetic (core), and the plot as a notebook sees it,
through a real kernel (jupyter_client) and a real nbclient run (kernel tier, root)."""

from __future__ import annotations

import json
import math
import os
import queue
import sys
import time

import pytest
from conftest import REPO, needs_root

from nsmagic.cgroups import Usage
from nsmagic.monitor import MiB, Series

OUTPUT = os.path.join(REPO, "tests", "output", "display")


def _usage(t, cpu_s=0.0, mem_mib=0, oom=0, throttled_s=0.0, inactive_mib=0, pids=1):
    return Usage(time=t, cpu_usec=int(cpu_s * 1e6), throttled_usec=int(throttled_s * 1e6),
                 memory_current=int(mem_mib * MiB), inactive_file=int(inactive_mib * MiB),
                 oom_kills=oom, pids_current=pids)


# --- the numbers (core tier: no kernel features)


@pytest.mark.core
def test_series_turns_counters_into_rates_and_levels():
    s = Series(start=100.0)
    s.add(_usage(100.5, cpu_s=0.0, mem_mib=10, inactive_mib=2))
    s.add(_usage(101.0, cpu_s=0.25, mem_mib=20, inactive_mib=4, throttled_s=0.1, pids=3))
    s.add(_usage(102.0, cpu_s=1.75, mem_mib=15, inactive_mib=5))
    assert s.t == [0.5, 1.0, 2.0]
    assert math.isnan(s.cpu[0])                        # a rate needs two samples
    assert s.cpu[1:] == pytest.approx([50.0, 150.0])   # % of one core: 1.5 s in 1 s = 150
    assert s.throttled[1:] == pytest.approx([20.0, 0.0])
    assert s.memory == pytest.approx([10, 20, 15])
    assert s.working_set == pytest.approx([8, 16, 10])
    assert s.memory_peak == 20 * MiB and s.pids_peak == 3
    assert s.cpu_median() == pytest.approx(100.0)
    assert s.current()["cpu"] == pytest.approx(150.0)


@pytest.mark.core
def test_series_marks_each_oom_kill_where_the_counter_grows():
    s = Series(start=0.0)
    for i, kills in enumerate([0, 0, 1, 1, 3]):
        s.add(_usage(i * 0.25, mem_mib=60, oom=kills))
    assert s.oom_times == [0.5, 1.0, 1.0] and s.oom_kills == 3
    s.mark_oom(4)                                      # the result saw one more, after the end
    assert s.oom_times == [0.5, 1.0, 1.0, 1.0]


@pytest.mark.core
def test_series_stays_small_on_long_runs_and_keeps_the_peak():
    s = Series(start=0.0, max_points=64)
    for i in range(1000):
        s.add(_usage(i * 0.1, cpu_s=i * 0.05, mem_mib=500 if i == 777 else 10))
    assert len(s) <= 64 and s.samples == 1000
    assert max(s.memory) == 500                        # merged pairs keep their maximum
    assert s.cpu_median() == pytest.approx(50.0)
    assert s.t == sorted(s.t) and s.t[-1] == pytest.approx(99.9)


@pytest.mark.core
def test_a_frame_is_cheap_and_draws_the_axes_rarely():
    from nsmagic.display import Plot
    plot = Plot(memory_limit=200 * MiB, cpus=0.5)
    s = Series(start=0.0)
    costs = []
    for i in range(1, 121):                            # 30 s at 4 Hz
        s.add(_usage(i * 0.25, cpu_s=i * 0.125, mem_mib=min(i, 190), oom=int(i > 90)))
        begin = time.perf_counter()
        png = plot.render(s)
        costs.append(time.perf_counter() - begin)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert plot.full_draws <= 4                        # the first, then x doubled 10->20->40
    costs.sort()
    assert costs[len(costs) // 2] < 0.03, f"median frame {costs[len(costs) // 2] * 1e3:.1f} ms"
    os.makedirs(OUTPUT, exist_ok=True)
    with open(os.path.join(OUTPUT, "synthetic.png"), "wb") as f:
        f.write(plot.render(s, final=True))


@pytest.mark.core
def test_the_next_cells_plot_is_kept_and_draws_nothing_twice():
    """A kernel's next cell with the same limits gets the last cell's figure back, with its
    axes where a new one starts them, and draws no background it drew before: its frames
    are pixel for pixel a new figure's."""
    from nsmagic.display import Plot

    def frames(plot):
        s = Series(start=0.0)
        pngs = []
        for i in range(1, 4):
            s.add(_usage(i * 0.25, cpu_s=i * 0.1, mem_mib=8 * i))
            pngs.append(plot.render(s))
        pngs.append(plot.render(s, final=True, header="exit 0"))
        return pngs

    first = Plot.acquire(96 * MiB, 0.5)
    expected = frames(first)
    draws = first.full_draws
    first.release()
    again = Plot.acquire(96 * MiB, 0.5)
    assert again is first
    assert frames(again) == expected and again.full_draws == draws
    again.release()
    assert Plot.acquire(48 * MiB, None) is not first   # other limits: a figure of its own


@pytest.mark.core
def test_a_crowded_machine_gets_fewer_frames(monkeypatch):
    """The frame period is stretched by the load per CPU: 40 kernels' plots on 2 cores
    would otherwise take a core of their own."""
    from nsmagic import display
    cores = os.cpu_count() or 1
    monkeypatch.setattr(display.os, "getloadavg", lambda: (1.5 * cores, 0, 0))
    assert display._crowd() == 1.0
    monkeypatch.setattr(display.os, "getloadavg", lambda: (40.0 * cores, 0, 0))
    assert display._crowd() == 20.0
    view = display.LiveView.__new__(display.LiveView)
    view.__dict__.update(series=None, errors=[], plot=display.Plot.acquire(), period=0.22,
                         _next_frame=0.0, _cost=None, frame_times=[], widgets=False,
                         handle=None, _box=None, name="")
    view._show = lambda png: None
    view.update(_usage(time.monotonic()))
    assert view._next_frame - time.monotonic() > 0.22 * 19


# --- through a real kernel, as Jupyter runs it


@pytest.fixture(scope="module")
def kernel():
    from jupyter_client.manager import KernelManager
    km = KernelManager(kernel_name="python3")   # ipykernel's spec: "python" is this Python
    km.start_kernel(cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    messages, _ = _execute(kc, "import sys; print(sys.executable)\n%load_ext nsmagic")
    assert _text(messages).strip() == sys.executable, "the kernel is not this venv's Python"
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def _execute(kc, code, timeout=90, everything=False):
    """Run a cell; its iopub messages (until idle; with `everything`, any cell's that came
    meanwhile too), and the execute reply."""
    msg_id = kc.execute(code)
    messages = []
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if everything or msg["parent_header"].get("msg_id") == msg_id:
            messages.append(msg)
        if (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
                and msg["parent_header"].get("msg_id") == msg_id):
            break
    reply = kc.get_shell_msg(timeout=10)
    assert reply["parent_header"]["msg_id"] == msg_id
    return messages, reply


def _late(kc, reply, within=15.0):
    """The messages of a cell that came after its end: its plot's last frame, made off the
    cell's path for a frontend that allows input (as this client does). A thread's message
    may come after a later cell's idle status: read on until the frame is there."""
    cell = reply["parent_header"]["msg_id"]
    messages, _ = _execute(kc, "import nsmagic.display; nsmagic.display.settle()",
                           everything=True)
    deadline = time.monotonic() + within
    while not any(m["msg_type"] == "update_display_data" and m["parent_header"].get("msg_id")
                  == cell for m in messages) and time.monotonic() < deadline:
        try:
            messages.append(kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            break
    return [m for m in messages if m["parent_header"].get("msg_id") == cell]


def _text(messages) -> str:
    return "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream")


def _view_data(kc, expression):
    """A JSON-able value from the kernel's last LiveView."""
    messages, reply = _execute(
        kc, f"import json; from nsmagic.display import LiveView as _V; v = _V.last\n"
            f"print('@@' + json.dumps({expression}))")
    assert reply["content"]["status"] == "ok", _text(messages)
    line = next(x for x in _text(messages).splitlines() if x.startswith("@@"))
    return json.loads(line[2:])


def _save_png(messages, name):
    import base64
    os.makedirs(OUTPUT, exist_ok=True)
    for m in reversed(messages):
        data = m["content"].get("data", {})
        if "image/png" in data:
            with open(os.path.join(OUTPUT, name), "wb") as f:
                f.write(base64.b64decode(data["image/png"]))
            return


GROW = """%%container --mem 200M
import queue
import time
blocks = []
for i in range(12):
    blocks.append(bytearray(8 * 2**20))     # 8 MiB, touched: zero-filled
    time.sleep(0.25)
print("grew to", len(blocks) * 8, "MiB")
"""


@pytest.mark.kernel
@needs_root
def test_display_handle_updates_arrive_in_the_cell_and_the_last_frame_after_it(kernel):
    _, kc = kernel
    _execute(kc, "import nsmagic.display; nsmagic.display.WIDGETS = False")
    messages, reply = _execute(kc, GROW)
    assert reply["content"]["status"] == "ok", _text(messages)
    cell = reply["parent_header"]["msg_id"]
    shown = [m for m in messages if m["msg_type"] == "display_data"
             and "image/png" in m["content"]["data"]]
    assert len(shown) == 1, [m["msg_type"] for m in messages]
    display_id = shown[0]["content"]["transient"]["display_id"]
    updates = [m for m in messages if m["msg_type"] == "update_display_data"]
    assert len(updates) >= 3
    replied = reply["header"]["date"]
    for m in shown + updates:
        assert m["content"]["transient"]["display_id"] == display_id
        assert m["parent_header"]["msg_id"] == cell          # nbclient and VS Code need this
        assert m["header"]["date"] < replied
        assert "image/png" in m["content"]["data"]
    # the plot began once the run had lasted PLOT_AFTER (1 s), and went on live
    began = next(m for m in messages if m["msg_type"] == "execute_input")["header"]["date"]
    assert (shown[0]["header"]["date"] - began).total_seconds() > 0.9
    spread = (updates[-1]["header"]["date"] - shown[0]["header"]["date"]).total_seconds()
    assert spread > 1.0
    # the summary: a table after the plot, and the one-line summary as text
    tables = [m for m in messages if m["msg_type"] == "display_data"
              and "text/html" in m["content"]["data"]]
    assert tables and "memory peak" in tables[-1]["content"]["data"]["text/plain"]
    assert "grew to 96 MiB" in _text(messages) and "exit 0" in _text(messages)
    # the last frame: made off the cell's path (this client allows input), in the same place
    last = [m for m in _late(kc, reply) if m["msg_type"] == "update_display_data"]
    assert len(last) == 1 and last[0]["content"]["transient"]["display_id"] == display_id
    assert last[0]["content"]["data"]["text/plain"].startswith("<nsmagic plot: exit 0")
    _save_png(last, "grow.png")
    peak = _view_data(kc, "max(v.series.memory)")
    assert 90 < peak < 200


@pytest.mark.kernel
@needs_root
def test_widget_dashboard_updates_by_comm_and_leaves_a_static_png(kernel):
    """The dashboard's frames go by comm; the static frame takes its place at the end. Drawn
    in the cell here, as for a batch frontend: a last frame made after the cell reaches the
    page in JupyterLab (test_browser), and arrives late here in the handle mode (above); in
    the widget mode, after test_browser in one session, it never came to this client
    (CI, not understood yet)."""
    _, kc = kernel
    _execute(kc, "import nsmagic.display; nsmagic.display.WIDGETS = True\n"
                 "late, nsmagic.display._late_updates_shown = (nsmagic.display."
                 "_late_updates_shown, lambda: False)")
    try:
        # 3 s, plotted from 1 s on: frames thin out on a busy machine (CI), and 1 s plotted
        # gave only 2 updates there
        messages, reply = _execute(kc, GROW)
    finally:
        _execute(kc, "nsmagic.display.WIDGETS = False\n"
                     "nsmagic.display._late_updates_shown = late")
    assert reply["content"]["status"] == "ok", _text(messages)
    shown = [m for m in messages if m["msg_type"] == "display_data"
             and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]]
    assert len(shown) == 1
    image_updates = [m for m in messages if m["msg_type"] == "comm_msg"
                     and "value" in m["content"]["data"].get("state", {})
                     and m["content"]["data"]["method"] == "update"]
    assert len(image_updates) >= 3
    # the last frame: after the cell (test_display_handle_updates... checks when it comes)
    final = [m for m in messages if m["msg_type"] == "update_display_data"
             and "image/png" in m["content"]["data"]]
    assert final, _text(messages)
    assert (final[-1]["content"]["transient"]["display_id"]
            == shown[0]["content"]["transient"]["display_id"])


@pytest.mark.kernel
@needs_root
def test_an_oom_killed_cell_marks_the_kill_on_its_final_frame(kernel):
    _, kc = kernel
    messages, reply = _execute(kc, """%%container --mem 64M --no-raise-error
import queue
import time
time.sleep(1.2)                  # long enough to be plotted
blocks = []
for i in range(25):
    blocks.append(bytearray(8 * 2**20))
    time.sleep(0.05)
print("not reached")
""")
    assert reply["content"]["status"] == "ok", _text(messages)
    assert "OOM" in _text(messages) and "not reached" not in _text(messages)
    final = [m for m in _late(kc, reply) if m["msg_type"] == "update_display_data"][-1]
    oom_times = _view_data(kc, "v.series.oom_times")
    duration = _view_data(kc, "v.series.duration")
    assert oom_times and 0 < oom_times[0] <= duration + 0.01
    assert _view_data(kc, "v.plot.oom_lines[0].get_xdata()[0]") == oom_times[0]
    tables = [m for m in messages if m["msg_type"] == "display_data"
              and "text/html" in m["content"]["data"]]
    assert "OOM killed" in tables[-1]["content"]["data"]["text/plain"]
    assert "OOM killed" in final["content"]["data"]["text/plain"]
    _save_png([final], "oom.png")


@pytest.mark.kernel
@needs_root
def test_a_half_cpu_quota_holds_a_busy_loop_near_fifty_percent(kernel):
    _, kc = kernel
    messages, reply = _execute(kc, """%%container --cpus 0.5
import queue
import time
end = time.monotonic() + 2.5
while time.monotonic() < end:
    pass
""")
    assert reply["content"]["status"] == "ok", _text(messages)
    # skip the first half second: the interpreter starting is not the busy loop
    median = _view_data(kc, "v.series.cpu_median(since=0.6, until=v.series.duration - 0.3)")
    assert 35 <= median <= 65, median
    assert _view_data(kc, "v.series.throttled_s") > 0.3
    _save_png(messages, "cpus-half.png")


@pytest.mark.kernel
@needs_root
def test_a_notebook_run_by_nbclient_keeps_the_final_png_and_summary(tmp_path):
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"import sys; sys.path.insert(0, {REPO!r})\n"
                                          "%load_ext nsmagic"),
                nbformat.v4.new_code_cell(GROW.replace("range(12)", "range(6)"))]
    path = tmp_path / "live.ipynb"
    nbformat.write(nb, path)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(nb, path)
    saved = nbformat.read(path, as_version=4)
    outputs = saved.cells[1].outputs
    pngs = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(pngs) == 1                     # the handle's updates replaced it in place
    assert pngs[0].data["text/plain"].startswith("<nsmagic plot: exit 0")
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    assert tables and "memory peak" in tables[0].data["text/html"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "exit 0" in text and "peak" in text
    os.makedirs(OUTPUT, exist_ok=True)
    nbformat.write(saved, os.path.join(OUTPUT, "nbclient.ipynb"))
