"""Docker and Podman as peers on this machine, offline and without a trace: the tests and
bench/startup.py compare nsmagic with them.

    with docker_daemon() as docker:          # ["docker", "--config", ..., "-H", "unix://..."]
        image = busybox_image(docker)        # imported from busybox-static, proved to run
        subprocess.run(run_argv(docker, image, "true"))
    with podman_argv() as podman:            # ["podman", "--root", ..., ...] (rootful)
        ...

Everything lives in one scratch directory (/tmp/nsmagic-peers-*): containerd's and dockerd's
data and exec roots and sockets, Podman's storage, run and tmp dirs. Containers get no network
(`--bridge=none --iptables=false --ip-forward=false`, `--network none`), their cgroups sit
under /nsmagic-peers-<pid>-<tool>, and at exit the daemons are stopped, any process left in
those cgroups or naming the scratch dir is killed, the scratch dir is unmounted and removed,
the cgroups go, and so do the few fixed /run dirs the tools create when they were not there
before. `leftovers(before)` tells what remains, so a test can check that.

When a tool is missing or cannot start, `PeerUnavailable(reason)` says why in one sentence,
for a skip or a bench row. Root only. Stdlib only, plus nsmagic's layout detection and
tests/leaks.py's unmount.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from leaks import unmount_under

from nsmagic.cgroups import detect

IMAGE = "nsmagic-bench-busybox"
PREFIX = "nsmagic-peers-"
BUSYBOX = "/usr/bin/busybox"
# What the tools create outside the roots they let us choose (containerd's shim sockets,
# dockerd's plugin sockets, runc's default state dir, which `podman run` still makes despite
# --runtime-flag root=, the blob cache `podman import` keeps for root whatever its --root):
# removed at exit when they were not there before (dirs if empty).
FIXED_PATHS = ("/run/containerd/s", "/run/containerd", "/run/docker/plugins", "/run/docker",
               "/run/runc", "/var/lib/containers/cache/blob-info-cache-v1.boltdb",
               "/var/lib/containers/cache", "/var/lib/containers")
NETDEVS = ("docker", "br-", "cni-podman", "podman")   # what Docker and Podman would add
CAP_SYS_RESOURCE = 24
READY_TIMEOUT = 30.0


class PeerUnavailable(Exception):
    """A peer is not installed or cannot start here; str() is one sentence saying why."""


# ---- docker


@contextlib.contextmanager
def docker_daemon(bridge: bool = False) -> Iterator[list[str]]:
    """Start containerd and dockerd on private sockets under a scratch dir; yield the
    `docker` argv prefix that talks to them; stop both and clean up at exit. With `bridge`
    (bench/network.py only) dockerd makes docker0, its iptables rules and ip_forward as it
    does by default: the caller removes those traces (bench/network.undo_network)."""
    dockerd, containerd = shutil.which("dockerd"), shutil.which("containerd")
    if not (dockerd and containerd):
        raise PeerUnavailable("Docker is not installed: apt-get install docker.io "
                              "(it brings containerd and runc).")
    client = _docker_client(dockerd)
    with _Scratch("docker") as scratch:
        path = scratch.path
        scratch.start("containerd", [containerd, "--config", _containerd_config(path)],
                      path / "containerd.sock")
        scratch.start("dockerd", _dockerd_argv(dockerd, path, bridge), path / "docker.sock")
        yield [client, "--config", str(path / "client"), "-H", f"unix://{path / 'docker.sock'}"]


def _containerd_config(scratch: Path) -> str:
    """No CRI plugin (it would set up CNI networking), and no /opt/containerd."""
    path = scratch / "containerd.toml"
    path.write_text(f"""version = 2
root = "{scratch}/containerd/root"
state = "{scratch}/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{scratch}/containerd.sock"
[ttrpc]
  address = "{scratch}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{scratch}/containerd/opt"
""")
    return str(path)


def _dockerd_argv(dockerd: str, scratch: Path, bridge: bool = False) -> list[str]:
    # The trust key would otherwise be written to /etc/docker/key.json.
    (scratch / "daemon.json").write_text(
        '{"deprecated-key-path": "%s"}\n' % (scratch / "key.json"))
    return [dockerd, "--config-file", str(scratch / "daemon.json"),
            "--containerd", str(scratch / "containerd.sock"),
            "--data-root", str(scratch / "docker"), "--exec-root", str(scratch / "exec"),
            "--pidfile", str(scratch / "dockerd.pid"), "-H", f"unix://{scratch / 'docker.sock'}",
            "--storage-driver", "overlay2", "--cgroup-parent", cgroup_parent("docker"),
            # No docker0, no iptables rules, no ip_forward sysctl: nothing touches the host's
            # network (dockerd's defaults would set net.ipv4.ip_forward=1 even with no bridge).
            *(["--userland-proxy=false"] if bridge else
              ["--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
               "--ip-forward=false", "--userland-proxy=false"])]


def _docker_client(dockerd: str) -> str:
    """The client packaged with this dockerd (Debian's /usr/bin/docker beside /usr/sbin/
    dockerd) rather than another one earlier on PATH; else PATH's."""
    beside = Path(dockerd).resolve().parent.parent / "bin" / "docker"
    found = str(beside) if beside.exists() else shutil.which("docker")
    if not found:
        raise PeerUnavailable("the docker client is missing: apt-get install docker.io.")
    return found


# ---- podman


@contextlib.contextmanager
def podman_argv() -> Iterator[list[str]]:
    """Yield a rootful `podman` argv prefix whose storage, state and network config live in
    a scratch dir, with cgroupfs (no systemd) and file events (no journald); clean up at exit.
    Podman has no daemon: `busybox_image` proves that it can run a container here."""
    podman = shutil.which("podman")
    if not podman:
        raise PeerUnavailable("Podman is not installed: apt-get install podman.")
    runtime = _podman_runtime()
    with _Scratch("podman") as scratch:
        path = scratch.path
        yield [podman, "--root", str(path / "root"), "--runroot", str(path / "run"),
               "--tmpdir", str(path / "tmp"), "--volumepath", str(path / "volumes"),
               "--network-config-dir", str(path / "net"), "--cgroup-manager", "cgroupfs",
               "--events-backend", "file", "--storage-driver", "overlay",
               *runtime, "--runtime-flag", f"root={path / 'runc'}"]   # not /run/runc


def _podman_runtime() -> list[str]:
    """crun (Podman's first choice) refuses hybrid cgroups ("cgroups in hybrid mode not
    supported"); runc handles them."""
    if detect().kind != "hybrid":
        return []
    if not shutil.which("runc"):
        raise PeerUnavailable("Podman needs runc on this hybrid cgroup layout (crun refuses "
                              "it): apt-get install runc.")
    return ["--runtime", "runc"]


# ---- images and runs


def busybox_image(tool: list[str]) -> str:
    """Import a busybox image (Debian's busybox-static and its applet links, nothing
    downloaded) into `tool`'s store as IMAGE, run `true` in it once, and return its name."""
    if not os.path.exists(BUSYBOX):
        raise PeerUnavailable(f"{BUSYBOX} is missing: apt-get install busybox-static.")
    with tempfile.TemporaryDirectory(prefix=PREFIX) as tmp:
        tar = _busybox_tar(Path(tmp))
        _check([*tool, "import", str(tar), IMAGE], f"{_name(tool)} import")
    _check(run_argv(tool, IMAGE, "true"), f"{_name(tool)} run")
    return IMAGE


def run_argv(tool: list[str], image: str, *cmd: str, limits: bool = False,
             network: str = "none") -> list[str]:
    """`tool run --rm --network none [--memory 100m --pids-limit 64] image cmd...`."""
    argv = [*tool, "run", "--rm", "--network", network]
    if limits:
        argv += ["--memory", "100m", "--pids-limit", "64"]
    if _name(tool) == "podman":
        argv += ["--cgroup-parent", cgroup_parent("podman"), *_podman_ulimits()]
    return [*argv, image, *cmd]


def _podman_ulimits() -> list[str]:
    """Rootful Podman asks runc for RLIMIT_NOFILE and RLIMIT_NPROC of 1048576, above this
    process's hard limits; raising them needs CAP_SYS_RESOURCE, which a sandboxed root may
    lack ("error setting rlimit type 7: operation not permitted"). Then ask for what we have;
    for nproc no more than kernel.pid_max, which was Podman's own hard limit when it ran."""
    if _has_capability(CAP_SYS_RESOURCE):
        return []
    import resource
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1],
                int(Path("/proc/sys/kernel/pid_max").read_text()))
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def _busybox_tar(tmp: Path) -> Path:
    root = tmp / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", root / "bin" / applet)
    for d in ("etc", "tmp", "proc", "sys", "dev", "root"):
        (root / d).mkdir()
    (root / "tmp").chmod(0o1777)
    tar = tmp / "busybox.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
    return tar


def _check(argv: list[str], what: str) -> None:
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        said = (r.stderr.strip() or r.stdout.strip() or "no message").splitlines()[-1]
        raise PeerUnavailable(f"`{what}` fails here (exit {r.returncode}): {said[:300]}")


def _name(tool: list[str]) -> str:
    return os.path.basename(tool[0])


def cgroup_parent(tool: str) -> str:
    """Where a tool's containers (and Podman's conmon) get their cgroups, in every
    hierarchy: named for nsmagic and this process, so the cleanup knows them."""
    return f"/{PREFIX}{os.getpid()}-{tool}"


def _has_capability(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


# ---- the scratch dir, the daemons in it, and the cleanup


class _Scratch:
    """A scratch dir for one tool; the daemons started in it; everything undone at exit."""

    def __init__(self, tool: str) -> None:
        self.tool = tool
        self.new_fixed = [p for p in FIXED_PATHS if not os.path.exists(p)]
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{tool}-"))
        self.daemons: list[subprocess.Popen] = []

    def __enter__(self) -> _Scratch:
        return self

    def __exit__(self, *exc) -> None:
        for daemon in reversed(self.daemons):   # dockerd first: it stops its containers
            _stop(daemon)
        _kill(_processes_naming(str(self.path)) | _processes_in(cgroup_parent(self.tool)))
        if unmount_under(str(self.path)):
            shutil.rmtree(self.path, ignore_errors=True)
        _remove_cgroups(cgroup_parent(self.tool))
        for path in self.new_fixed:             # deepest first, as FIXED_PATHS lists them
            with contextlib.suppress(OSError):
                if os.path.isdir(path):
                    os.rmdir(path)
                else:
                    os.unlink(path)

    def start(self, name: str, argv: list[str], sock: Path) -> None:
        """Start a daemon logging to <name>.log and wait until `sock` answers."""
        with open(self.path / f"{name}.log", "wb") as log:
            daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                      cwd=self.path, start_new_session=True)
        self.daemons.append(daemon)
        deadline = time.monotonic() + READY_TIMEOUT
        while not _answers(sock, ping=name == "dockerd"):
            if daemon.poll() is not None:
                raise PeerUnavailable(f"{name} exited at start (exit {daemon.returncode}): "
                                      f"{_last_error(self.path / f'{name}.log')}")
            if time.monotonic() > deadline:
                raise PeerUnavailable(f"{name} was not ready after {READY_TIMEOUT:.0f} s: "
                                      f"{_last_error(self.path / f'{name}.log')}")
            time.sleep(0.05)


def _answers(sock: Path, ping: bool) -> bool:
    """The socket accepts a connection (and, for dockerd, answers /_ping with OK)."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(sock))
            if not ping:
                return True
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return s.recv(4096).split(b"\r\n", 1)[0].endswith(b" 200 OK")
    except OSError:
        return False


def _last_error(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() or ["no output"]
    bad = [line for line in lines if "level=error" in line or "level=fatal" in line]
    return (bad or lines)[-1][:300]


def _stop(daemon: subprocess.Popen) -> None:
    if daemon.poll() is None:
        daemon.terminate()
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def _processes_naming(path: str) -> set[int]:
    """Processes whose command line names `path` (containerd's shims, Podman's conmon)."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if path.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(int(pid))
    return found - {os.getpid()}


def _cgroup_dirs(parent: str) -> list[str]:
    """`parent` in every mounted hierarchy (v1 controllers, a hybrid's or a pure cgroup2)."""
    roots = ["/sys/fs/cgroup"] + [e.path for e in os.scandir("/sys/fs/cgroup") if e.is_dir()]
    return [r + parent for r in roots if os.path.isdir(r + parent)]


def _processes_in(parent: str) -> set[int]:
    found = set()
    for top in _cgroup_dirs(parent):
        for dirpath, _, files in os.walk(top):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):
                    found |= {int(p) for p in Path(dirpath, "cgroup.procs").read_text().split()}
    return found - {os.getpid()}


def _kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}/cmdline") and
                                              Path(f"/proc/{p}/cmdline").read_bytes()
                                              for p in pids):
        time.sleep(0.02)


def _remove_cgroups(parent: str) -> None:
    for _ in range(50):                         # a group is busy a moment after its last exit
        left = []
        for top in _cgroup_dirs(parent):
            for dirpath, _, _ in os.walk(top, topdown=False):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    left.append(dirpath)
        if not left:
            return
        time.sleep(0.02)


# ---- what the tools leave behind


def snapshot() -> dict[str, set[str]]:
    """What a peer could leave on this machine: processes and mounts naming nsmagic-peers,
    cgroups so named, the tools' fixed paths, their network devices and iptables rules, and
    net.ipv4.ip_forward (other work on the machine may change devices and rules meanwhile:
    only the peers' own names count)."""
    procs = {f"process {pid}" for pid in _processes_naming(PREFIX)}
    with open("/proc/self/mountinfo") as f:
        mounts = {f"mount {line.split()[4]}" for line in f if PREFIX in line}
    cgroups = {f"cgroup {e.path}" for root in _cgroup_dirs("") for e in os.scandir(root)
               if e.is_dir() and e.name.startswith(PREFIX)}
    scratch = {f"dir {p}" for p in map(str, Path(tempfile.gettempdir()).glob(PREFIX + "*"))}
    fixed = {f"path {p}" for p in FIXED_PATHS if os.path.exists(p)}
    netdevs = {f"netdev {n}" for n in os.listdir("/sys/class/net") if n.startswith(NETDEVS)}
    forward = {"sysctl net.ipv4.ip_forward=" + Path("/proc/sys/net/ipv4/ip_forward").read_text()
               .strip()}
    return {"processes": procs, "mounts": mounts, "cgroups": cgroups, "dirs": scratch | fixed,
            "netdevs": netdevs, "iptables": _iptables_rules(), "sysctl": forward}


def _iptables_rules() -> set[str]:
    if not shutil.which("iptables-save"):
        return set()
    out = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    return {"iptables " + line for line in out.splitlines()
            if any(word in line.lower() for word in ("docker", "cni", "podman"))}


def leftovers(before: dict[str, set[str]]) -> list[str]:
    """What is on the machine now that was not in `before` (a snapshot())."""
    after = snapshot()
    return sorted(item for key in after for item in after[key] - before.get(key, set()))
