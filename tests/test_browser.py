"""The live plot as a person sees it: a real JupyterLab on a free localhost port, driven in
Debian's Chromium with Playwright (no browser download), running a %%container cell whose
memory grows for a few seconds. Screenshots go to tests/output/browser/ for people to look at.

Needs: `apt-get install chromium` (tests/browser/debian-packages.txt) and
`pip install -r tests/browser/requirements.txt`."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import REPO, needs_root

pytestmark = [pytest.mark.browser, needs_root]

CHROMIUM = "/usr/bin/chromium"
SHOTS = os.path.join(REPO, "tests", "output", "browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]

GROW = """%%container --mem 150M
import time
blocks = []
for i in range(28):
    blocks.append(bytearray(3 * 2**20))     # 3 MiB more every quarter second: 84 MiB in 7 s
    time.sleep(0.25)                        # (plotted from 1 s on: a shorter run is not)
print("grew to", 3 * len(blocks), "MiB")"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab in a temp root, with a token, its own config/runtime/workspace dirs."""
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is missing: apt-get install chromium "
                    "(tests/install-deps does)")
    pytest.importorskip("jupyterlab", reason="pip install -r tests/browser/requirements.txt")
    root = tmp_path_factory.mktemp("lab")
    home = tmp_path_factory.mktemp("lab-home")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, PYTHONPATH=REPO, HOME=str(home),
               JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "rt"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "ws"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"))
    # no "get notified about Jupyter news?" toast over the notebook
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env.pop("JUPYTER_PATH", None)
    log = open(home / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                json.load(r)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail("JupyterLab did not start: " + (home / "lab.log").read_text()[-2000:])
            time.sleep(0.3)
    yield {"url": url, "token": token, "root": root, "log": home / "lab.log"}
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    log.close()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _notebook(root, name, first_cell, second_cell=GROW):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(first_cell), nbformat.v4.new_code_cell(second_cell)]
    nbformat.write(nb, root / name)


def _run_all(page, lab, name, workspace):
    """Open the notebook alone in a workspace of its own and run its cells; the second
    cell's output area."""
    page.goto(f"{lab['url']}/lab/workspaces/{workspace}/tree/{name}?reset&token={lab['token']}")
    page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')",
                           timeout=60_000)
    page.wait_for_function(
        "(() => { const w = window.jupyterapp.shell.currentWidget;"
        " const k = w && w.sessionContext && w.sessionContext.session"
        " && w.sessionContext.session.kernel;"
        " return k && k.status === 'idle'; })()", timeout=60_000)
    # not awaited: the command's promise resolves only when the cells are done
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
    return notebook.locator(".jp-Cell").nth(1).locator(".jp-OutputArea")


FIGURE = """%%container --no-plot --mem 200M
import matplotlib.pyplot as plt
print("drawing in", open("/etc/hostname").read().strip())
plt.plot([0, 1, 4, 9, 16], marker="o"); plt.title("drawn inside the container")
plt.show()"""


def test_a_figure_drawn_inside_a_container_shows_in_jupyterlab(lab, browser):
    os.makedirs(SHOTS, exist_ok=True)
    _notebook(lab["root"], "figure.ipynb", "%load_ext nsmagic", FIGURE)
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    output = _run_all(page, lab, "figure.ipynb", "figure")
    image = output.locator("img").first
    image.wait_for(state="visible", timeout=60_000)
    output.get_by_text("exit 0").wait_for(timeout=30_000)
    output.screenshot(path=os.path.join(SHOTS, "figure-from-the-container.png"))
    src = image.get_attribute("src") or ""
    assert src.startswith("data:image/png") or src.startswith("blob:"), src[:40]
    box = image.bounding_box()
    assert box["width"] > 300 and box["height"] > 200, box
    text = output.inner_text()
    assert text.index("drawing in") < text.index("exit 0")   # the text, the figure, the summary
    assert output.locator(".jp-RenderedImage").count() == 1
    page.close()


@pytest.mark.parametrize("mode", ["handle", "widgets"])
def test_the_live_plot_changes_while_the_cell_runs_and_stays_at_the_end(lab, browser, mode):
    from PIL import Image, ImageChops
    os.makedirs(SHOTS, exist_ok=True)
    name = f"live-{mode}.ipynb"
    _notebook(lab["root"], name, "%load_ext nsmagic\nimport nsmagic.display\n"
                                 f"nsmagic.display.WIDGETS = {mode == 'widgets'}")
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    output = _run_all(page, lab, name, mode)
    image = output.locator("img").first
    image.wait_for(state="visible", timeout=30_000)
    time.sleep(1.0)
    first = output.screenshot(path=os.path.join(SHOTS, f"{mode}-1-running.png"))
    time.sleep(2.0)
    second = output.screenshot(path=os.path.join(SHOTS, f"{mode}-2-running.png"))
    assert output.locator("table.nsmagic-summary").count() == 0, "the run ended too early"
    # the plot changed between the two moments: compare the image element's pixels
    a = Image.open(os.path.join(SHOTS, f"{mode}-1-running.png")).convert("RGB")
    b = Image.open(os.path.join(SHOTS, f"{mode}-2-running.png")).convert("RGB")
    assert first != second
    box = image.bounding_box()
    out_box = output.bounding_box()
    crop = (int(box["x"] - out_box["x"]), int(box["y"] - out_box["y"]),
            int(box["x"] - out_box["x"] + box["width"]),
            int(box["y"] - out_box["y"] + min(box["height"], 250)))
    diff = ImageChops.difference(a.crop(crop), b.crop(crop)).getbbox()
    assert diff is not None, "the plot did not change during the run"
    # after the end: the summary table, then the last frame (a plain PNG, made after the
    # cell's end: JupyterLab keeps a finished cell's display ids live)
    output.locator("table.nsmagic-summary").wait_for(state="visible", timeout=60_000)
    page.wait_for_function(   # the output model of the cell holds the last frame's bundle
        "() => { const cell = window.jupyterapp.shell.currentWidget.content.widgets[1];"
        " const outputs = cell.model.outputs;"
        " for (let i = 0; i < outputs.length; i++) {"
        "   const text = outputs.get(i).data['text/plain'];"
        "   if (text && String(text).startsWith('<nsmagic plot: exit 0')) return true; }"
        " return false; }", timeout=30_000)
    page.wait_for_function("area => !area.querySelector('.jupyter-widgets')",
                           arg=output.element_handle(), timeout=30_000)
    output.screenshot(path=os.path.join(SHOTS, f"{mode}-3-final.png"))
    images = output.locator("img")
    assert images.count() == 1
    src = images.first.get_attribute("src") or ""
    assert src.startswith("data:image/png") or src.startswith("blob:"), src[:40]
    assert output.locator(".jupyter-widgets").count() == 0     # the static frame replaced it
    text = output.inner_text()
    assert "grew to 84 MiB" in text and "exit 0" in text
    page.close()
