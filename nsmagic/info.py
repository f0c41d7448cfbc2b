"""What this machine can do, like `docker info`: every answer comes from a real system call
made in a child process, not from reading configuration files."""

from __future__ import annotations

import enum
import json
import os
import platform
import subprocess
import sys

from .cgroups import delegation, detect
from .cgroups.base import PREFIX
from .errors import NsmagicError
from .rootfs import secrets

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE_CODE = ("import sys, json; sys.path.insert(0, sys.argv[1]); "
              "from nsmagic.inside.probe import probe; "
              "json.dump(probe(sys.stdin.buffer.read() or None), sys.stdout)")

FIXES = {
    "user": "allow unprivileged user namespaces (sysctl -w kernel.unprivileged_userns_clone=1 "
            "and user.max_user_namespaces > 0), or run as root",
    "overlay": "load overlayfs (modprobe overlay); a kernel of 5.11 or newer mounts it in a "
               "user namespace",
    "cgroup": "run as root, or start the kernel in a delegated cgroup v2 scope "
              "(systemd-run --user --scope -p Delegate=yes jupyter lab)",
    "blocked": "this host blocks namespaces (a seccomp profile, as on Binder and most "
               "Kubernetes pods); run the notebook on a Linux machine or VM where you are root "
               "or user namespaces are allowed",
}


def gather() -> dict:
    seccomp, program = _seccomp_report()
    done = subprocess.run([sys.executable, "-I", "-S", "-c", PROBE_CODE, PACKAGE_PARENT],
                          input=program or b"", capture_output=True, timeout=30)
    try:
        probed = json.loads(done.stdout)
    except ValueError:
        probed = {"root": os.geteuid() == 0, "namespaces": {},
                  "overlay": done.stderr.decode(errors="replace").strip() or "probe failed",
                  "overlay_in_user_ns": "probe failed"}
    if "seccomp_load_ms" in probed:
        seccomp["load_ms"] = probed.pop("seccomp_load_ms")
    layout = detect()
    info = {"kernel": platform.release(), "python": sys.executable, **probed,
            "cgroup_layout": layout.kind, "cgroup": _cgroup_report(layout),
            "delegation": delegation.describe(layout),
            "devices": _devices_report(layout), "io_weight": _io_weight_report(layout),
            "seccomp": seccomp, "network": _network_report()}
    info["mode"], info["missing"] = _mode(info)
    info["hidden"] = list(secrets.scan()) if info["root"] else []
    return info


def _seccomp_report() -> tuple[dict, bytes | None]:
    """The filter every run gets: what it refuses, what this libseccomp lacks, what it costs
    to compile (in the runner, once per option set) and, filled in by the probe, to load (in
    each run's PID 1). Its program too, for the probe to load."""
    from . import kept
    from .inside.workload import KEEP_CAPABILITIES
    from .security import seccomp
    try:
        program = seccomp.compile_filter(KEEP_CAPABILITIES)
        took = (seccomp.compile_cost(KEEP_CAPABILITIES)        # this process's compile, or one
                or seccomp.time_compile(KEEP_CAPABILITIES))    # now (it came from the cache)
        refused, by_argument = seccomp.refusals(KEEP_CAPABILITIES)
        report = {"filter": "on", "libseccomp": seccomp.version(), "arch": seccomp.native_arch(),
                  "instructions": len(program) // seccomp.BPF_INSTRUCTION_SIZE,
                  "refused": refused, "by_argument": by_argument,
                  "unknown": seccomp.unknown_syscalls(), "compile_ms": took * 1e3,
                  "kept_in": kept.directory()}
    except NsmagicError as err:
        return {"filter": "unavailable", "error": str(err)}, None
    return report, program


def _seccomp_lines(sc: dict) -> list[str]:
    if sc["filter"] != "on":
        return [f"Seccomp filter:    NOT available: {sc['error']}"]
    load = sc.get("load_ms")
    load = (f"{load:.2f} ms to load in each run's PID 1" if isinstance(load, float)
            else f"can't be loaded here: {load}")
    lines = [f"Seccomp filter:    on, Docker's default profile ({sc['instructions']} BPF "
             f"instructions, libseccomp {sc['libseccomp']}; --security-opt seccomp=unconfined "
             "turns it off)",
             f"  refuses          {len(sc['refused'])} calls of {sc['arch']} outright, "
             f"{len(sc['by_argument'])} by argument ({', '.join(sc['by_argument'])})",
             f"  costs            {sc['compile_ms']:.1f} ms to compile, once per option set"
             + (f" (kept in {sc['kept_in']} for later processes)" if sc["kept_in"] else "")
             + f"; {load}"]
    if sc["unknown"]:
        lines.append(f"  unknown to libseccomp {sc['libseccomp']}, so refused: "
                     + " ".join(sc["unknown"]))
    return lines


def _network_report() -> dict:
    """Which --network modes this host allows, and with what (no netlink: files and PATH)."""
    import shutil

    from .net import nat, networks
    root = os.geteuid() == 0
    backend = nat.backend()
    bridge = ("yes" if root and backend else "no: needs root" if not root
              else "no: neither nft nor iptables is installed (apt-get install nftables)")
    default = networks.get("bridge") if root else None
    return {"default": "none", "bridge": bridge, "nat": backend,
            "subnet": default.subnet if default else None,
            "pasta": shutil.which("pasta"), "slirp4netns": shutil.which("slirp4netns"),
            "ip_forward": _read("/proc/sys/net/ipv4/ip_forward"),
            "rootless": "pasta" if shutil.which("pasta") else None}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _network_lines(net: dict) -> list[str]:
    if not net:
        return []
    pasta = net.get("pasta")
    return [
        "Networks:          none (the default: only lo), host, bridge, user-defined "
        "(nsmagic network create), container:NAME, pasta",
        f"  bridge           {net['bridge']}"
        + (f" (nsmagic0 on {net['subnet']}, NAT through {net['nat']}; pyroute2 in the "
           "nsmagic-netd helper only)" if net["bridge"] == "yes" else ""),
        f"  pasta (rootless) {'yes: ' + pasta if pasta else 'no: apt-get install passt'}"
        + (f"; slirp4netns {net['slirp4netns']}" if net.get("slirp4netns") else ""),
    ]


def _cgroup_report(layout) -> dict:
    usable: dict[str, str] = {}
    if layout.kind == "v2":
        here = os.path.join(layout.v2_mount, "nsmagic") if os.geteuid() == 0 else layout.v2_dir()
        writable = os.access(os.path.dirname(here) if os.geteuid() == 0 else here, os.W_OK)
        for c in ("memory", "cpu", "pids", "io"):
            usable[c] = ("yes" if c in layout.v2_controllers() and writable
                         else "not writable" if c in layout.v2_controllers() else "absent")
        where = {c: layout.v2_mount for c in usable}
    else:
        where = {}
        for c in ("memory", "cpu", "cpuacct", "pids", "blkio", "devices"):
            d = layout.v1_dir(c)
            usable[c] = ("absent" if d is None else "yes" if os.access(d, os.W_OK)
                         else "not writable")
            where[c] = layout.v1_mounts.get(c)
    return {"controllers": usable, "mounts": where, "v2_mount": layout.v2_mount,
            "v2_controllers": layout.v2_controllers()}


DEVICES_TEXT = {
    "v1": "the devices cgroup holds Docker's allow-list (null zero full random urandom, tty "
          "console ptmx, the pty slaves, tun): any node may be made, no other one opened",
    "v2": "no device program is needed: every mount inside is nodev except /dev's own nodes "
          "(null zero full random urandom tty, bound from the host) and devpts, and "
          "CAP_MKNOD is dropped, so no other device node can be made or opened",
    "none": "no devices cgroup for this run (none mounted, or not writable by this user): "
            "device nodes are kept out by nodev mounts (a user namespace's own mounts are "
            "nodev too) and the dropped CAP_MKNOD alone",
}


def _devices_report(layout) -> str:
    """Which guard stands between a device node inside and the host's device."""
    if layout.kind == "v2":
        return DEVICES_TEXT["v2"]
    group = layout.v1_dir("devices")
    return DEVICES_TEXT["v1" if group and os.access(group, os.W_OK) else "none"]


def _io_weight_report(layout) -> str:
    """Whether --blkio-weight can be written (BFQ's weight file, in a group of its own: it is
    not shown at the root), and which disks honour it (those whose scheduler is BFQ)."""
    parent = (layout.v1_dir("blkio") if layout.kind != "v2"
              else layout.v2_dir() if os.geteuid() else layout.v2_mount)
    files = _files_of_a_new_group(parent) if parent else None
    if files is None:
        return "unknown: no group can be made here to look (run as root)"
    found = [f for f in files if f.endswith(("blkio.weight", "bfq.weight", "io.weight"))]
    if not found:
        return "no: this kernel has no weight file for cgroups (load BFQ: modprobe bfq)"
    disks = _disks_on_bfq()
    return (f"yes ({', '.join(sorted(found))}); honoured on disks whose scheduler is bfq: "
            f"{', '.join(disks) or 'none here'} (/sys/block/DISK/queue/scheduler)")


def _files_of_a_new_group(parent: str) -> list[str] | None:
    probe = os.path.join(parent, f"{PREFIX}{os.getpid()}-info")
    try:
        os.mkdir(probe)
    except OSError:
        return None
    try:
        return os.listdir(probe)
    finally:
        os.rmdir(probe)


def _disks_on_bfq() -> list[str]:
    found = []
    for disk in sorted(os.listdir("/sys/block")):
        try:
            with open(f"/sys/block/{disk}/queue/scheduler") as f:
                if "[bfq]" in f.read():
                    found.append(disk)
        except OSError:
            pass
    return found


class Mode(str, enum.Enum):
    """What nsmagic can do on this host, best first."""
    FULL = "full"                              # root: everything
    ROOTLESS = "rootless"                      # user namespace, limits through delegation
    ROOTLESS_NO_LIMITS = "rootless-no-limits"  # user namespace, no cgroup to limit
    UNAVAILABLE = "unavailable"                # no namespaces at all (Binder, a locked pod)

    def __str__(self) -> str:   # "full" in an f-string, not "Mode.FULL" (Python 3.11+)
        return self.value


MODE_TEXT = {
    Mode.FULL: "full: root, all namespaces, cgroup limits, overlay root",
    Mode.ROOTLESS: "rootless: user namespace, cgroup limits through a delegated subtree",
    Mode.ROOTLESS_NO_LIMITS: "rootless: user namespace, NO cgroup limits (no delegated cgroup)",
    Mode.UNAVAILABLE: "unavailable: namespaces cannot be created here",
}


def _mode(info: dict) -> tuple[Mode, list[str]]:
    ns, missing = info["namespaces"], []
    failed = [n for n, e in ns.items() if e is not None]
    limits_ok = all(v == "yes" for k, v in info["cgroup"]["controllers"].items()
                    if k in ("memory", "cpu", "pids"))
    if info.get("proc") and not failed:   # namespaces, but no /proc of their own
        mode = Mode.UNAVAILABLE
        missing.append(f"a fresh /proc: {info['proc']}.")
    elif info["root"]:
        mode = Mode.FULL
    elif ns.get("user") is None and not failed:
        mode = Mode.ROOTLESS if limits_ok else Mode.ROOTLESS_NO_LIMITS
    else:
        mode = Mode.UNAVAILABLE
        missing.append(f"namespaces ({', '.join(failed)}): {FIXES['blocked']}; "
                       f"or {FIXES['user']}.")
    if mode is Mode.ROOTLESS_NO_LIMITS:
        missing.append(f"cgroup limits: {_cgroup_fix(info)}.")
    if info.get("overlay") and mode is not Mode.UNAVAILABLE:  # else it failed on unshare
        missing.append(f"overlayfs ({info['overlay']}): {FIXES['overlay']}.")
    if info["seccomp"]["filter"] != "on" and mode is not Mode.UNAVAILABLE:
        missing.append(f"seccomp: {info['seccomp']['error']}")
    if info["root"] and not limits_ok:
        missing.append("cgroup controllers memory, cpu and pids: mount them (cgroup v2 at "
                       "/sys/fs/cgroup, or v1 hierarchies).")
    return mode, missing


def _cgroup_fix(info: dict) -> str:
    """The exact way to limits for this user on this host: the subtree they have but cannot
    use from here (v2), or the setup-user command root runs for them."""
    found = info.get("delegation") or {}
    if found.get("outside"):
        return found["outside"].rstrip(".")
    if found.get("kind") == "container":
        return found["text"].removeprefix("none: ")
    if not found.get("command"):
        return FIXES["cgroup"]
    fix = f"have root run {found['command']} (it delegates a cgroup to you on any layout)"
    if os.path.isdir("/run/systemd/system") and info["cgroup_layout"] == "v2":
        fix += (", or start the kernel in a delegated systemd scope (systemd-run --user "
                "--scope -p Delegate=yes jupyter lab)")
    return fix


def report(info: dict) -> str:
    ok = lambda e: "yes" if e is None else f"no ({e})"  # noqa: E731
    cg = info["cgroup"]
    lines = [
        f"Kernel:            {info['kernel']}",
        f"Running as root:   {'yes' if info['root'] else 'no'}",
        f"Mode:              {MODE_TEXT[Mode(info['mode'])]}",
        f"Cgroup layout:     {info['cgroup_layout']}"
        + (f" (cgroup2 at {cg['v2_mount']} with: {' '.join(cg['v2_controllers']) or 'none'})"
           if cg["v2_mount"] else ""),
        f"Cgroup delegation: {info['delegation']['text']}",
        "Cgroup controllers:",
    ]
    for c, state in cg["controllers"].items():
        lines.append(f"  {c:<10} {state}" + (f"  ({cg['mounts'].get(c)})"
                                              if cg["mounts"].get(c) else ""))
    lines.append("Devices:")
    lines.append(f"  {info['devices']}")
    lines.append(f"Block I/O weight (--blkio-weight): {info['io_weight']}")
    lines.append("Namespaces:")
    for name, err in info["namespaces"].items():
        lines.append(f"  {name:<10} {ok(err)}")
    if "proc" in info:
        lines.append(f"A fresh /proc:     {ok(info['proc'])}")
    lines.append(f"Overlayfs:         {ok(info.get('overlay'))}")
    lines.append(f"Overlayfs in a user namespace: {ok(info.get('overlay_in_user_ns'))}")
    lines += _seccomp_lines(info["seccomp"])
    lines += _network_lines(info.get("network") or {})
    lines.append(f"Python for cells:  {info['python']}")
    lines.append("Root file system:  the host's /usr, /etc, /opt under a fresh upper layer; "
                 "volumes nosuid, nodev")
    if info["hidden"]:
        shown = ", ".join(info["hidden"][:6]) + (", ..." if len(info["hidden"]) > 6 else "")
        lines.append(f"Host secrets:      {len(info['hidden'])} paths hidden from the default "
                     f"root ({shown}); --host-secrets shows them")
    else:
        lines.append("Host secrets:      none hidden (as a user, the container's root is you, "
                     "who cannot read the host's secrets anyway)")
    if info["missing"]:
        lines.append("Missing:")
        lines += [f"  - {m}" for m in info["missing"]]
    return "\n".join(lines)


def unavailable_reason(info: dict, spec) -> str | None:
    """The one sentence a cell gets where this host cannot run it (Binder, a locked pod), or
    where --strict limits cannot be enforced; None where it can run."""
    mode = Mode(info["mode"])
    if mode is Mode.UNAVAILABLE:
        return f"%%container cannot run on this host: {info['missing'][0]}"
    wants_limits = any(v is not None for v in (spec.memory, spec.cpus, spec.pids))
    if spec.strict and wants_limits and mode is Mode.ROOTLESS_NO_LIMITS:
        return ("%%container cannot enforce --mem, --cpus or --pids on this host: cgroup "
                f"limits: {_cgroup_fix(info)}.")
    return None
