"""What a Kubernetes pod gives a container, reproduced on this machine with Debian's runc: the
OCI config containerd's CRI plugin would hand runc for a Zero-to-JupyterHub user pod, under
each setting that matters to nsmagic, and nsmagic's probe (tests/pod_probe.py) run inside.

The pod, as containerd makes it: the host's root as the image (read-only: it holds this
venv and nsmagic, as a user image would), a tmpfs /tmp, the user 1000:100 (Z2JH's jovyan),
no_new_privs (allowPrivilegeEscalation: false), the runtime's default capability set (all
of them dropped from a non-root process's effective set), its own pid, ipc, uts, mount and
network namespaces, /sys read-only, the cgroup file system read-only, Docker's masked and
read-only /proc paths, and a memory limit on the pod's cgroup. Each setting changes one
thing a pod spec or Helm value changes:

    seccomp    securityContext.seccompProfile.type: RuntimeDefault (Docker's default
               profile, which containerd's RuntimeDefault is maintained from), or
               Unconfined (a kubelet without --seccomp-default)
    userns     hostUsers: false: a user namespace, the pod's ids 0-65535 mapped to an
               unprivileged host range
    unmasked   securityContext.procMount: Unmasked (Kubernetes allows it with hostUsers:
               false): no masked or read-only /proc paths
    delegated  a writable cgroup file system with the pod's cgroup given to its user (what
               CRI-O's cgroup2-mount-hierarchy-rw annotation does for a user-namespaced pod;
               here an OCI createRuntime hook chowns it)

Root only; runc only (Podman's own defaults differ from containerd's: runc and a config we
write are what a kubelet does). Everything made (bundles, state, cgroups) lives under one
scratch dir and the cgroup path /nsmagic-pods-<pid>-*, removed at exit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import tempfile

from nsmagic.cgroups import detect
from nsmagic.security import profile

PREFIX = "nsmagic-pods-"
USER, GROUP = 1000, 100          # Z2JH's jovyan:users
HOST_BASE = 200000               # hostUsers: false maps the pod's 0-65535 here
# containerd's (and Docker's) default capability set
CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
        "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")
MASKED = ("/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
          "/sys/firmware", "/sys/devices/virtual/powercap")
READ_ONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    seccomp: bool = False      # RuntimeDefault
    userns: bool = False       # hostUsers: false
    unmasked: bool = False     # procMount: Unmasked
    delegated: bool = False    # the pod's cgroup writable by its user


SETTINGS = (
    Setting("unconfined"),                                     # a kubelet's own default
    Setting("runtime-default", seccomp=True),                 # Z2JH with RuntimeDefault
    Setting("userns", userns=True),                            # hostUsers: false only
    Setting("userns-unmasked", userns=True, unmasked=True),
    Setting("userns-unmasked-runtime-default", seccomp=True, userns=True, unmasked=True),
    Setting("userns-unmasked-delegated", userns=True, unmasked=True, delegated=True),
)


def why_no_pods() -> str | None:
    if os.geteuid() != 0:
        return "runc needs root here to make the pod's namespaces and cgroups"
    if not shutil.which("runc"):
        return "runc is not installed: apt-get install runc (tests/install-deps does)"
    return None


def seccomp_json() -> dict:
    """Docker's default profile (nsmagic's copy of its facts) as an OCI seccomp section, for
    a process whose capabilities are CAPS (containerd builds RuntimeDefault so)."""
    native = platform.machine()
    kernel = tuple(int(x) for x in platform.release().split(".")[:2])
    ops = {"EQ": "SCMP_CMP_EQ", "LT": "SCMP_CMP_LT", "GT": "SCMP_CMP_GT",
           "MASKED_EQ": "SCMP_CMP_MASKED_EQ", "NE": "SCMP_CMP_NE", "GE": "SCMP_CMP_GE",
           "LE": "SCMP_CMP_LE"}
    rules = []
    for rule in profile.select(frozenset(CAPS), native, kernel):
        entry = {"names": list(rule.names),
                 "action": "SCMP_ACT_ALLOW" if rule.action == profile.ALLOW else
                 "SCMP_ACT_ERRNO"}
        if rule.action != profile.ALLOW:
            entry["errnoRet"] = rule.errno
        if rule.conds:
            entry["args"] = [{"index": c.arg, "value": c.a, "valueTwo": c.b, "op": ops[c.op]}
                             for c in rule.conds]
        rules.append(entry)
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": profile.DEFAULT_ERRNO,
            "architectures": ["SCMP_ARCH_" + a.upper() for a in profile.arches(native)],
            "syscalls": rules}


def config(setting: Setting, argv: list[str], env: dict, binds: list[str],
           cgroup: str, hook: str | None) -> dict:
    """The OCI config of the pod's container under `setting` (its rootfs: the host's root,
    bound at the bundle's rootfs/ by Pods.run)."""
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network", "cgroup")]
    linux = {"namespaces": namespaces, "cgroupsPath": cgroup,
             "resources": {"memory": {"limit": 2 << 30}, "pids": {"limit": 4096}},
             "maskedPaths": [] if setting.unmasked else list(MASKED),
             "readonlyPaths": [] if setting.unmasked else list(READ_ONLY)}
    if setting.userns:
        namespaces.append({"type": "user"})
        linux["uidMappings"] = linux["gidMappings"] = [
            {"containerID": 0, "hostID": HOST_BASE, "size": 65536}]
    if setting.seccomp:
        linux["seccomp"] = seccomp_json()
    cgroup_options = ["nosuid", "noexec", "nodev", "relatime",
                      "rw" if setting.delegated else "ro"]
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": cgroup_options},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777"]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=755"]},
    ] + [{"destination": b, "type": "bind", "source": b, "options": ["rbind", "ro"]}
         for b in binds]
    spec = {
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": USER, "gid": GROUP}, "args": argv, "cwd": "/tmp",
                    "env": [f"{k}={v}" for k, v in env.items()],
                    "noNewPrivileges": True,
                    "capabilities": {"bounding": list(CAPS), "permitted": [],
                                     "effective": [], "inheritable": [], "ambient": []}},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": f"pod-{setting.name}",
        "mounts": mounts,
        "linux": linux,
    }
    if hook:
        spec["hooks"] = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", hook]}]}
    return spec


def _delegate_hook(cgroup: str, uid: int) -> str:
    """A createRuntime hook (after runc made the pod's cgroups, before the process runs):
    the pod's groups, in every hierarchy, given to its user."""
    layout = detect()
    mounts = sorted(set(layout.v1_mounts.values()) | ({layout.v2_mount} - {None}))
    dirs = " ".join(f"'{m}{cgroup}'" for m in mounts)
    return f"for d in {dirs}; do [ -d \"$d\" ] && chown -R {uid}:{uid} \"$d\"; done; true"


class Pods:
    """Runs commands in pod-like containers; removes everything at exit."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix=PREFIX)
        os.chmod(self.dir, 0o755)
        self.count = 0

    def run(self, setting: Setting, argv: list[str], env: dict, binds: list[str],
            timeout: float = 300) -> subprocess.CompletedProcess:
        self.count += 1
        name = f"{PREFIX}{os.getpid()}-{self.count}"
        bundle = os.path.join(self.dir, name)
        os.mkdir(bundle)
        cgroup = "/" + name
        uid = HOST_BASE + USER if setting.userns else USER
        hook = _delegate_hook(cgroup, uid) if setting.delegated else None
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(config(setting, argv, env, binds, cgroup, hook), f)
        state = os.path.join(self.dir, "state")
        rootfs = os.path.join(bundle, "rootfs")
        os.mkdir(rootfs)
        # The image: the host's root, bound read-only in a mount namespace of this run's own
        # (runc cannot pivot into "/" itself; the bind goes when the namespace does).
        script = (f"mount --bind / {rootfs} && mount -o remount,bind,ro {rootfs} && "
                  f"exec runc --root {state} run --bundle {bundle} {name}")
        try:
            return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                   script], capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        finally:
            subprocess.run(["runc", "--root", state, "delete", "--force", name],
                           capture_output=True)
            _remove_cgroups(cgroup)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _remove_cgroups(cgroup: str) -> None:
    """What nsmagic inside made below the pod's group is its own to remove, but a killed
    pod leaves it: children first, in every hierarchy."""
    layout = detect()
    for mount in set(layout.v1_mounts.values()) | ({layout.v2_mount} - {None}):
        top = mount + cgroup
        for here, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            try:
                os.rmdir(here)
            except OSError:
                pass


def probe(pods: Pods, setting: Setting, package: str, python: str) -> dict:
    """nsmagic's probe inside a pod under `setting`: its JSON, with what the pod said.
    `package` (a checkout copy) must be outside /tmp and /run: the pod's image is the host's
    root, where it is seen as it is, and those two are the pod's own tmpfs. `python` must be
    one the pod's user (1000, not root) can run: conftest's nobody_python."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": package, "LANG": "C.UTF-8"}
    done = pods.run(setting, [python, os.path.join(package, "tests", "pod_probe.py")], env, [])
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        found = {"broken": True}
    found["pod_rc"], found["pod_stderr"] = done.returncode, done.stderr[-3000:]
    return found
