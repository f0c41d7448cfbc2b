"""The course notebooks (notebooks/*.ipynb), executed end to end with nbclient.

- kernel tier (root): every cell of every notebook runs, from a temporary copy (the repository's
  files are never rewritten), with the venv's own kernel; outputs are checked where they mean
  something (PID 1 and 2, an OOM kill said in words, a final PNG, a whiteout, the host's files
  unchanged).
- unprivileged tier: the path a Binder user sees. The notebooks run as user nobody in a process
  where every namespace is refused (tests/notebooks_degraded/blocked.py: a seccomp filter, as
  Binder's); each %%container cell must print the banner's sentence and nothing may show a
  traceback.
- core tier: the saved notebooks keep their outputs (from `notebooks/refresh`), without widget
  state and without errors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from conftest import REPO

nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = os.path.join(REPO, "notebooks")
NAMES = ["01-namespaces.ipynb", "02-cgroups.ipynb", "03-union-filesystems.ipynb",
         "04-security.ipynb", "05-images-and-layers.ipynb", "06-networking.ipynb"]
DEGRADED = os.path.join(REPO, "tests", "notebooks_degraded")
NOBODY = 65534
CELL_TIMEOUT = 300


# --- reading an executed notebook


def text_of(cell) -> str:
    """Everything a reader sees of a code cell, as text: streams, text/plain, errors."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append("\n".join(out.traceback) + f"\n{out.ename}: {out.evalue}")
        else:
            parts.append(out.get("data", {}).get("text/plain", ""))
            parts.append(out.get("data", {}).get("text/html", ""))
    return "".join(parts)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def cell(nb, first_line: str):
    """The one code cell whose first line starts with `first_line`."""
    found = [c for c in code_cells(nb) if c.source.startswith(first_line)]
    assert len(found) == 1, f"{len(found)} cells start with {first_line!r}"
    return found[0]


def cell_containing(nb, snippet: str):
    found = [c for c in code_cells(nb) if snippet in c.source]
    assert len(found) == 1, f"{len(found)} cells contain {snippet!r}"
    return found[0]


def pngs(c) -> list:
    return [o for o in c.outputs if o.output_type in ("display_data", "update_display_data")
            and "image/png" in o.get("data", {})]


def no_errors(nb, name):
    for c in code_cells(nb):
        errors = [o for o in c.outputs if o.output_type == "error"]
        assert not errors, f"{name}: cell {c.source[:60]!r} failed: {text_of(c)[-2000:]}"
        assert "Traceback" not in text_of(c), f"{name}: a traceback in {c.source[:60]!r}"


# --- kernel tier: every cell runs as root


def execute(path: str) -> "nbformat.NotebookNode":
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                   resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    return nb


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Each notebook executed once, from a copy; a cell error fails the test that asks for it."""
    if os.geteuid() != 0:
        pytest.skip("needs root (CI runs as root)")
    where = tmp_path_factory.mktemp("notebooks")
    cache = {}

    def get(name):
        if name not in cache:
            original = open(os.path.join(NOTEBOOKS, name), "rb").read()
            shutil.copy(os.path.join(NOTEBOOKS, name), where / name)
            env_before = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = REPO     # the kernel imports this checkout's nsmagic
            try:
                cache[name] = execute(str(where / name))
            finally:
                if env_before is None:
                    os.environ.pop("PYTHONPATH")
                else:
                    os.environ["PYTHONPATH"] = env_before
            assert open(os.path.join(NOTEBOOKS, name), "rb").read() == original
        return cache[name]
    return get


@pytest.mark.kernel
@pytest.mark.parametrize("name", NAMES)
def test_every_cell_runs_and_the_banner_says_everything_runs(executed, name):
    nb = executed(name)
    no_errors(nb, name)
    setup = code_cells(nb)[0]
    assert "Every cell of this notebook runs on this machine" in text_of(setup)
    assert "Mode:              full" in text_of(setup)          # %container info's report


@pytest.mark.kernel
def test_the_setup_cell_sets_only_options_nsmagic_has(executed):
    setup = text_of(code_cells(executed("01-namespaces.ipynb"))[0])
    assert "not recognized" not in setup, (
        "%config ContainerMagics.when_unavailable is not an option of nsmagic yet: " + setup[:300])


@pytest.mark.kernel
def test_namespaces_pid_1_and_2_hostname_network_and_ns_links(executed):
    nb = executed("01-namespaces.ipynb")
    ps = text_of(cell(nb, "%%container --no-plot sh\necho"))
    assert "this shell is PID 2, its parent is PID 1" in ps
    assert any(line.split() == ["1", "0", "nsmagic-init"] for line in ps.splitlines()), ps
    assert "classroom\nclassroom" in text_of(cell(nb, "%%container --no-plot --hostname classroom"))
    net = text_of(cell_containing(nb, "socket.create_connection"))
    assert "interfaces: ['lo']" in net and "unreachable" in net
    table = text_of(cell_containing(nb, "in the notebook kernel"))
    rows = {line.split()[0]: line.split()[-1] for line in table.splitlines()[1:] if line.strip()}
    assert {rows[n] for n in ("pid", "mnt", "net", "uts", "ipc", "cgroup")} == {"new"}, table
    assert "of them mention nsmagic: 0" in text_of(cell_containing(nb, "grep -c nsmagic"))


@pytest.mark.kernel
def test_cgroups_oom_kill_said_in_words_with_a_final_png(executed):
    nb = executed("02-cgroups.ipynb")
    oom = cell(nb, "%%container --mem 100M")
    assert "OOM killed" in text_of(oom) and "exit 137" in text_of(oom)
    assert len(pngs(oom)) == 1, "the live plot leaves exactly one final PNG"
    assert pngs(oom)[0].data["text/plain"].startswith("<nsmagic plot: exit 137")
    assert "'oom_killed': True" in text_of(cell(nb, "r = _container"))


@pytest.mark.kernel
def test_cgroups_cpu_quota_pids_limit_and_the_files(executed):
    nb = executed("02-cgroups.ipynb")
    cpu = cell(nb, "%%container --cpus 0.5")
    assert "throttled" in text_of(cpu)
    live, figure = pngs(cpu)   # the live plot (from 1 s on), then the figure drawn inside
    assert live.data["text/plain"].startswith("<nsmagic plot: exit 0"), live.data
    assert figure.data["text/plain"].startswith("<Figure size"), figure.data
    share = int(text_of(cpu).split("that is ")[1].split("%")[0])
    assert 25 <= share <= 75, text_of(cpu)       # about half; a busy CI host may vary
    bomb = text_of(cell(nb, "%%container --pids 32"))
    assert "Resource temporarily unavailable" in bomb and "pids peak of 32" in bomb
    inside = text_of(cell(nb, "%%container --no-plot --mem 64M --cpus 1 --pids 50"))
    assert "67108864" in inside and "50" in inside
    outside = text_of(cell_containing(nb, "def groups_of(pid)"))
    assert "/nsmagic-" in outside and "after the run ended: no group left" in outside


@pytest.mark.kernel
def test_cgroups_a_delegated_student_is_held_to_the_ceiling(executed):
    """The section run by root plays root and a throw-away student account: setup-user,
    the student's --mem 200M run OOM-killed at the 64 MiB ceiling, the ceiling refused to
    the student, everything removed."""
    nb = executed("02-cgroups.ipynb")
    said = text_of(cell_containing(nb, 'STUDENT = "nsmagic-student"'))
    assert "have root delegate a cgroup to you" in said, said
    assert "nsmagic setup-user, for uid" in said and "memory 64.0 MiB" in said
    assert "--mem 200M run: exit 137, OOM killed: True, peak 6" in said, said
    assert "Permission denied" in said and "removed" in said


@pytest.mark.kernel
def test_union_filesystems_whiteout_host_unchanged_second_run_clean(executed):
    nb = executed("03-union-filesystems.ipynb")
    assert "unchanged on the host: True" in text_of(cell(nb, "after = "))
    assert "on the host: False" in text_of(cell(nb, "after = "))
    second = text_of(cell_containing(nb, "ls /etc/created-inside ||"))
    assert "written inside a container" not in second and "/etc/issue.net" in second
    by_hand = text_of(cell_containing(nb, "unshare --user --map-root-user"))
    assert "merged view:" in by_hand and "seccomp filter OFF" in by_hand, by_hand
    assert "whiteout: hides" in text_of(cell(nb, "import stat"))
    python = text_of(cell_containing(nb, "hello_layers.py"))
    assert "a module written inside the container in /" in python
    assert "its file system: overlay" in python, python
    assert "in the notebook's environment: None" in text_of(cell_containing(nb, "find_spec"))
    assert "c---------" in text_of(cell_containing(nb, 'echo; echo "upper:"'))
    image = text_of(cell_containing(nb, "--rootfs {image}"))
    assert "a busybox image\nchanged inside" in image
    assert "changed inside" not in text_of(cell_containing(nb, 'cat "$1/etc/motd"'))


# --- core tier: the saved notebooks read well on GitHub


@pytest.mark.core
@pytest.mark.parametrize("name", NAMES)
def test_saved_notebooks_keep_outputs_from_a_real_run(name):
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nbformat.validate(nb)
    assert "widgets" not in nb.metadata, "widget state saved: run notebooks/refresh"
    no_errors(nb, name)
    for c in code_cells(nb):
        if c.source.startswith("%%container"):
            assert c.outputs and c.execution_count, f"{name}: {c.source[:50]!r} has no output"
            plots = [p for p in pngs(c) if p.data["text/plain"].startswith("<nsmagic plot")]
            wall = re.search(r"(\d+\.\d+) s wall", text_of(c))
            if "--no-plot" in c.source.splitlines()[0] or (wall and float(wall[1]) < 1.0):
                assert not plots, f"{name}: {c.source[:50]!r} plotted a run under a second"
            elif wall and float(wall[1]) > 1.2:    # a plotted run keeps its last frame
                assert len(plots) == 1, f"{name}: {c.source[:50]!r} keeps no final PNG"
    assert "Every cell of this notebook runs" in text_of(code_cells(nb)[0])


@pytest.mark.kernel
def test_security_capabilities_seccomp_masks_secrets_devices_and_the_user_namespace(executed):
    nb = executed("04-security.ipynb")
    caps = text_of(cell_containing(nb, "def decode(hex_mask)"))
    assert "CapEff: 13 capabilities" in caps and "CAP_SYS_ADMIN" not in caps
    mount = text_of(cell_containing(nb, "mount -t tmpfs none /mnt/scratch"))
    assert "no CAP_SYS_ADMIN: no mount" in mount
    refused, allowed = (text_of(c) for c in code_cells(nb) if "unshare --user" in c.source)
    assert "Operation not permitted" in refused and "Seccomp:\t2" in refused
    assert "seccomp filter OFF" in allowed and "in a nested user namespace as uid 0" in allowed
    masked = text_of(cell_containing(nb, "/proc/timer_list; do\n  [ -e"))
    assert "/proc/timer_list: 0 bytes" in masked and "Read-only file system" in masked
    assert "cannot access '/etc/shadow'" in text_of(cell_containing(nb, "ls -l /etc/shadow"))
    assert "after:  0o666" in text_of(cell_containing(nb, "/dev/null after"))
    pid1 = text_of(cell_containing(nb, "PID 1 is: "))
    assert "PID 1 is: nsmagic-init" in pid1 and "CapEff:\t0000000000000000" in pid1
    userns = text_of(cell_containing(nb, "def as_nobody(script)"))
    assert "uid=0(root)" in userns and "0      65534          1" in userns
    assert any(line.split()[:2] == ["nobody", "65534"] for line in userns.splitlines()), userns


@pytest.mark.kernel
def test_images_hello_build_layers_whiteouts_thin_layer_registry(executed):
    nb = executed("05-images-and-layers.ipynb")
    assert text_of(cell(nb, "%container run --no-plot hello-world")).startswith(
        "Hello from nsmagic!")
    first, again = (text_of(c) for c in code_cells(nb) if c.source.startswith("%%image build"))
    assert "Successfully tagged course-demo:latest" in first and "Using cache" not in first
    assert again.count(" ---> Using cache") == 6
    stack, = (c for c in code_cells(nb) if c.source == "%container layers course-demo")
    assert len(pngs(stack)) == 1
    layer = text_of(cell(nb, "%container layers course-demo 2"))
    assert "0 added, 2 changed, 2 deleted" in layer and "D   /app/big" in layer
    tar = text_of(cell(nb, "import stat, tarfile"))
    assert "app/.wh.big          whiteout" in tar and "a 0:0 character device" in tar
    assert "65536 bytes of it" in tar
    assert text_of(cell(nb, "%container diff {name}")).split("\n")[:5] == [
        "C /app", "A /app/notes", "D /app/two", "C /etc", "C /etc/passwd"]
    assert "student" in text_of(cell(nb, "%container commit {name}"))
    saved = text_of(cell(nb, "%container save -o course-demo.tar"))
    assert saved.split() == ["index.json", "manifest.json", "oci-layout"]
    registry = text_of(cell(nb, "import shutil, socket"))
    if shutil.which("docker-registry"):
        assert "Status: downloaded 127.0.0.1:" in registry and "hello from a layer" in registry
    else:
        assert "No registry here" in registry


def test_networking_lo_only_a_veth_by_hand_names_a_published_port_and_a_rate(executed):
    nb = executed("06-networking.ipynb")
    alone = text_of(cell(nb, "%%container --no-plot --network none sh"))
    assert "interfaces:\nlo\nroutes:\n(none)" in alone and "refused" in alone
    assert len(pngs(cell_containing(nb, "FancyBboxPatch"))) == 1       # the pair, drawn
    by_hand = text_of(cell_containing(nb, "async def veth_between"))
    assert "hello 192.168.77.1, from the right" in by_hand and "left behind: nothing" in by_hand
    host_end = text_of(cell_containing(nb, "on the host: {name}"))
    assert "a port of the bridge nsmagic0" in host_end
    talking = text_of(cell(nb, "%%container --no-plot --network classroom sh"))
    assert "\tweb webserver\n" in talking and "hello from web" in talking
    inside = text_of(cell(nb, "%%container --name web --no-plot sh"))
    assert "nsmagic-exec" in inside and " big\n" in inside
    published = cell_containing(nb, "-p 18080:8000")
    assert "0.0.0.0:18080->8000/tcp" in text_of(published)
    assert "not reachable" not in text_of(published)
    assert "dnat to" in text_of(cell_containing(nb, '"nft", "list", "table"'))
    rate = cell(nb, "%%container --network classroom --network-rate 8mbit")
    assert len(pngs(rate)) == 1 and "limit 8 Mbit/s each way" in text_of(rate)
    wall = float(text_of(rate).split("exit 0 · ")[1].split(" s wall")[0])
    assert 2.5 < wall < 6, wall          # 3 MB at 1 MB/s, and a moment to start
    gone = text_of(cell_containing(nb, "%container rm -f web published"))
    assert "web" in gone and " web\n" not in gone.split("classroom")[-1]


# --- unprivileged tier: namespaces refused, as on Binder


@pytest.mark.unprivileged
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to a user")
def test_where_namespaces_are_refused_every_cell_explains_and_none_fails(
        tmp_path_factory, nobody_python, nobody_checkout):
    if not os.path.exists("/usr/bin/python3"):
        pytest.fail("no /usr/bin/python3 to start blocked.py with: apt-get install python3")
    top = tmp_path_factory.mktemp("degraded")
    for d in [top, *top.parents]:
        if str(d) in ("/", "/tmp"):
            break
        os.chmod(d, 0o755)
    os.makedirs(top / "src")
    for name in NAMES:
        shutil.copy(os.path.join(NOTEBOOKS, name), top / "src" / name)
    shutil.copy(os.path.join(DEGRADED, "run_notebooks.py"), top / "run_notebooks.py")
    home = top / "home"
    startup = home / ".ipython" / "profile_default" / "startup"
    os.makedirs(startup)
    os.makedirs(top / "out")
    subprocess.run(["chmod", "-R", "a+rX", str(top)], check=True)
    for d in (home, top / "out", top / "src"):      # the kernel writes here as nobody
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(d)], check=True)
    env = {"PATH": f"{os.path.dirname(nobody_python)}:/usr/bin:/bin", "HOME": str(home),
           "IPYTHONDIR": str(home / ".ipython"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "MPLCONFIGDIR": str(home / "mpl"), "PYTHONPATH": nobody_checkout, "LANG": "C.UTF-8"}
    done = subprocess.run(["/usr/bin/python3", os.path.join(DEGRADED, "blocked.py"), str(NOBODY),
                           "--", nobody_python, str(top / "run_notebooks.py"), str(top / "src"),
                           str(top / "out")],
                          capture_output=True, text=True, env=env, cwd=str(top), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {name: "ok" for name in NAMES}, report
    for name in NAMES:
        nb = nbformat.read(top / "out" / name, as_version=4)
        no_errors(nb, name)
        setup = text_of(code_cells(nb)[0])
        assert "Running as root:   no" in setup and "Mode:              unavailable" in setup
        assert "not recognized" not in setup
        banner = next(o for o in code_cells(nb)[0].outputs if o.output_type == "display_data")
        lines = banner.data["text/plain"].splitlines()
        assert lines[0] == "Some cells of this notebook cannot run on this host:"
        assert "where you are root" in lines[-1]
        reason = next(line for line in lines if line.startswith("namespaces ("))
        assert "blocks namespaces" in reason, reason
        for c in code_cells(nb):
            if c.source.startswith("%%container"):
                said = text_of(c)
                assert f"%%container cannot run on this host: {reason}" in said, (name, said)
                assert not pngs(c)
