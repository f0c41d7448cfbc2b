#!/usr/bin/env python3
"""Start-up benchmark: nsmagic against its peers on the same work.

Not a test: it measures and prints one table (plus a few extra measurements
and the project's targets with PASS/MISS).

The work, identical for every contender: start to exit of ``/bin/true``
(busybox) in new pid, mount, uts, ipc and net namespaces, with a 100 MiB
memory limit and a pids limit of 64, on a fresh overlay upper layer over one
busybox root filesystem that this script builds once per run from Debian's
busybox-static (nothing is downloaded).  Contenders that cannot do part of
that work say so in the notes column.

Contenders (``--only`` names):

  nsmagic-warm   nsmagic.core.run() called in this process
  nsmagic-cold   ``nsmagic run ...`` as a fresh process (console script, or
                 ``python -m nsmagic run``)
  nsmagic-cell   ``%%container ... pass`` through a real IPython shell in
                 this process (default root filesystem: a Python cell needs
                 Python); the same cell again, so its container was made ahead
  nsmagic-cell-new  the same with only PID 1 made ahead (READY_SPARES off), as
                 for a first cell or a cell with new options
  crun, runc     OCI bundle, fresh overlay mounted/unmounted per run
                 (inside the timed region)
  crun-wrapper   the cost of the wrapper crun needs on a hybrid cgroup layout
  overlay        reference: mkdir + overlay mount + umount + rm alone
  python-floor   reference: ``python -c pass``, the floor of any Python CLI
  bwrap          bubblewrap --unshare-all (no limits)
  unshare        util-linux unshare -fpmuin (no limits)

Extra measurements (also ``--only`` names):

  load-ext       ``%load_ext nsmagic`` in a fresh Python process
  hundred        100 nsmagic containers running ``sleep 30``: start time,
                 memory per idle container, clean stop

Run as root with the project's venv:

  /work/main/.venv/bin/python bench/startup.py [--runs 50] [--only a,b]
                                               [--json bench/output/startup.json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import importlib
import importlib.util
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
MEM = "100M"
MEM_BYTES = 100 * MIB
PIDS = 64
APPLETS = [
    "true",
    "sh",
    "sleep",
    "cat",
    "ps",
    "ls",
    "echo",
    "mkdir",
    "mount",
    "umount",
    "id",
    "hostname",
    "env",
]
BUSYBOX = "/usr/bin/busybox"

ALL_CONTENDERS = [
    "nsmagic-warm",
    "nsmagic-cold",
    "nsmagic-cell",
    "nsmagic-cell-new",
    "crun",
    "crun-wrapper",
    "runc",
    "bwrap",
    "unshare",
    "overlay",
    "python-floor",
]
ALL_EXTRAS = ["load-ext", "hundred"]

# nsmagic options shared by all three nsmagic contenders.  "--network none" is
# spelled out for all of them so the work is a bare new net namespace whatever
# nsmagic's default network mode is.
NSM_LIMITS = ["--mem", MEM, "--pids", str(PIDS), "--network", "none"]
CELL_LINE = "--mem 100M --pids 64 --network none --no-plot"

# Targets: (key, description, limit)
TARGET_WARM = 0.5
TARGET_CELL = 1.0
TARGET_COLD = 1.5
TARGET_LOAD_EXT_MS = 150.0
TARGET_HUNDRED_S = 2.0
TARGET_PER_CONTAINER_MIB = 2.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# mount helpers (ctypes: no extra process, so the cost is the kernel's)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MNT_DETACH = 2


def mount_overlay(lower: str, upper: str, work: str, target: str) -> None:
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}".encode()
    if _libc.mount(b"overlay", target.encode(), b"overlay", 0, opts) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount overlay on {target}: {os.strerror(e)}")


def umount(target: str, detach: bool = False) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH if detach else 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"umount {target}: {os.strerror(e)}")


def mountpoints() -> list[tuple[str, str]]:
    """(mount point, fs type) of this mount namespace."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mp = left.split()[4].replace("\\040", " ")
            out.append((mp, right.split()[0]))
    return out


class Overlays:
    """Fresh overlay upper layers over one lower dir, with guaranteed cleanup."""

    def __init__(self, lower: str, scratch: str):
        self.lower = lower
        self.scratch = scratch
        self.active: set[str] = set()
        self.n = 0

    def fresh(self, target: str) -> str:
        """mkdir upper/work, mount at target; returns the layer dir to drop."""
        self.n += 1
        layer = os.path.join(self.scratch, f"L{self.n}")
        os.mkdir(layer)
        os.mkdir(layer + "/u")
        os.mkdir(layer + "/w")
        mount_overlay(self.lower, layer + "/u", layer + "/w", target)
        self.active.add(target)
        return layer

    def drop(self, target: str, layer: str) -> None:
        umount(target)
        self.active.discard(target)
        shutil.rmtree(layer)

    def cleanup(self) -> None:
        for t in list(self.active):
            with contextlib.suppress(OSError):
                umount(t, detach=True)
            self.active.discard(t)


# --------------------------------------------------------------------------
# environment


def build_rootfs(dst: str) -> None:
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc", "root", "sys/fs/cgroup"):
        os.makedirs(os.path.join(dst, d), exist_ok=True)
    os.chmod(os.path.join(dst, "tmp"), 0o1777)
    shutil.copy2(BUSYBOX, os.path.join(dst, "bin/busybox"))
    for a in APPLETS:
        os.symlink("busybox", os.path.join(dst, "bin", a))
    with open(os.path.join(dst, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(dst, "etc/group"), "w") as f:
        f.write("root:x:0:\n")


def cgroup_layout() -> str:
    mps = dict(mountpoints())
    if mps.get("/sys/fs/cgroup") == "cgroup2":
        return "v2"
    if mps.get("/sys/fs/cgroup/unified") == "cgroup2":
        return "hybrid"
    return "v1"


def tool_version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001
        return f"? ({e})"


DEBIAN_PKG = {"crun": "crun", "runc": "runc", "bwrap": "bubblewrap", "unshare": "util-linux"}


# --------------------------------------------------------------------------
# contenders


class Skip(Exception):
    """Contender cannot run here; message says why."""


class Contender:
    name = ""
    label = ""
    notes = ""

    def __init__(self) -> None:
        self.ns: list[int] = []
        self.status = "ok"  # ok | skipped | failed
        self.reason = ""

    def prepare(self) -> None:
        """Raise Skip if unavailable."""

    def once(self, i: int) -> int:
        """One timed run; returns elapsed ns.  Raise on failure."""
        raise NotImplementedError

    def between(self) -> None:
        """Untimed, after each run: what happens before the next one comes."""

    def cleanup(self) -> None:
        pass


def run_quiet(argv: list[str], cwd: str | None = None, env: dict | None = None) -> int:
    return subprocess.run(
        argv,
        check=False,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=cwd,
        env=env,
    ).returncode


def diagnose(argv: list[str], cwd: str | None = None, env: dict | None = None) -> str:
    r = subprocess.run(
        argv,
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
    )
    text = (r.stderr.strip() or r.stdout.strip() or "(no output)").splitlines()
    return f"exit {r.returncode}: " + " | ".join(text[-3:])


class SubprocessContender(Contender):
    def argv(self, i: int) -> list[str]:
        raise NotImplementedError

    cwd: str | None = None
    env: dict | None = None

    def once(self, i: int) -> int:
        argv = self.argv(i)
        t0 = time.perf_counter_ns()
        rc = run_quiet(argv, self.cwd, self.env)
        t1 = time.perf_counter_ns()
        if rc != 0:
            raise RuntimeError(diagnose(self.argv(i), self.cwd, self.env))
        return t1 - t0


class OverlaySubprocessContender(Contender):
    """Timed region: mkdir upper/work + mount overlay + command + umount + rm."""

    target = ""

    def __init__(self, ov: Overlays) -> None:
        super().__init__()
        self.ov = ov

    def argv(self, i: int) -> list[str]:
        raise NotImplementedError

    cwd: str | None = None

    def once(self, i: int) -> int:
        argv = self.argv(i)
        t0 = time.perf_counter_ns()
        layer = self.ov.fresh(self.target)
        try:
            rc = run_quiet(argv, self.cwd)
        finally:
            self.ov.drop(self.target, layer)
        t1 = time.perf_counter_ns()
        if rc != 0:
            layer = self.ov.fresh(self.target)
            try:
                msg = diagnose(self.argv(i), self.cwd)
            finally:
                self.ov.drop(self.target, layer)
            raise RuntimeError(msg)
        return t1 - t0


class OverlayOnly(OverlaySubprocessContender):
    name = "overlay"
    label = "ref: fresh overlay alone"
    notes = "mkdir+mount+umount+rm of the upper layer; included in crun/runc/unshare rows"

    def __init__(self, ov: Overlays, target: str) -> None:
        super().__init__(ov)
        self.target = target

    def once(self, i: int) -> int:
        t0 = time.perf_counter_ns()
        layer = self.ov.fresh(self.target)
        self.ov.drop(self.target, layer)
        return time.perf_counter_ns() - t0


class OCI(OverlaySubprocessContender):
    """crun / runc on a bundle whose rootfs is a fresh overlay per run."""

    def __init__(self, tool: str, ov: Overlays, scratch: str, tag: str, wrap: bool) -> None:
        super().__init__(ov)
        self.tool = tool
        self.name = tool
        self.wrap = wrap
        self.tag = tag
        self.bundle = os.path.join(scratch, f"bundle-{tool}")
        self.vbundle = os.path.join(scratch, f"bundle-{tool}-verify")
        self.target = os.path.join(self.bundle, "rootfs")
        self.ids: list[str] = []
        self.label = f"{tool} run"
        self.notes = "overlay mount+umount timed"
        if wrap:
            self.label = f"{tool} run (in wrapper)"
            self.notes = "overlay mount+umount timed; wrapper: see note"
        self.verify_result = ""

    def prepare(self) -> None:
        exe = shutil.which(self.tool)
        if not exe:
            raise Skip(f"{self.tool} not found: apt-get install {self.tool}")
        self.exe = exe
        for b in (self.bundle, self.vbundle):
            os.makedirs(os.path.join(b, "rootfs"))
        r = subprocess.run(
            [exe, "spec"], check=False, cwd=self.bundle, capture_output=True, text=True
        )
        if r.returncode != 0:
            raise Skip(f"{self.tool} spec failed: {r.stderr.strip()}")
        with open(os.path.join(self.bundle, "config.json")) as f:
            cfg = json.load(f)
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = ["/bin/true"]
        cfg["root"] = {"path": self.target, "readonly": False}
        cfg["hostname"] = "bench"
        lin = cfg.setdefault("linux", {})
        lin["namespaces"] = [{"type": t} for t in ("pid", "mount", "uts", "ipc", "network")]
        lin["resources"] = {"memory": {"limit": MEM_BYTES}, "pids": {"limit": PIDS}}
        lin.pop("cgroupsPath", None)
        with open(os.path.join(self.bundle, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1)
        # verification bundle: same config, shell that reports its cgroup limits
        vcfg = json.loads(json.dumps(cfg))
        vcfg["root"]["path"] = os.path.join(self.vbundle, "rootfs")
        vcfg["process"]["args"] = ["/bin/sh", "-c", VERIFY_SCRIPT]
        with open(os.path.join(self.vbundle, "config.json"), "w") as f:
            json.dump(vcfg, f, indent=1)

    def _cmd(self, argv: list[str]) -> list[str]:
        if self.wrap:
            return wrapper_argv() + argv
        return argv

    def argv(self, i: int) -> list[str]:
        cid = f"{self.tag}-{self.tool}-{i}"
        self.ids.append(cid)
        return self._cmd([self.exe, "run", "--bundle", self.bundle, cid])

    def verify(self) -> str:
        """Untimed: run a shell in the same config and read the limits it sees."""
        cid = f"{self.tag}-{self.tool}-verify"
        self.ids.append(cid)
        target = os.path.join(self.vbundle, "rootfs")
        layer = self.ov.fresh(target)
        try:
            r = subprocess.run(
                self._cmd([self.exe, "run", "--bundle", self.vbundle, cid]),
                check=False,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            self.ov.drop(target, layer)
        return judge_verify(r.stdout, r.stderr, r.returncode)

    def cleanup(self) -> None:
        base = "/run/crun" if self.tool == "crun" else "/run/runc"
        for cid in self.ids:
            if os.path.exists(os.path.join(base, cid)):
                subprocess.run(
                    self._cmd([self.exe, "delete", "-f", cid]),
                    check=False,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )


VERIFY_SCRIPT = (
    'echo "pid=$$ host=$(hostname)"; '
    "for f in /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max "
    "/sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max; do "
    '[ -r $f ] && echo "$f=$(cat $f)"; done; '
    "grep -E ':(memory|pids):|^0::' /proc/self/cgroup"
)


def judge_verify(out: str, err: str, rc: int) -> str:
    if rc != 0:
        return f"FAILED (exit {rc}: {err.strip() or out.strip()})"
    vals = {}
    cgs = []
    for line in out.splitlines():
        if "=" in line and line.startswith("/sys/"):
            k, v = line.split("=", 1)
            vals[k] = v
        elif ":" in line:
            cgs.append(line.strip())
        elif line.startswith("pid="):
            vals["pid"] = line
    mem = vals.get("/sys/fs/cgroup/memory/memory.limit_in_bytes") or vals.get(
        "/sys/fs/cgroup/memory.max"
    )
    pids = vals.get("/sys/fs/cgroup/pids/pids.max") or vals.get("/sys/fs/cgroup/pids.max")
    ok = mem == str(MEM_BYTES) and pids == str(PIDS) and "pid=1 " in vals.get("pid", "") + " "
    verdict = "limits applied" if ok else "LIMITS NOT SEEN"
    return (
        f"{verdict}: memory limit={mem} pids.max={pids} {vals.get('pid', '')}; "
        f"cgroups {'; '.join(cgs)}"
    )


def wrapper_argv() -> list[str]:
    """crun 1.8 refuses a hybrid layout; hide the cgroup2 mount in a private mount ns."""
    return [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        'umount /sys/fs/cgroup/unified && exec "$@"',
        "sh",
    ]


class CrunWrapper(SubprocessContender):
    name = "crun-wrapper"
    label = "crun's wrapper alone"
    notes = "unshare -m + umount cgroup2 + exec /bin/true; subtracted from crun for the ratio base"

    def prepare(self) -> None:
        if not shutil.which("unshare"):
            raise Skip("unshare not found: apt-get install util-linux")

    def argv(self, i: int) -> list[str]:
        return wrapper_argv() + ["/bin/true"]


class Bwrap(SubprocessContender):
    name = "bwrap"
    label = "bwrap --unshare-all"

    def __init__(self, rootfs: str) -> None:
        super().__init__()
        self.rootfs = rootfs

    def prepare(self) -> None:
        exe = shutil.which("bwrap")
        if not exe:
            raise Skip("bwrap not found: apt-get install bubblewrap")
        helptext = subprocess.run(
            [exe, "--help"], check=False, capture_output=True, text=True
        ).stdout
        base = [exe, "--unshare-all", "--die-with-parent"]
        if "--tmp-overlay" in helptext and "--overlay-src" in helptext:
            self.cmd = base + ["--overlay-src", self.rootfs, "--tmp-overlay", "/"]
            self.notes = "no limits; tmp overlay"
        else:
            self.cmd = base + ["--ro-bind", self.rootfs, "/", "--tmpfs", "/tmp"]
            self.notes = "no limits; no overlay (bwrap 0.8: ro bind + tmpfs /tmp)"
        self.cmd += ["--proc", "/proc", "--dev", "/dev", "/bin/true"]

    def argv(self, i: int) -> list[str]:
        return self.cmd


class Unshare(OverlaySubprocessContender):
    name = "unshare"
    label = "unshare -fpmuin"

    def __init__(self, ov: Overlays, scratch: str) -> None:
        super().__init__(ov)
        self.target = os.path.join(scratch, "unshare-root")

    def prepare(self) -> None:
        exe = shutil.which("unshare")
        if not exe:
            raise Skip("unshare not found: apt-get install util-linux")
        os.makedirs(self.target)
        helptext = subprocess.run(
            [exe, "--help"], check=False, capture_output=True, text=True
        ).stdout
        if "--root" in helptext:
            self.cmd = [exe, "-fpmuin", "--mount-proc=/proc", f"--root={self.target}", "/bin/true"]
            self.notes = "no limits; chroot into fresh overlay (timed)"
        else:
            self.cmd = [exe, "-fpmuin", "--mount-proc", "/bin/true"]
            self.notes = "no limits; host root (unshare lacks --root), overlay still timed"

    def argv(self, i: int) -> list[str]:
        return self.cmd


# ---- nsmagic contenders


def nsmagic_env() -> tuple[dict, str]:
    """Environment for child processes and where nsmagic comes from."""
    env = dict(os.environ)

    spec = None
    with contextlib.suppress(Exception):
        spec = importlib.util.find_spec("nsmagic")
    if (
        spec is not None
        and spec.origin not in (None, "namespace")
        and not str(spec.origin).startswith(str(REPO) + "/nsmagic")
    ):
        return env, f"installed ({spec.origin})"
    # not installed (or only visible as the source dir): use the source tree
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env, f"source tree {REPO} (PYTHONPATH)"


def short_exc(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:160]


class NsmWarm(Contender):
    name = "nsmagic-warm"
    label = "nsmagic run() in-process"
    notes = "Spec.from_argv + run() timed; busybox root"

    def __init__(self, rootfs: str) -> None:
        super().__init__()
        self.argv = NSM_LIMITS + ["--rootfs", rootfs, "--", "/bin/true"]

    def prepare(self) -> None:
        try:
            # import_module: isort-neutral while nsmagic is half-written
            run = importlib.import_module("nsmagic.core").run
            Spec = importlib.import_module("nsmagic.spec").Spec
        except Exception as e:
            raise Skip(f"nsmagic API not importable yet ({short_exc(e)})") from e
        self.Spec, self.run = Spec, run

    def once(self, i: int) -> int:
        t0 = time.perf_counter_ns()
        spec = self.Spec.from_argv(self.argv)
        result = self.run(spec, out=None, err=None)
        t1 = time.perf_counter_ns()
        code = getattr(result, "exit_code", None)
        if code != 0:
            raise RuntimeError(f"exit_code={code!r} ({result!r})"[:200])
        return t1 - t0

    def between(self) -> None:
        settle_spares()


class NsmCold(SubprocessContender):
    name = "nsmagic-cold"
    label = "nsmagic run (CLI)"
    notes = "fresh Python process; busybox root"

    def __init__(self, rootfs: str, env: dict) -> None:
        super().__init__()
        self.env = env
        bindir = Path(sys.executable).parent
        script = bindir / "nsmagic"
        if script.exists():
            self.prefix = [str(script)]
        else:
            self.prefix = [sys.executable, "-m", "nsmagic"]
            self.notes += "; via python -m nsmagic (no console script)"
        self.cmd = self.prefix + ["run"] + NSM_LIMITS + ["--rootfs", rootfs, "--", "/bin/true"]

    def prepare(self) -> None:
        r = subprocess.run(
            self.cmd,
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )
        if r.returncode != 0:
            tail = (r.stderr.strip() or r.stdout.strip() or "").splitlines()[-1:] or [""]
            raise Skip(
                f"`{' '.join(self.prefix)} run` not runnable yet "
                f"(exit {r.returncode}: {tail[0][:140]})"
            )

    def argv(self, i: int) -> list[str]:
        return self.cmd


class PythonFloor(SubprocessContender):
    name = "python-floor"
    label = "python -c pass (no container)"
    notes = "reference: the start of the interpreter any Python CLI runs in"

    def argv(self, i: int) -> list[str]:
        return [sys.executable, "-c", "pass"]


class NsmCell(Contender):
    name = "nsmagic-cell"
    label = "%%container pass cell"
    notes = "real IPython shell in-process; DEFAULT root (not busybox: cell needs Python)"

    def prepare(self) -> None:
        try:
            from IPython.core.interactiveshell import InteractiveShell
            from traitlets.config import Config
        except Exception as e:
            raise Skip(f"IPython not importable ({short_exc(e)})") from e
        cfg = Config()
        cfg.HistoryManager.hist_file = ":memory:"
        self.ip = InteractiveShell.instance(config=cfg)
        said = io.StringIO()
        try:
            with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
                self.ip.run_line_magic("load_ext", "nsmagic")
        except Exception as e:
            raise Skip(
                f"%load_ext nsmagic fails: nsmagic not importable yet ({short_exc(e)})"
            ) from e
        if "container" not in self.ip.magics_manager.magics.get("cell", {}):
            text = " ".join(said.getvalue().split())[:140] or "no message"
            raise Skip(f"%load_ext nsmagic did not register %%container yet ({text})")

    def line(self, i: int) -> str:
        return CELL_LINE

    def once(self, i: int) -> int:
        sink_o, sink_e = io.StringIO(), io.StringIO()
        line = self.line(i)
        with contextlib.redirect_stdout(sink_o), contextlib.redirect_stderr(sink_e):
            t0 = time.perf_counter_ns()
            self.ip.run_cell_magic("container", line, "pass")
            t1 = time.perf_counter_ns()
        return t1 - t0

    def between(self) -> None:
        settle_spares()


class NsmCellNew(NsmCell):
    name = "nsmagic-cell-new"
    label = "%%container cell, not made ahead"
    notes = "as above, only PID 1 made ahead: a first cell, or new options"

    def once(self, i: int) -> int:
        launcher = importlib.import_module("nsmagic.runtime.launcher")
        launcher.READY_SPARES = False
        try:
            return super().once(i)
        finally:
            launcher.READY_SPARES = True


def settle_spares() -> None:
    """What a notebook has between two cells: time for nsmagic to make the next run's
    spare (a PID 1 joined to its cgroup; for a Python cell, its whole container). Without
    this pause that background work would be timed in whichever contender runs next."""
    importlib.import_module("nsmagic.runtime.spares").settle()


# --------------------------------------------------------------------------
# extras


LOAD_EXT_CHILD = r"""
import json, sys, time
t0 = time.perf_counter_ns()
from IPython.testing.globalipapp import start_ipython
ip = start_ipython()
t1 = time.perf_counter_ns()
err = None
if sys.argv[1] == "ext":
    try:
        import contextlib, io
        said = io.StringIO()
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            ip.run_line_magic("load_ext", "nsmagic")
        if "container" not in ip.magics_manager.magics.get("cell", {}):
            text = " ".join(said.getvalue().split())[:140] or "no message"
            err = f"%load_ext nsmagic did not register %%container yet ({text})"
    except Exception as e:
        err = f"{type(e).__name__}: {e}"
t2 = time.perf_counter_ns()
print(json.dumps({"start": t1 - t0, "ext": t2 - t1, "err": err}))
"""


def measure_load_ext(env: dict, n: int) -> dict:
    """Fresh process each time; alternates 'ext' and 'plain' runs."""
    res: dict = {"ext_total": [], "ext_only": [], "plain": [], "err": None}
    for i in range(n + 1):  # first pair is warm-up (page cache, .pyc)
        for mode in ("ext", "plain") if i % 2 == 0 else ("plain", "ext"):
            r = subprocess.run(
                [sys.executable, "-c", LOAD_EXT_CHILD, mode],
                check=False,
                env=env,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=120,
                cwd="/",
            )
            if r.returncode != 0:
                res["err"] = diagnose_text(r)
                return res
            d = json.loads(r.stdout.strip().splitlines()[-1])
            if d["err"]:
                res["err"] = d["err"]
                return res
            if i == 0:
                continue
            if mode == "ext":
                res["ext_total"].append(d["start"] + d["ext"])
                res["ext_only"].append(d["ext"])
            else:
                res["plain"].append(d["start"])
    return res


def diagnose_text(r: subprocess.CompletedProcess) -> str:
    text = (r.stderr.strip() or r.stdout.strip() or "(no output)").splitlines()
    return f"exit {r.returncode}: {text[-1][:200]}"


def proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) for every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1 : s.rindex(")")]
        fields = s[s.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        out[int(d)] = (int(fields[1]), comm)
    return out


def descendants(root: int, table: dict[int, tuple[int, str]]) -> set[int]:
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, stack = set(), [root]
    while stack:
        p = stack.pop()
        for c in kids.get(p, []):
            if c not in out:
                out.add(c)
                stack.append(c)
    return out


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def readlink(p: str) -> str:
    try:
        return os.readlink(p)
    except OSError:
        return ""


def nsmagic_cgroups() -> set[str]:
    found = set()
    base = "/sys/fs/cgroup"
    for ctrl in os.listdir(base):
        top = os.path.join(base, ctrl)
        if not os.path.isdir(top):
            continue
        for dirpath, dirnames, _ in os.walk(top):
            for d in dirnames:
                if "nsmagic" in d:
                    found.add(os.path.join(dirpath, d))
    return found


def ns_of(pid: int, kind: str) -> str:
    return readlink(f"/proc/{pid}/ns/{kind}")


def memcg_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                parts = line.rstrip("\n").split(":", 2)
                if "memory" in parts[1].split(",") or (parts[0] == "0" and parts[2] != "/"):
                    return line.strip()
    except OSError:
        pass
    return ""


def hundred(rootfs: str, n: int) -> dict:
    """Start n nsmagic containers running sleep 30; time, memory, clean stop."""
    res: dict = {"n": n}
    try:
        start = importlib.import_module("nsmagic.core").start
        Spec = importlib.import_module("nsmagic.spec").Spec
    except Exception as e:  # noqa: BLE001
        res["err"] = f"nsmagic start() API not importable yet ({short_exc(e)})"
        return res
    argv = NSM_LIMITS + ["--rootfs", rootfs, "--", "/bin/sleep", "30"]
    me = os.getpid()
    gc.collect()
    time.sleep(0.5)
    before_pids = set(proc_table())
    before_cg = nsmagic_cgroups()
    before_mounts = {mp for mp, _ in mountpoints() if "nsmagic" in mp}
    tracked: set[int] = set()
    names: set[str] = set()
    own_before = pss_kib(me)
    avail_before = mem_available_kib()
    handles = []
    try:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            handles.append(start(Spec.from_argv(argv), out=None, err=None))
        t1 = time.perf_counter_ns()
        res["start_all_s"] = (t1 - t0) / 1e9
        time.sleep(1.5)  # let every container reach its idle state
        gc.collect()
        table = proc_table()
        mine = descendants(me, table)
        new = {p for p in table if p not in before_pids}
        own_pidns = ns_of(me, "pid")
        # workload: the `sleep` processes in a pid namespace other than ours
        workload = {p for p in new if table[p][1] == "sleep" and ns_of(p, "pid") != own_pidns}
        w_net = {ns_of(p, "net") for p in workload}
        w_pid = {ns_of(p, "pid") for p in workload}
        w_cg = {memcg_of(p) for p in workload}
        # nsmagic's helpers: new processes that are our descendants or share a
        # container's net ns, pid ns or memory cgroup (catches daemonized helpers,
        # but not unrelated processes that happen to start meanwhile)
        cand = {
            p
            for p in new
            if p in mine
            or ns_of(p, "net") in w_net
            or ns_of(p, "pid") in w_pid
            or memcg_of(p) in w_cg
        }
        tracked = cand | workload
        # names of the containers' cgroups, to tell ours from other nsmagic users'
        names = {c.rsplit("/", 1)[-1] for c in w_cg if c}
        helpers = cand - workload
        res["workload_procs"] = len(workload)
        res["helper_procs"] = len(helpers)
        comms: dict[str, int] = {}
        for p in helpers:
            comms[table[p][1]] = comms.get(table[p][1], 0) + 1
        res["helper_comms"] = comms
        res["distinct_netns"] = len(w_net)
        res["distinct_cgroups"] = len(w_cg)
        helper_pss = sum(pss_kib(p) for p in helpers)
        workload_pss = sum(pss_kib(p) for p in workload)
        own_after = pss_kib(me)
        avail_after = mem_available_kib()
        res["helper_pss_kib"] = helper_pss
        res["workload_pss_kib"] = workload_pss
        res["own_pss_delta_kib"] = own_after - own_before
        # own delta may be negative (pages now shared with forked helpers): keep the sign
        res["per_container_mib"] = (helper_pss + own_after - own_before) / n / 1024
        res["memavail_delta_kib"] = avail_before - avail_after
        res["per_container_memavail_mib"] = (avail_before - avail_after - workload_pss) / n / 1024
    except Exception as e:  # noqa: BLE001
        res["err"] = f"during start/measure: {short_exc(e)}"
        res["trace"] = traceback.format_exc()
    finally:
        t2 = time.perf_counter_ns()
        stop_errs = []
        for h in handles:
            try:
                h.stop()
            except Exception as e:  # noqa: BLE001
                stop_errs.append(short_exc(e))
        for h in handles:
            try:
                h.wait()
                if hasattr(h, "close"):  # nsmagic's Run: close() removes the cgroup
                    h.close()
            except Exception as e:  # noqa: BLE001
                stop_errs.append(short_exc(e))
        res["stop_all_s"] = (time.perf_counter_ns() - t2) / 1e9
        res["stop_errors"] = stop_errs[:5]
        res["stop_error_count"] = len(stop_errs)
    # leftovers: cgroups, processes, mounts (compared with before the test),
    # right after stop+wait+close and again after a grace period if needed
    for when, pause in (("immediately", 0.2), ("after 3 s", 3.0)):
        time.sleep(pause)
        left = leftovers(me, before_pids, before_cg, before_mounts, tracked, names)
        res[f"leftovers_{when}"] = left
        if not (left["cgroups"] or left["procs"] or left["mounts"]):
            break
    # the benchmark cleans what nsmagic left in its name (empty cgroups only)
    res["swept_cgroups"] = sweep_cgroups(f"nsmagic-{me}-")
    return res


def leftovers(
    me: int, before_pids: set, before_cg: set, before_mounts: set, tracked: set, names: set
) -> dict:
    """What this test's containers left: cgroups named after this process or after a
    container's cgroup (other nsmagic users on the machine are not counted), processes
    that were ours, nsmagic mounts."""
    spares = ready_spares()   # the next run's PID 1, kept ready by design: not a leftover
    table = proc_table()
    started = {p for p in table if p not in before_pids}
    mine = descendants(me, table)
    procs = sorted(p for p in started if (p in mine or p in tracked)
                   and table[p][1] != "nsmagic-spare")
    return {
        "cgroups": sorted(
            c
            for c in nsmagic_cgroups() - before_cg
            if (os.path.basename(c).startswith(f"nsmagic-{me}-") or os.path.basename(c) in names)
            and os.path.basename(c) not in spares
        ),
        "procs": [f"{p} {table[p][1]}" for p in procs],
        "mounts": sorted({mp for mp, _ in mountpoints() if "nsmagic" in mp} - before_mounts),
    }


# --------------------------------------------------------------------------
# reporting


def ms(ns: float) -> float:
    return ns / 1e6


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def verdict(value: float, limit: float, unit: str, scale_ms: float | None = None) -> str:
    """PASS/MISS for value <= limit; scale_ms converts a ratio to ms for the margin."""
    if value <= limit:
        tag = "PASS"
        diff = limit - value
        word = "under"
    else:
        tag = "MISS"
        diff = value - limit
        word = "over"
    pct = diff / limit * 100 if limit else 0.0
    if scale_ms is not None:
        return f"{tag} ({diff:.2f}x = {diff * scale_ms:.1f} ms {word}, {pct:.0f}%)"
    return f"{tag} ({diff:.2f} {unit} {word}, {pct:.0f}%)"


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    right = {1, 2, 3, 4, 5}

    def line(r: list[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)
        ).rstrip()

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


# --------------------------------------------------------------------------
# main


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="names for --only: " + ", ".join(ALL_CONTENDERS + ALL_EXTRAS),
    )
    ap.add_argument("--runs", type=int, default=50, help="timed runs per contender (50)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs per contender first (3)")
    ap.add_argument("--only", default="", help="comma list of contender/extra names")
    ap.add_argument("--json", metavar="FILE", help="also write raw results as JSON")
    ap.add_argument("--containers", type=int, default=100, help="containers for 'hundred'")
    ap.add_argument("--load-ext-runs", type=int, default=10)
    args = ap.parse_args()

    wanted = set(ALL_CONTENDERS + ALL_EXTRAS)
    if args.only:
        wanted = {w.strip() for w in args.only.split(",") if w.strip()}
        bad = wanted - set(ALL_CONTENDERS + ALL_EXTRAS)
        if bad:
            ap.error(f"unknown names {sorted(bad)}; known: {ALL_CONTENDERS + ALL_EXTRAS}")
        if "crun" in wanted:
            wanted.add("crun-wrapper")
    if os.geteuid() != 0:
        print("startup.py needs root (namespaces, cgroups, overlay mounts)", file=sys.stderr)
        return 2
    if not os.path.exists(BUSYBOX):
        print(f"{BUSYBOX} missing: apt-get install busybox-static", file=sys.stderr)
        return 2

    # SIGTERM/SIGHUP behave like Ctrl-C so the finally blocks clean up
    def _term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGHUP, _term)

    layout = cgroup_layout()
    tag = f"nsbench-{os.getpid()}"
    results: dict = {"meta": {}, "contenders": {}, "extras": {}}
    with contextlib.ExitStack() as stack:
        scratch = tempfile.mkdtemp(prefix="nsbench-")
        stack.callback(remove_scratch, scratch)
        rootfs = os.path.join(scratch, "rootfs")
        build_rootfs(rootfs)
        ov = Overlays(rootfs, os.path.join(scratch, "layers"))
        os.mkdir(ov.scratch)
        stack.callback(ov.cleanup)
        stack.callback(sweep_cgroups, tag)  # after the runtimes' own delete (LIFO)
        stack.callback(final_nsmagic_sweep)
        env, nsm_origin = nsmagic_env()

        contenders: list[Contender] = []
        if "nsmagic-warm" in wanted:
            contenders.append(NsmWarm(rootfs))
        if "nsmagic-cold" in wanted:
            contenders.append(NsmCold(rootfs, env))
        if "nsmagic-cell" in wanted:
            contenders.append(NsmCell())
        if "nsmagic-cell-new" in wanted:
            contenders.append(NsmCellNew())
        if "python-floor" in wanted:
            contenders.append(PythonFloor())
        crun = runc = None
        if "crun" in wanted:
            crun = OCI("crun", ov, scratch, tag, wrap=(layout == "hybrid"))
            contenders.append(crun)
        if "crun-wrapper" in wanted and layout == "hybrid":
            contenders.append(CrunWrapper())
        if "runc" in wanted:
            runc = OCI("runc", ov, scratch, tag, wrap=False)
            contenders.append(runc)
        if "bwrap" in wanted:
            contenders.append(Bwrap(rootfs))
        if "unshare" in wanted:
            contenders.append(Unshare(ov, scratch))
        if "overlay" in wanted:
            ovt = os.path.join(scratch, "overlay-only")
            os.mkdir(ovt)
            contenders.append(OverlayOnly(ov, ovt))
        for c in contenders:
            stack.callback(c.cleanup)
        # last registered runs first: ignore further Ctrl-C while cleaning up
        stack.callback(signal.signal, signal.SIGINT, signal.SIG_IGN)

        meta = results["meta"]
        meta.update(
            {
                "kernel": platform.release(),
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "cgroup_layout": layout,
                "runs": args.runs,
                "warmup": args.warmup,
                "nsmagic_origin": nsm_origin,
                "rootfs": rootfs,
                "busybox": tool_version([BUSYBOX]),
                "crun": tool_version(["crun", "--version"]) if shutil.which("crun") else None,
                "runc": tool_version(["runc", "--version"]) if shutil.which("runc") else None,
                "bwrap": tool_version(["bwrap", "--version"]) if shutil.which("bwrap") else None,
                "unshare": tool_version(["unshare", "--version"]),
            }
        )
        print(
            f"# nsmagic start-up benchmark  kernel {meta['kernel']}  {meta['cpus']} cpus  "
            f"python {meta['python']}  cgroups {layout}"
        )
        meta["loadavg_start"] = loadavg()
        print(f"# nsmagic from: {nsm_origin}; load average at start {meta['loadavg_start']}")
        print(f"# peers: {meta['crun']}; {meta['runc']}; {meta['bwrap']}; {meta['unshare']}")
        print(f"# busybox root built at {rootfs} ({meta['busybox']})")

        # prepare + warm-up
        active: list[Contender] = []
        for c in contenders:
            try:
                c.prepare()
                for w in range(args.warmup):
                    c.once(-1 - w)
                active.append(c)
            except Skip as e:
                c.status, c.reason = "skipped", str(e)
            except Exception as e:  # noqa: BLE001
                c.status, c.reason = "failed", f"warm-up failed: {short_exc(e)}"
            log(f"  {c.name}: {c.status} {c.reason}")

        # verify limits once (untimed) for the OCI runtimes
        verify_lines = []
        for oci in (crun, runc):
            if oci is not None and oci.status == "ok":
                try:
                    oci.verify_result = oci.verify()
                except Exception as e:  # noqa: BLE001
                    oci.verify_result = f"check failed: {short_exc(e)}"
                verify_lines.append(f"{oci.tool}: {oci.verify_result}")

        # timed, round-robin, start position rotating each round
        log(f"timing {len(active)} contenders x {args.runs} runs, round-robin ...")
        for r in range(args.runs):
            k = r % max(1, len(active))
            for c in active[k:] + active[:k]:
                if c.status != "ok":
                    continue
                try:
                    c.ns.append(c.once(r))
                    c.between()
                except Exception as e:  # noqa: BLE001
                    c.status = "failed"
                    c.reason = f"run {r} failed: {short_exc(e)}"
                    log(f"  {c.name}: {c.reason}")
            if (r + 1) % 10 == 0:
                log(f"  round {r + 1}/{args.runs}")

        for c in contenders:
            results["contenders"][c.name] = {
                "label": c.label,
                "status": c.status,
                "reason": c.reason,
                "notes": c.notes,
                "ns": c.ns,
            }

        # extras
        if "load-ext" in wanted:
            log("measuring %load_ext nsmagic in fresh processes ...")
            results["extras"]["load_ext"] = measure_load_ext(env, args.load_ext_runs)
        if "hundred" in wanted:
            log(f"starting {args.containers} nsmagic containers ...")
            results["extras"]["hundred"] = hundred(rootfs, args.containers)

        meta["loadavg_end"] = loadavg()
        print(
            f"# load average at end {meta['loadavg_end']} (other work on this machine adds noise)"
        )
        report(results, contenders, crun, verify_lines, layout, args)
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
            print(f"# raw results written to {args.json}")
    return 0


def ready_spares() -> set:
    """Group names of this process's ready spares (nsmagic keeps one PID 1 ready per kind
    of run, joined to its cgroup, and drops it at exit)."""
    try:
        from nsmagic.runtime.spares import settle
    except ImportError:
        return set()
    return settle()


def final_nsmagic_sweep() -> None:
    """Report (and remove, if empty) cgroups nsmagic left under this process's name, after
    nsmagic's own exit handler has dropped its spares."""
    try:
        from nsmagic.runtime.spares import Spares
        Spares.drop_all()
    except ImportError:
        pass
    tag = f"nsmagic-{os.getpid()}-"
    left = [c for c in nsmagic_cgroups() if os.path.basename(c).startswith(tag)]
    if left:
        gone = sweep_cgroups(tag)
        print(
            f"# at exit {len(left)} cgroups named {tag}* were left by nsmagic; removed {gone}",
            file=sys.stderr,
        )


def loadavg() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def sweep_cgroups(tag: str) -> int:
    """rmdir empty cgroups whose name starts with tag (what a killed crun/runc, or
    nsmagic under test, left behind for this run); returns how many went."""
    base = "/sys/fs/cgroup"
    removed = 0
    for ctrl in os.listdir(base):
        top = os.path.join(base, ctrl)
        if not os.path.isdir(top):
            continue
        for dirpath, dirnames, _ in os.walk(top, topdown=False):
            for d in dirnames:
                if d.startswith(tag):
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.join(dirpath, d))
                        removed += 1
    return removed


def remove_scratch(scratch: str) -> None:
    left = [mp for mp, _ in mountpoints() if mp == scratch or mp.startswith(scratch + "/")]
    for mp in sorted(left, key=len, reverse=True):
        with contextlib.suppress(OSError):
            umount(mp, detach=True)
    left = [mp for mp, _ in mountpoints() if mp == scratch or mp.startswith(scratch + "/")]
    if left:
        print(f"# WARNING: mounts remain under {scratch}, not removing it: {left}", file=sys.stderr)
        return
    shutil.rmtree(scratch, ignore_errors=True)


def report(
    results: dict,
    contenders: list[Contender],
    crun: OCI | None,
    verify_lines: list[str],
    layout: str,
    args: argparse.Namespace,
) -> None:
    stats: dict[str, dict] = {}
    for c in contenders:
        if c.ns:
            stats[c.name] = {
                "median": ms(statistics.median(c.ns)),
                "min": ms(min(c.ns)),
                "max": ms(max(c.ns)),
                "n": len(c.ns),
            }
    base = None
    base_desc = "no crun baseline"
    if "crun" in stats:
        base = stats["crun"]["median"]
        base_desc = f"crun median {base:.1f} ms"
        if "crun-wrapper" in stats:
            base = stats["crun"]["median"] - stats["crun-wrapper"]["median"]
            base_desc = (
                f"crun median minus wrapper median = {stats['crun']['median']:.1f} - "
                f"{stats['crun-wrapper']['median']:.1f} = {base:.1f} ms"
            )
    results["meta"]["ratio_base_ms"] = base
    results["meta"]["stats"] = stats

    rows = []
    for c in contenders:
        s = stats.get(c.name)
        if s and c.status == "ok":
            ratio = f"{s['median'] / base:.2f}" if base else "-"
            rows.append(
                [
                    c.label,
                    fmt_ms(s["median"]),
                    fmt_ms(s["min"]),
                    fmt_ms(s["max"]),
                    str(s["n"]),
                    ratio,
                    c.notes,
                ]
            )
        else:
            partial = f" ({len(c.ns)} runs done)" if c.ns else ""
            rows.append(
                [
                    c.label,
                    "-",
                    "-",
                    "-",
                    str(len(c.ns)),
                    "-",
                    f"{c.status.upper()}: {c.reason}{partial}",
                ]
            )
    print()
    print(
        f"## start to exit of /bin/true, {args.runs} runs each after {args.warmup} warm-up, "
        f"round-robin; times in ms; x crun = median / ({base_desc})"
    )
    print_table(rows, ["contender", "median", "min", "max", "runs", "x crun", "notes"])
    print()
    print("notes:")
    print(
        "  * all contenders: new pid+mount+uts+ipc+net namespaces; nsmagic/crun/runc also "
        f"memory {MEM_BYTES} B + pids {PIDS}; busybox root unless noted."
    )
    print(
        "  * crun/runc/unshare: 'fresh overlay' = mkdir upper+work, mount overlay, run, umount, "
        "rm -r upper, all INSIDE the timed region (nsmagic's time includes its overlay)."
    )
    if crun is not None and crun.wrap:
        print(
            "  * crun 1.8 refuses this hybrid cgroup layout, so it ran as `unshare -m "
            "--propagation private sh -c 'umount /sys/fs/cgroup/unified && exec crun run "
            "...'` (limits still enforced, v1 controllers); the wrapper alone is the "
            "'crun's wrapper alone' row and is subtracted from crun's median for the ratio "
            "base."
        )
    for v in verify_lines:
        print(f"  * limits check (untimed) {v}")
    print(
        f"  * nsmagic contenders pass `{' '.join(NSM_LIMITS)}`; cell line "
        f"`%%container {CELL_LINE}`."
    )

    # extras
    ex = results["extras"]
    targets = []

    def ratio_target(name: str, label: str, limit: float) -> None:
        if name not in stats or base is None:
            why = "not measured" if name not in stats else "no crun baseline"
            targets.append(f"{label:<34} <= {limit:.1f} x crun: n/a ({why})")
            return
        r = stats[name]["median"] / base
        targets.append(
            f"{label:<34} <= {limit:.1f} x crun: {r:.2f} x "
            f"({stats[name]['median']:.1f} ms vs {limit * base:.1f} ms) "
            f"{verdict(r, limit, 'x', scale_ms=base)}"
        )

    ratio_target("nsmagic-warm", "nsmagic warm median", TARGET_WARM)
    ratio_target("nsmagic-cell", "%%container pass cell median", TARGET_CELL)
    ratio_target("nsmagic-cold", "nsmagic run (cold) median", TARGET_COLD)

    if "load_ext" in ex:
        le = ex["load_ext"]
        print()
        if le.get("err"):
            print(f"## %load_ext nsmagic: not measured: {le['err']}")
            targets.append(
                f"{'%load_ext nsmagic':<34} < {TARGET_LOAD_EXT_MS:.0f} ms: n/a "
                "(nsmagic extension not loadable yet)"
            )
        else:
            own = ms(statistics.median(le["ext_only"]))
            diff = ms(statistics.median(le["ext_total"]) - statistics.median(le["plain"]))
            plain = ms(statistics.median(le["plain"]))
            le["summary_ms"] = {"load_ext_own": own, "total_minus_plain": diff, "plain": plain}
            print(
                f"## %load_ext nsmagic in a fresh process, median of {len(le['ext_only'])}: "
                f"{own:.1f} ms (load_ext timed alone after start_ipython); cross-check "
                f"median(start_ipython+load_ext) - median(plain start_ipython {plain:.1f} ms)"
                f" = {diff:.1f} ms (noisy: difference of two large medians)"
            )
            targets.append(
                f"{'%load_ext nsmagic':<34} < {TARGET_LOAD_EXT_MS:.0f} ms: "
                f"{own:.1f} ms {verdict(own, TARGET_LOAD_EXT_MS, 'ms')}"
            )
    if "hundred" in ex:
        h = ex["hundred"]
        print()
        n = h["n"]
        if h.get("err") and "start_all_s" not in h:
            print(f"## {n} containers: not measured: {h['err']}")
            targets.append(f"{f'{n} containers started':<34} < {TARGET_HUNDRED_S:.0f} s: n/a")
            targets.append(
                f"{'memory per idle container':<34} < {TARGET_PER_CONTAINER_MIB:.0f} MiB: n/a"
            )
        else:
            print(
                f"## {n} nsmagic containers running `sleep 30` (busybox root, own cgroup "
                "and net namespace each)"
            )
            if h.get("err"):
                print(f"  ERROR {h['err']}")
            print(
                f"  start all: {h['start_all_s']:.2f} s; stop+wait all: "
                f"{h.get('stop_all_s', 0):.2f} s; stop errors: {h.get('stop_error_count')}"
                f" {h.get('stop_errors') or ''}"
            )
            if "per_container_mib" in h:
                print(
                    f"  workload processes: {h['workload_procs']} (distinct net ns "
                    f"{h['distinct_netns']}, distinct cgroups {h['distinct_cgroups']}); "
                    f"nsmagic helper processes: {h['helper_procs']} {h['helper_comms']}"
                )
                print(
                    f"  memory per container (method: PSS from /proc/<pid>/smaps_rollup of "
                    f"all new non-workload processes started by nsmagic + PSS growth of "
                    f"this process, / {n}): {h['per_container_mib']:.3f} MiB "
                    f"[helpers {h['helper_pss_kib']} KiB, this process "
                    f"{h['own_pss_delta_kib']:+d} KiB, workload PSS {h['workload_pss_kib']}"
                    f" KiB excluded]"
                )
                print(
                    f"  cross-check incl. kernel objects (MemAvailable drop "
                    f"{h['memavail_delta_kib']} KiB minus workload PSS, / {n}): "
                    f"{h['per_container_memavail_mib']:.3f} MiB"
                )
            clean = True
            for when in ("immediately", "after 3 s"):
                left = h.get(f"leftovers_{when}")
                if left is None:
                    continue
                clean = not (left["cgroups"] or left["procs"] or left["mounts"])
                print(
                    f"  after stop+wait+close, {when}: {'CLEAN' if clean else 'LEFTOVERS'}: "
                    f"{len(left['cgroups'])} cgroups {left['cgroups'][:3]}, "
                    f"{len(left['procs'])} processes {left['procs'][:5]}, "
                    f"mounts {left['mounts'][:3]}"
                )
            if h.get("swept_cgroups"):
                print(f"  the benchmark removed {h['swept_cgroups']} empty nsmagic cgroups left")
            targets.append(
                f"{f'{n} containers started':<34} < {TARGET_HUNDRED_S:.0f} s: "
                f"{h['start_all_s']:.2f} s "
                f"{verdict(h['start_all_s'], TARGET_HUNDRED_S, 's')}"
            )
            if "per_container_mib" in h:
                v = h["per_container_mib"]
                targets.append(
                    f"{'memory per idle container':<34} < "
                    f"{TARGET_PER_CONTAINER_MIB:.0f} MiB: {v:.2f} MiB "
                    f"{verdict(v, TARGET_PER_CONTAINER_MIB, 'MiB')}"
                )
            targets.append(
                f"{'clean after stopping all':<34}: "
                + ("PASS" if clean else "MISS (still left after 3 s; listed above)")
            )
    print()
    print("## targets")
    for t in targets:
        print(f"  {t}")
    results["targets"] = targets


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up", file=sys.stderr)
        sys.exit(130)
