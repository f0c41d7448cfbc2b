"""The contenders of the start-up benchmark, one small class each.

Each does the same work where it can (start to exit of /bin/true in new pid, mount, uts, ipc
and net namespaces, 100 MiB memory and 64 pids limits, a fresh overlay upper layer over the
busybox root) and says in its notes what it does not. `prepare()` raises Skip with a
one-sentence reason when the contender is not installed or cannot start here."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import peers
from fixtures import CELL_LINE, MEM_BYTES, NSM_LIMITS, PIDS, Overlays, Scene, settle_spares

ORDER = ["nsmagic-warm", "nsmagic-cold", "nsmagic-cell", "nsmagic-cell-new", "python-floor",
         "crun", "crun-wrapper", "runc", "docker", "podman", "bwrap", "unshare", "overlay"]


class Skip(Exception):
    """The contender cannot run here; the message says why."""


class Contender:
    name = ""
    label = ""
    notes = ""

    def __init__(self) -> None:
        self.ns: list[int] = []
        self.status = "ok"  # ok | skipped | failed
        self.reason = ""
        self.verify_result = ""

    def prepare(self) -> None:
        """Raise Skip if unavailable."""

    def once(self, i: int) -> int:
        """One timed run; returns elapsed ns.  Raise on failure."""
        raise NotImplementedError

    def between(self) -> None:
        """Untimed, after each run: what happens before the next one comes."""

    def verify(self) -> str | None:
        """Untimed, once: run a shell in the same config and say whether the limits hold."""
        return None

    def cleanup(self) -> None:
        pass


def contenders(wanted: set[str], scene: Scene) -> list[Contender]:
    """The wanted contenders, in the table's order (crun brings its wrapper on hybrid)."""
    ov, scratch = scene.overlays, scene.scratch
    make = {
        "nsmagic-warm": lambda: NsmWarm(scene.rootfs),
        "nsmagic-cold": lambda: NsmCold(scene.rootfs, scene.env),
        "nsmagic-cell": NsmCell,
        "nsmagic-cell-new": NsmCellNew,
        "python-floor": PythonFloor,
        "crun": lambda: OCI("crun", ov, scratch, scene.tag, wrap=scene.layout == "hybrid"),
        "crun-wrapper": lambda: CrunWrapper() if scene.layout == "hybrid" else None,
        "runc": lambda: OCI("runc", ov, scratch, scene.tag, wrap=False),
        "docker": Docker,
        "podman": Podman,
        "bwrap": lambda: Bwrap(scene.rootfs),
        "unshare": lambda: Unshare(ov, scratch),
        "overlay": lambda: OverlayOnly(ov, scratch),
    }
    made = (make[name]() for name in ORDER if name in wanted)
    return [c for c in made if c is not None]


# ---- running a command


def run_quiet(argv: list[str], cwd: str | None = None, env: dict | None = None) -> int:
    return subprocess.run(argv, check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, cwd=cwd, env=env).returncode


def diagnose(argv: list[str], cwd: str | None = None, env: dict | None = None) -> str:
    r = subprocess.run(argv, check=False, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, cwd=cwd, env=env, timeout=60)
    text = (r.stderr.strip() or r.stdout.strip() or "(no output)").splitlines()
    return f"exit {r.returncode}: " + " | ".join(text[-3:])


def short_exc(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:160]


class SubprocessContender(Contender):
    cwd: str | None = None
    env: dict | None = None

    def argv(self, i: int) -> list[str]:
        raise NotImplementedError

    def once(self, i: int) -> int:
        argv = self.argv(i)
        t0 = time.perf_counter_ns()
        rc = run_quiet(argv, self.cwd, self.env)
        t1 = time.perf_counter_ns()
        if rc != 0:
            raise RuntimeError(diagnose(self.argv(i), self.cwd, self.env))
        return t1 - t0


class OverlaySubprocessContender(SubprocessContender):
    """Timed region: mkdir upper/work + mount overlay + command + umount + rm."""

    target = ""

    def __init__(self, ov: Overlays) -> None:
        super().__init__()
        self.ov = ov

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


# ---- references


class OverlayOnly(OverlaySubprocessContender):
    name = "overlay"
    label = "ref: fresh overlay alone"
    notes = "mkdir+mount+umount+rm of the upper layer; included in crun/runc/unshare rows"

    def __init__(self, ov: Overlays, scratch: str) -> None:
        super().__init__(ov)
        self.target = os.path.join(scratch, "overlay-only")
        os.mkdir(self.target)

    def once(self, i: int) -> int:
        t0 = time.perf_counter_ns()
        layer = self.ov.fresh(self.target)
        self.ov.drop(self.target, layer)
        return time.perf_counter_ns() - t0


class PythonFloor(SubprocessContender):
    name = "python-floor"
    label = "python -c pass (no container)"
    notes = "reference: the start of the interpreter any Python CLI runs in"

    def argv(self, i: int) -> list[str]:
        return [sys.executable, "-c", "pass"]


# ---- OCI runtimes


VERIFY_SCRIPT = (
    'echo "pid=$$ host=$(hostname)"; '
    "for f in /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max "
    "/sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max; do "
    '[ -r $f ] && echo "$f=$(cat $f)"; done; '
    "grep -E ':(memory|pids):|^0::' /proc/self/cgroup"
)


def judge_verify(out: str, err: str, rc: int) -> str:
    """What VERIFY_SCRIPT printed, judged: PID 1, the memory and pids limits."""
    if rc != 0:
        return f"FAILED (exit {rc}: {err.strip() or out.strip()})"
    vals: dict[str, str] = {}
    cgs = []
    for line in out.splitlines():
        if "=" in line and line.startswith("/sys/"):
            k, v = line.split("=", 1)
            vals[k] = v
        elif line.startswith("pid="):
            vals["pid"] = line
        elif ":" in line:
            cgs.append(line.strip())
    mem = (vals.get("/sys/fs/cgroup/memory/memory.limit_in_bytes")
           or vals.get("/sys/fs/cgroup/memory.max"))
    pids = vals.get("/sys/fs/cgroup/pids/pids.max") or vals.get("/sys/fs/cgroup/pids.max")
    ok = mem == str(MEM_BYTES) and pids == str(PIDS) and "pid=1 " in vals.get("pid", "") + " "
    verdict = "limits applied" if ok else "LIMITS NOT SEEN"
    return (f"{verdict}: memory limit={mem} pids.max={pids} {vals.get('pid', '')}; "
            f"cgroups {'; '.join(cgs)}")


def wrapper_argv() -> list[str]:
    """crun 1.8 refuses a hybrid layout; hide the cgroup2 mount in a private mount ns."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            'umount /sys/fs/cgroup/unified && exec "$@"', "sh"]


class OCI(OverlaySubprocessContender):
    """crun / runc on a bundle whose rootfs is a fresh overlay per run."""

    def __init__(self, tool: str, ov: Overlays, scratch: str, tag: str, wrap: bool) -> None:
        super().__init__(ov)
        self.tool = self.name = tool
        self.wrap, self.tag = wrap, tag
        self.bundle = os.path.join(scratch, f"bundle-{tool}")
        self.vbundle = os.path.join(scratch, f"bundle-{tool}-verify")
        self.target = os.path.join(self.bundle, "rootfs")
        self.ids: list[str] = []
        self.state = f"/run/{tool}"   # its containers' state (fixtures.scene removes it if new)
        self.label = f"{tool} run (in wrapper)" if wrap else f"{tool} run"
        self.notes = "overlay mount+umount timed" + ("; wrapper: see note" if wrap else "")

    def prepare(self) -> None:
        self.exe = shutil.which(self.tool)
        if not self.exe:
            raise Skip(f"{self.tool} not found: apt-get install {self.tool}")
        for b in (self.bundle, self.vbundle):
            os.makedirs(os.path.join(b, "rootfs"))
        r = subprocess.run([self.exe, "spec"], check=False, cwd=self.bundle,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Skip(f"{self.tool} spec failed: {r.stderr.strip()}")
        cfg = json.loads(Path(self.bundle, "config.json").read_text())
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = ["/bin/true"]
        cfg["root"] = {"path": self.target, "readonly": False}
        cfg["hostname"] = "bench"
        lin = cfg.setdefault("linux", {})
        lin["namespaces"] = [{"type": t} for t in ("pid", "mount", "uts", "ipc", "network")]
        lin["resources"] = {"memory": {"limit": MEM_BYTES}, "pids": {"limit": PIDS}}
        lin.pop("cgroupsPath", None)
        Path(self.bundle, "config.json").write_text(json.dumps(cfg, indent=1))
        # the verification bundle: the same config, a shell that reports its limits
        cfg["root"]["path"] = os.path.join(self.vbundle, "rootfs")
        cfg["process"]["args"] = ["/bin/sh", "-c", VERIFY_SCRIPT]
        Path(self.vbundle, "config.json").write_text(json.dumps(cfg, indent=1))

    def _cmd(self, argv: list[str]) -> list[str]:
        return wrapper_argv() + argv if self.wrap else argv

    def argv(self, i: int) -> list[str]:
        cid = f"{self.tag}-{self.tool}-{i}"
        self.ids.append(cid)
        return self._cmd([self.exe, "run", "--bundle", self.bundle, cid])

    def verify(self) -> str:
        cid = f"{self.tag}-{self.tool}-verify"
        self.ids.append(cid)
        target = os.path.join(self.vbundle, "rootfs")
        layer = self.ov.fresh(target)
        try:
            r = subprocess.run(self._cmd([self.exe, "run", "--bundle", self.vbundle, cid]),
                               check=False, stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=60)
        finally:
            self.ov.drop(target, layer)
        return judge_verify(r.stdout, r.stderr, r.returncode)

    def cleanup(self) -> None:
        for cid in self.ids:
            if os.path.exists(os.path.join(self.state, cid)):
                run_quiet(self._cmd([self.exe, "delete", "-f", cid]))


class CrunWrapper(SubprocessContender):
    name = "crun-wrapper"
    label = "crun's wrapper alone"
    notes = "unshare -m + umount cgroup2 + exec /bin/true; subtracted from crun for the ratio base"

    def prepare(self) -> None:
        if not shutil.which("unshare"):
            raise Skip("unshare not found: apt-get install util-linux")

    def argv(self, i: int) -> list[str]:
        return wrapper_argv() + ["/bin/true"]


# ---- Docker and Podman (tests/peers.py: private daemons and storage, nothing left behind)


class Peer(SubprocessContender):
    """`docker run` / `podman run` of the busybox image, as a user types it: --rm, no
    network, the same limits; the image's layer under a fresh container layer (overlay)."""

    start = staticmethod(peers.docker_daemon)

    def __init__(self) -> None:
        super().__init__()
        self.stack = contextlib.ExitStack()

    def prepare(self) -> None:
        try:
            tool = self.stack.enter_context(self.start())
            self.image = peers.busybox_image(tool)
        except peers.PeerUnavailable as e:
            raise Skip(str(e)) from e
        self.tool = tool
        self.cmd = peers.run_argv(tool, self.image, "/bin/true", limits=True)

    def argv(self, i: int) -> list[str]:
        return self.cmd

    def verify(self) -> str:
        r = subprocess.run(peers.run_argv(self.tool, self.image, "/bin/sh", "-c", VERIFY_SCRIPT,
                                          limits=True),
                           check=False, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=60)
        return judge_verify(r.stdout, r.stderr, r.returncode)

    def cleanup(self) -> None:
        self.stack.close()


class Docker(Peer):
    name = "docker"
    label = "docker run --rm"
    notes = "Debian's Docker; its own containerd+dockerd, started untimed; overlay2"


class Podman(Peer):
    name = "podman"
    label = "podman run --rm"
    notes = "Debian's Podman, rootful, cgroupfs, runc; no daemon: all of it timed"
    start = staticmethod(peers.podman_argv)


# ---- no limits


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
        helptext = subprocess.run([exe, "--help"], check=False, capture_output=True,
                                  text=True).stdout
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
        helptext = subprocess.run([exe, "--help"], check=False, capture_output=True,
                                  text=True).stdout
        if "--root" in helptext:
            self.cmd = [exe, "-fpmuin", "--mount-proc=/proc", f"--root={self.target}",
                        "/bin/true"]
            self.notes = "no limits; chroot into fresh overlay (timed)"
        else:
            self.cmd = [exe, "-fpmuin", "--mount-proc", "/bin/true"]
            self.notes = "no limits; host root (unshare lacks --root), overlay still timed"

    def argv(self, i: int) -> list[str]:
        return self.cmd


# ---- nsmagic


class NsmWarm(Contender):
    name = "nsmagic-warm"
    label = "nsmagic run() in-process"
    notes = "Spec.from_argv + run() timed; busybox root"

    def __init__(self, rootfs: str) -> None:
        super().__init__()
        self.argv = NSM_LIMITS + ["--rootfs", rootfs, "--", "/bin/true"]

    def prepare(self) -> None:
        try:
            self.run = importlib.import_module("nsmagic.core").run
            self.Spec = importlib.import_module("nsmagic.spec").Spec
        except Exception as e:
            raise Skip(f"nsmagic API not importable ({short_exc(e)})") from e

    def once(self, i: int) -> int:
        t0 = time.perf_counter_ns()
        result = self.run(self.Spec.from_argv(self.argv), out=None, err=None)
        t1 = time.perf_counter_ns()
        if result.exit_code != 0:
            raise RuntimeError(f"exit_code={result.exit_code!r} ({result!r})"[:200])
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
        script = Path(sys.executable).parent / "nsmagic"
        if script.exists():
            self.prefix = [str(script)]
        else:
            self.prefix = [sys.executable, "-m", "nsmagic"]
            self.notes += "; via python -m nsmagic (no console script)"
        self.cmd = self.prefix + ["run"] + NSM_LIMITS + ["--rootfs", rootfs, "--", "/bin/true"]

    def prepare(self) -> None:
        r = subprocess.run(self.cmd, check=False, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, env=self.env, timeout=120)
        if r.returncode != 0:
            tail = (r.stderr.strip() or r.stdout.strip() or "").splitlines()[-1:] or [""]
            raise Skip(f"`{' '.join(self.prefix)} run` fails here "
                       f"(exit {r.returncode}: {tail[0][:140]})")

    def argv(self, i: int) -> list[str]:
        return self.cmd


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
            raise Skip(f"%load_ext nsmagic fails ({short_exc(e)})") from e
        if "container" not in self.ip.magics_manager.magics.get("cell", {}):
            text = " ".join(said.getvalue().split())[:140] or "no message"
            raise Skip(f"%load_ext nsmagic did not register %%container ({text})")

    def once(self, i: int) -> int:
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            t0 = time.perf_counter_ns()
            self.ip.run_cell_magic("container", CELL_LINE, "pass")
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
