"""Boot a real kernel under qemu (TCG) once per cgroup layout and check, inside it,
that the layout is what it claims, then run the project's kernel tests there.

One boot per layout serves both tests of that layout (module-scoped fixture): the
guest first runs a probe (PROBE below, as the layout's user) that writes facts as JSON,
then, when test_guest_pytest for that layout is selected, the project's pytest subset
GUEST_PYTEST.  A guest that does not boot or hangs fails the tests (never skips).

Run one layout by hand:  .venv/bin/python -m tests.vm.harness v2 -- <command>
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shlex
import sys
import time
import warnings
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def _load_harness():
    # Load by path: works whatever pytest's import mode / sys.path, and with or
    # without tests/__init__.py.
    name = "nsmagic_tests_vm_harness"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _HERE / "vm" / "harness.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


harness = _load_harness()
REPO = harness.REPO

pytestmark = pytest.mark.vm

# The project's tests to run inside each guest (relative to the repo; cwd = repo).
# faulthandler_timeout: a test stuck for a minute dumps every thread's traceback into the
# guest's output, so a hang says where it is.
GUEST_PYTEST = ["-m", "kernel", "-p", "no:cacheprovider", "-o", "faulthandler_timeout=60",
                "tests/test_cgroups.py"]
# Per-layout replacements of GUEST_PYTEST (e.g. "v2-delegated", whose guest runs the
# command as uid 65534, where tests that need root skip).
# Pure v2 and pure v1 also run the block I/O throttles (io.max; blkio on a kernel other than
# the host's) and the device guards (v2 has no devices controller: the nodev argument).
# Pure v2, pure v1 and hybrid also run setup-user's delegation as two users the test makes
# (tests/test_delegation.py, marked unprivileged: root makes the users, they run nsmagic).
GUEST_PYTEST_BY_LAYOUT: dict[str, list[str]] = {
    layout: GUEST_PYTEST + ["tests/test_blkio.py", "tests/test_devices.py"]
    for layout in ("v2", "v1")}
for _layout in ("v2", "v1", "hybrid"):
    _args = GUEST_PYTEST_BY_LAYOUT.get(_layout, GUEST_PYTEST)
    GUEST_PYTEST_BY_LAYOUT[_layout] = (["-m", "kernel or unprivileged"] + _args[2:]
                                       + ["tests/test_delegation.py"])
if os.environ.get("NSMAGIC_VM_GUEST_PYTEST"):  # a developer's override, shell words
    GUEST_PYTEST = shlex.split(os.environ["NSMAGIC_VM_GUEST_PYTEST"])
    GUEST_PYTEST_BY_LAYOUT = {}


def guest_pytest_args(layout: str) -> list[str]:
    return GUEST_PYTEST_BY_LAYOUT.get(layout, GUEST_PYTEST)


# Bound for one boot (probe + guest pytest), seconds.
VM_TIMEOUT = float(os.environ.get("NSMAGIC_VM_TIMEOUT", "300"))

GUEST_PYTHON = REPO / ".venv" / "bin" / "python"

# Runs in the guest as the layout's user; prints one JSON object of facts.
PROBE = r"""
import json, os, subprocess, sys, tempfile

facts = {"uid": os.getuid(), "kernel": os.uname().release, "errors": []}

def read(p):
    try:
        with open(p) as f:
            return f.read()
    except OSError as e:
        return None

mounts = []
for line in open("/proc/self/mountinfo"):
    pre, post = line.rstrip("\n").split(" - ", 1)
    f = pre.split()
    fstype, source, sopts = post.split(" ", 2)
    mounts.append({"mountpoint": f[4], "fstype": fstype, "source": source,
                   "super_options": sopts, "root": f[3]})
facts["cgroup_mounts"] = [m for m in mounts if m["fstype"] in ("cgroup", "cgroup2")]
facts["root_mount"] = [m for m in mounts if m["mountpoint"] == "/"][-1]
facts["proc_self_cgroup"] = read("/proc/self/cgroup").splitlines()

v2 = [m["mountpoint"] for m in facts["cgroup_mounts"] if m["fstype"] == "cgroup2"]
facts["v2_mount"] = v2[0] if v2 else None
if v2:
    facts["v2_controllers"] = read(v2[0] + "/cgroup.controllers").split()
    facts["v2_subtree_control"] = read(v2[0] + "/cgroup.subtree_control").split()

def try_write(path, value):
    try:
        with open(path, "w") as f:
            f.write(value)
        return None
    except OSError as e:
        return f"{path}: {e}"

# A child cgroup where this process may make one: v2 (the parent of our own
# cgroup when delegated, else the v2 root) or v1 memory.
if facts["v2_mount"] and "memory" in facts["v2_subtree_control"]:
    own = [l.split("::", 1)[1] for l in facts["proc_self_cgroup"] if l.startswith("0::")][0]
    facts["own_cgroup"] = own
    base = facts["v2_mount"] + (os.path.dirname(own) if os.getuid() != 0 else "")
    child = os.path.join(base, "probe-child")
    try:
        os.mkdir(child)
        facts["child_mkdir"] = child
        facts["child_files"] = sorted(os.listdir(child))
        facts["child_memory_max_write"] = try_write(child + "/memory.max", "67108864")
        facts["child_memory_max"] = read(child + "/memory.max")
        facts["child_pids_max_write"] = try_write(child + "/pids.max", "64")
        facts["child_cpu_max_write"] = try_write(child + "/cpu.max", "50000 100000")
        # Move ourselves in and back (needs write access to the common ancestor).
        back = facts["v2_mount"] + own + "/cgroup.procs"
        facts["child_move_in"] = try_write(child + "/cgroup.procs", str(os.getpid()))
        facts["child_cgroup_while_in"] = read("/proc/self/cgroup").strip()
        facts["child_move_back"] = try_write(back, str(os.getpid()))
        os.rmdir(child)
    except OSError as e:
        facts["errors"].append(f"v2 child: {e}")

v1mem = [m["mountpoint"] for m in facts["cgroup_mounts"]
         if m["fstype"] == "cgroup" and "memory" in m["super_options"].split(",")]
facts["v1_memory_mount"] = v1mem[0] if v1mem else None
facts["v1_hierarchies"] = {m["mountpoint"]: m["super_options"]
                           for m in facts["cgroup_mounts"] if m["fstype"] == "cgroup"}
if v1mem and os.getuid() == 0:
    child = v1mem[0] + "/probe-child"
    try:
        os.mkdir(child)
        facts["v1_child_limit_write"] = try_write(child + "/memory.limit_in_bytes", "67108864")
        facts["v1_child_limit"] = read(child + "/memory.limit_in_bytes")
        os.rmdir(child)
    except OSError as e:
        facts["errors"].append(f"v1 child: {e}")

# Overlay with this guest's /usr as the lower layer and a tmpfs upper (as nsmagic does).
def sh(cmd):
    p = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True)
    return {"rc": p.returncode, "out": (p.stdout + p.stderr)[-2000:]}

OVL = ("d=$(mktemp -d) && mount -t tmpfs tmpfs $d && mkdir $d/u $d/w $d/m && "
       "mount -t overlay -o lowerdir=/usr,upperdir=$d/u,workdir=$d/w overlay $d/m && "
       "test -x $d/m/bin/python3 && echo x > $d/m/new && cat $d/m/new && "
       "umount $d/m && umount $d")
if os.getuid() == 0:
    facts["overlay_usr_lower"] = sh("unshare -m sh -c '" + OVL + "'")
facts["userns_overlay_usr_lower"] = sh("unshare -Urm sh -c '" + OVL + "'")
print(json.dumps(facts, indent=1))
"""

# The guest side of one boot: probe, then (maybe) the project's pytest subset.
DRIVER = r"""
set -u
up() { cut -d' ' -f1 /proc/uptime; }
up > "$VM_OUT/probe.start"
"$GUEST_PY" "$VM_JOB/probe.py" > "$VM_OUT/probe.json" 2> "$VM_OUT/probe.err"
echo $? > "$VM_OUT/probe.rc"
up > "$VM_OUT/probe.end"
if [ "$RUN_PYTEST" = 1 ]; then
    "$GUEST_PY" -m pytest "$@" > "$VM_OUT/pytest.out" 2>&1
    echo $? > "$VM_OUT/pytest.rc"
    up > "$VM_OUT/pytest.end"
fi
exit 0
"""


@dataclasses.dataclass
class LayoutRun:
    layout: str
    result: object  # harness.VmResult
    ran_pytest: bool
    missing: list
    host_seconds: float
    pytest_args: list

    def file(self, name):
        return self.result.files.get(name)

    def num(self, name):
        t = self.file(name)
        try:
            return float(t) if t else None
        except ValueError:
            return None


def _guest_test_files(args):
    """The paths named in pytest args (option values skipped, node ids cut at ::)."""
    takes_value = {"-m", "-k", "-p", "-c", "-o", "--deselect", "--ignore", "--rootdir"}
    paths, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in takes_value:
            skip = True
        elif not a.startswith("-"):
            paths.append(a.split("::", 1)[0])
    return paths


def _wants_guest_pytest(session, layout):
    for item in session.items:
        cs = getattr(item, "callspec", None)
        if (
            getattr(item, "originalname", None) == "test_guest_pytest"
            and cs is not None
            and cs.params.get("layout_run") == layout
        ):
            return True
    return False


def _record_timing(run: LayoutRun):
    r = run.result
    row = {
        "layout": run.layout,
        "boot_s": r.boot_seconds,
        "probe_s": (run.num("probe.end") or 0) - (run.num("probe.start") or 0) or None,
        "pytest_s": (
            (run.num("pytest.end") or 0) - (run.num("probe.end") or 0)
            if run.num("pytest.end")
            else None
        ),
        "command_s": r.command_seconds,
        "wall_s": round(r.wall_seconds, 1),
        "exit_status": r.exit_status,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(f"vm timings: {row}")
    try:
        harness.OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
        with open(harness.OUTPUT_DIR / "timings.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError:
        pass


@pytest.fixture(scope="module", params=harness.LAYOUTS)
def layout_run(request):
    layout = request.param
    if os.environ.get("NSMAGIC_VM_LAYOUT"):
        pytest.skip("already inside a VM guest: no nested qemu")
    args = guest_pytest_args(layout)
    missing = [f for f in _guest_test_files(args) if not (REPO / f).exists()]
    run_pytest = _wants_guest_pytest(request.session, layout) and not missing
    py = GUEST_PYTHON if GUEST_PYTHON.exists() else Path(sys.executable)
    cwd = REPO
    if layout == "v2-delegated":
        # The guest's command runs as uid 65534, which may not reach this checkout (under
        # root's home) or its venv's Python (pyenv's): a Python nobody can run, in a copy
        # of the checkout nobody can read (conftest.nobody_python, nobody_checkout).
        py = request.getfixturevalue("nobody_python")
        cwd = request.getfixturevalue("nobody_checkout")
    t0 = time.monotonic()
    # Once (in one CI run of many) an emulated guest hung here with no sign from its kernel or
    # the tests; it has not come back in 20 reruns. A guest that times out is booted once
    # more, and the first attempt's output is kept as a warning: a hang of our own code would
    # hang twice and fail, with faulthandler's tracebacks in the report.
    for attempt in (1, 2):
        try:
            result = harness.boot_and_run(
                layout,
                ["/bin/sh", f"{harness.GUEST_JOB}/driver.sh", *args, "-q", "-rA"],
                cwd=cwd,
                env={"GUEST_PY": str(py), "RUN_PYTEST": "1" if run_pytest else "0"},
                files={"probe.py": PROBE, "driver.sh": DRIVER},
                timeout=VM_TIMEOUT,
            )
        except harness.VmSetupError as e:
            pytest.fail(f"cannot boot the {layout} guest: {e}", pytrace=False)
        if not result.timed_out or attempt == 2:
            break
        warnings.warn(f"the {layout} guest timed out and is booted again; first attempt:\n"
                      f"{_pytest_report(result.files.get('pytest.out') or '')}\n"
                      f"{result.describe(10)}", stacklevel=1)
    run = LayoutRun(layout, result, run_pytest, missing, time.monotonic() - t0, args)
    _record_timing(run)
    return run


def _facts(run: LayoutRun) -> dict:
    r = run.result
    if run.file("probe.rc") is None:
        pytest.fail(f"the {run.layout} guest never ran the probe\n" + r.describe(), pytrace=False)
    if run.file("probe.rc").strip() != "0":
        pytest.fail(
            f"probe failed in the {run.layout} guest (rc {run.file('probe.rc').strip()}):\n"
            + (run.file("probe.err") or "")
            + "\n"
            + r.describe(),
            pytrace=False,
        )
    return json.loads(run.file("probe.json"))


def test_layout_is_what_it_claims(layout_run):
    run = layout_run
    f = _facts(run)
    ctx = f"\nfacts: {json.dumps(f, indent=1)[:6000]}\n{run.result.describe(20)}"
    cg = {m["mountpoint"]: m for m in f["cgroup_mounts"]}
    v1 = {mp: set(m["super_options"].split(",")) for mp, m in cg.items() if m["fstype"] == "cgroup"}
    v2 = [mp for mp, m in cg.items() if m["fstype"] == "cgroup2"]
    need = {"memory", "cpu", "pids"}
    assert f["root_mount"]["fstype"] == "overlay", ctx
    assert not f["errors"], ctx

    if run.layout in ("v2", "v2-delegated"):
        assert v2 == ["/sys/fs/cgroup"] and not v1, ctx
        assert need <= set(f["v2_controllers"]), ctx
        assert need <= set(f["v2_subtree_control"]), ctx
        assert f.get("child_mkdir"), ctx
        assert f["child_memory_max_write"] is None, ctx
        assert f["child_memory_max"].strip() == "67108864", ctx
        assert f["child_pids_max_write"] is None and f["child_cpu_max_write"] is None, ctx
        assert f["child_move_in"] is None and f["child_move_back"] is None, ctx
        for name in ("memory.peak", "pids.peak", "cgroup.kill", "memory.max", "cpu.max"):
            assert name in f["child_files"], f"{name} missing{ctx}"
    if run.layout == "v2":
        assert f["uid"] == 0, ctx
        assert f["proc_self_cgroup"] == ["0::/"], ctx
        assert f["overlay_usr_lower"]["rc"] == 0, ctx
    if run.layout == "v2-delegated":
        assert f["uid"] == harness.DELEGATED_UID, ctx
        assert f["own_cgroup"] == f"/{harness.DELEGATED_NAME}/runner", ctx
        assert f["child_mkdir"] == f"/sys/fs/cgroup/{harness.DELEGATED_NAME}/probe-child", ctx
        assert "overlay_usr_lower" not in f, ctx
        # Unprivileged user namespace + overlay over /usr works on this kernel (>= 5.11).
        assert f["userns_overlay_usr_lower"]["rc"] == 0, ctx

    if run.layout in ("v1", "hybrid"):
        assert f["uid"] == 0, ctx
        assert f["v1_memory_mount"] == "/sys/fs/cgroup/memory", ctx
        assert v1["/sys/fs/cgroup/memory"] >= {"memory"}, ctx
        assert f["v1_child_limit_write"] is None, ctx
        assert f["v1_child_limit"].strip() == "67108864", ctx
        assert any("pids" in o for o in v1.values()), ctx
        assert "name=systemd" in v1.get("/sys/fs/cgroup/systemd", set()), ctx
        assert f["overlay_usr_lower"]["rc"] == 0, ctx
        # v1 lines only (plus 0:: when a cgroup2 is mounted)
        assert any(re.match(r"\d+:memory:/$", ln) for ln in f["proc_self_cgroup"]), ctx
    if run.layout == "v1":
        assert not v2, ctx
        # systemd legacy style: cpu and cpuacct co-mounted
        assert v1.get("/sys/fs/cgroup/cpu,cpuacct", set()) >= {"cpu", "cpuacct"}, ctx
    if run.layout == "hybrid":
        assert v2 == ["/sys/fs/cgroup/unified"], ctx
        assert not need & set(f["v2_controllers"]), ctx
        assert f["v2_subtree_control"] == [], ctx
        # like the dev machine: cpu and cpuacct in separate hierarchies
        assert "cpu" in v1.get("/sys/fs/cgroup/cpu", set()), ctx
        assert "cpuacct" in v1.get("/sys/fs/cgroup/cpuacct", set()), ctx


def _pytest_report(text: str, lines: int = 80) -> str:
    keep = [
        ln
        for ln in text.splitlines()
        if re.match(r"(FAILED|ERROR|PASSED|SKIPPED|XFAIL|XPASS)\b", ln)
        or re.match(r"=+ .* =+$", ln)
        or re.match(r"E\s", ln)
    ]
    if len(text.splitlines()) <= lines:
        return text
    tail = text.splitlines()[-lines:]
    return "\n".join(["--- summary lines ---", *keep[-200:], "--- tail ---", *tail])


def test_guest_pytest(layout_run):
    run = layout_run
    if run.missing:
        pytest.fail(
            f"GUEST_PYTEST (or GUEST_PYTEST_BY_LAYOUT[{run.layout!r}]) in "
            f"tests/test_vm_layouts.py names files that do not exist (yet): {run.missing}; "
            f"add them or change GUEST_PYTEST.",
            pytrace=False,
        )
    r = run.result
    rc = run.file("pytest.rc")
    out = run.file("pytest.out") or ""
    if rc is None:
        pytest.fail(
            f"guest pytest did not finish in the {run.layout} guest "
            f"(timed_out={r.timed_out}):\n{_pytest_report(out)}\n{r.describe(10)}",
            pytrace=False,
        )
    rc = int(rc.strip())
    if rc == 5:
        pytest.fail(
            f"guest pytest collected no tests in the {run.layout} guest "
            f"({' '.join(run.pytest_args)}):\n{_pytest_report(out)}",
            pytrace=False,
        )
    uid = harness.DELEGATED_UID if run.layout == "v2-delegated" else 0
    assert rc == 0, (
        f"guest pytest failed in the {run.layout} guest (rc {rc}, uid {uid}):\n"
        f"{_pytest_report(out)}"
    )
    last = out.strip().splitlines()[-1] if out.strip() else ""
    if not re.search(r"\b\d+ passed\b", last):
        warnings.warn(
            f"guest pytest in the {run.layout} guest passed without running a test "
            f"(uid {uid}): {last}",
            stacklevel=1,
        )
