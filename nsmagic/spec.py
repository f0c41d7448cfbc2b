"""Every option of a run, parsed and validated once; shared by the magic and the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import shlex
import stat
from dataclasses import dataclass

from .errors import SpecError
from .net.ports import Port, parse_port, parse_rate

DEFAULT_INTERVAL = 0.25   # seconds between samples of the cgroup counters
DEFAULT_STORAGE = 1 << 30  # bytes a run may write to its root, as --storage-opt size=1G
VOLUME_OPTIONS = ("ro", "rw", "dev", "suid")
MIN_MEMORY = 6 << 20      # Docker's minimum: less cannot start a process and its runtime
MIN_CPUS = 0.01           # 1 % of a core: 1 ms of CPU time per 100 ms period
BLKIO_WEIGHTS = (10, 1000)
# Spec fields that shape one run's handling, not its container (see Spec.container_part).
PER_RUN = ("script", "timeout", "raise_error", "strict", "name", "out_var", "err_var", "plot",
           "interval", "profile", "rm", "keep", "inputs", "outputs")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_size(text: str, what: str = "--mem") -> int:
    """'100M', '1.5G', '512Ki', '4096' -> bytes. Docker's units: K, M, G, T are powers of 1024."""
    m = _SIZE.match(str(text))
    if not m:
        raise SpecError(f"{what} {text!r} is not a size; write a number with an optional unit, "
                        "such as 64M, 1.5G or 512Ki.")
    number, unit, _ = m.groups()
    value = int(float(number) * 1024 ** _POWERS[unit.lower()])
    if value <= 0:
        raise SpecError(f"{what} {text!r} is zero; give a positive size such as 64M.")
    return value


def format_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, power in (("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if n >= 1024 ** power:
            return f"{n / 1024 ** power:.1f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class Volume:
    source: str       # absolute host path, checked to exist
    target: str       # absolute path inside the container
    read_only: bool = False
    dev: bool = False   # :dev lets device nodes in it open devices (nodev by default)
    suid: bool = False  # :suid lets set-id bits count (nosuid by default)


@dataclass(frozen=True)
class DeviceRate:
    """One --device-{read,write}-{bps,iops} value: a block device and its limit."""
    path: str         # as given (the host's path)
    major: int
    minor: int
    value: int        # bytes or operations per second


@dataclass(frozen=True)
class Spec:
    """What to run and how; frozen so the parent and the child read the same thing."""

    command: tuple[str, ...] = ()        # empty: the cell is Python, run by the kernel's Python
    script: str | None = None            # the cell body, fed on stdin (as IPython's %%script does)
    memory: int | None = None            # bytes; swap is held at 0 so the limit is real
    cpus: float | None = None
    pids: int | None = None
    device_read_bps: tuple[DeviceRate, ...] = ()
    device_write_bps: tuple[DeviceRate, ...] = ()
    device_read_iops: tuple[DeviceRate, ...] = ()
    device_write_iops: tuple[DeviceRate, ...] = ()
    blkio_weight: int | None = None      # 10-1000, relative to other groups
    hostname: str | None = None
    network: str = "none"                # see net/modes.py: none host bridge NAME container:NAME
    publish: tuple[Port, ...] = ()       # -p: ports of the host forwarded to the container
    network_rate: int | None = None      # bytes/s each way on the container's veth
    rootfs: str | None = None            # None: the host's system directories, read-only
    image: str | None = None             # an image of the store; None: the host's (`host`)
    store: str | None = None             # that store's directory; None: the default one
    entrypoint: str | None = None        # --entrypoint: replaces the image's ("" clears it)
    keep_dir: str | None = None          # the writable layer is copied there at the end
    rm: bool = False                     # --rm: the container does not stay after it exits
    keep: bool = False                   # --keep: it stays (ps -a, diff, commit, logs)
    volumes: tuple[Volume, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None           # None: the image's WorkingDir, else /
    read_only: bool = False
    storage: int = DEFAULT_STORAGE       # bytes the run may write to its root (tmpfs upper)
    host_secrets: bool = False           # show the host's files that are not world-readable
    user: tuple[int, int] | None = None
    timeout: float | None = None
    raise_error: bool = True
    strict: bool = False                 # refuse to run when a limit cannot be enforced
    name: str | None = None
    out_var: str | None = None           # --out VAR / --err VAR, as %%script
    err_var: str | None = None
    # None: not given, so the magic's %config (ContainerMagics.plot, .interval) decides
    plot: bool | None = None
    interval: float | None = None        # seconds between samples of the cgroup counters
    unconfined: bool = False             # no namespaces, no overlay: where the host forbids them
    seccomp: bool = True                 # Docker's default profile (--security-opt seccomp=...)
    profile: bool = False                # time every step of the run (teaching, benchmarks)
    # A Python cell run through IPython inside, as a notebook cell (the magic: nsmagic.cell);
    # False: plain `python -` reading the script (the CLI, the API).
    ipython: bool = False
    inputs: tuple[str, ...] = ()         # --input: notebook variables copied into the cell
    outputs: tuple[str, ...] = ()        # --output: the cell's variables copied back

    def replace(self, **changes) -> Spec:
        return dataclasses.replace(self, **changes)

    def container_part(self) -> Spec:
        """This spec less what only one run uses (its script, name, timeout, what to show):
        two runs with equal parts get equal containers."""
        return dataclasses.replace(self, **{f.name: f.default for f in dataclasses.fields(self)
                                            if f.name in PER_RUN})

    @property
    def is_python_cell(self) -> bool:
        """No command: the script is Python (on an image, the image's python3); on an image
        with no script either, the image's own command runs."""
        return not self.command and (self.image is None or bool((self.script or "").strip()))

    @property
    def sample_interval(self) -> float:
        return self.interval if self.interval is not None else DEFAULT_INTERVAL

    @classmethod
    def from_argv(cls, argv: list[str] | str, script: str | None = None,
                  parser: argparse.ArgumentParser | None = None) -> Spec:
        if isinstance(argv, str):
            try:
                argv = shlex.split(argv)
            except ValueError as err:
                raise SpecError(f"cannot split the options: {err}; check the quotes.") from err
        parser = parser or build_parser()
        args = parser.parse_args(argv)
        return cls.from_args(args, script)

    @classmethod
    def from_run_args(cls, args: argparse.Namespace) -> Spec:
        """`nsmagic run`'s arguments, Docker's form too: IMAGE [COMMAND...] after the options
        (`-- COMMAND` runs on the default image)."""
        words = list(args.command or ())
        if words and words[0] != "--" and args.image is None:
            args.image, args.command = words[0], words[1:]
        return cls.from_args(args)

    @classmethod
    def from_args(cls, args: argparse.Namespace, script: str | None = None) -> Spec:
        command = list(args.command or ())
        if command and command[0] == "--":
            command = command[1:]
        spec = cls(
            command=tuple(command),
            script=script,
            memory=parse_size(args.memory, "--mem") if args.memory is not None else None,
            cpus=_parse_cpus(args.cpus),
            pids=_parse_pids(args.pids),
            **_parse_io(args),
            hostname=args.hostname,
            network=args.network,
            publish=tuple(parse_port(p) for p in args.publish),
            network_rate=parse_rate(args.network_rate) if args.network_rate else None,
            rootfs=args.rootfs,
            image=None if args.image in (None, "host") else args.image,
            entrypoint=args.entrypoint,
            rm=args.rm,
            keep=args.keep,
            volumes=tuple(_parse_volume(v) for v in args.volume),
            env=tuple(_parse_env(e) for e in args.env),
            workdir=args.workdir,
            read_only=args.read_only,
            storage=_parse_storage_opts(args.storage_opt),
            host_secrets=args.host_secrets,
            user=_parse_user(args.user),
            timeout=args.timeout,
            raise_error=not getattr(args, "no_raise_error", False),
            strict=args.strict,
            unconfined=args.unconfined,
            seccomp=_parse_security_opts(args.security_opt),
            profile=args.profile,
            name=args.name,
            out_var=getattr(args, "out", None),
            err_var=getattr(args, "err", None),
            plot=False if getattr(args, "no_plot", False) else None,
            interval=getattr(args, "interval", None),
            inputs=_parse_names(getattr(args, "input", None)),
            outputs=_parse_names(getattr(args, "output", None)),
        )
        validate(spec)
        return spec


def _parse_cpus(text):
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"--cpus {text!r} is not a number; give a share of cores such as 0.5 or 2.")
    if value != value:   # nan compares false with every bound
        raise SpecError(f"--cpus {text!r} is not a number; give a share of cores such as 0.5.")
    return value


def _parse_pids(text):
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise SpecError(f"--pids {text!r} is not a whole number; give a process limit such as 64.")


def _parse_io(args: argparse.Namespace) -> dict:
    """Docker's --device-{read,write}-{bps,iops} DEVICE:RATE and --blkio-weight N."""
    found = {}
    for name in ("read_bps", "write_bps", "read_iops", "write_iops"):
        flag = "--device-" + name.replace("_", "-")
        found["device_" + name] = tuple(_parse_device_rate(text, flag) for text in
                                        getattr(args, "device_" + name, None) or ())
    weight = getattr(args, "blkio_weight", None)
    found["blkio_weight"] = None if weight is None else _whole(weight, "--blkio-weight", "500")
    return found


def _parse_device_rate(text: str, flag: str) -> DeviceRate:
    path, sep, rate = text.rpartition(":")
    example = "/dev/sda:100" if flag.endswith("iops") else "/dev/sda:10mb"
    if not sep or not path or not rate:
        raise SpecError(f"{flag} {text!r} is not DEVICE:RATE; give a block device and a rate, "
                        f"such as {flag} {example}.")
    if flag.endswith("iops"):
        value = _whole(rate, f"{flag} {path}:", "100")
        if value < 1:
            raise SpecError(f"{flag} {text}: the rate must be at least 1 operation a second.")
    else:
        value = parse_size(rate, f"{flag} {path}:")
    major, minor = _block_device(path, flag)
    return DeviceRate(path, major, minor, value)


def _whole(text: str, what: str, example: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SpecError(f"{what} {text!r} is not a whole number; give one such as "
                        f"{example}.") from None


def _block_device(path: str, flag: str) -> tuple[int, int]:
    """The device's major:minor, which the kernel's limits name; whole disks only (the
    kernel refuses a partition's)."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise SpecError(f"{flag} {path}: {err.strerror.lower()}; give a block device such as "
                        "/dev/sda (lsblk lists them).") from None
    if not stat.S_ISBLK(st.st_mode):
        raise SpecError(f"{flag} {path} is not a block device; give a disk such as /dev/sda "
                        "(lsblk lists them).")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    sysfs = f"/sys/dev/block/{major}:{minor}"
    if os.path.exists(f"{sysfs}/partition"):
        disk = os.path.basename(os.path.dirname(os.path.realpath(sysfs)))
        raise SpecError(f"{flag} {path} is a partition, and the kernel limits whole disks "
                        f"only; give its disk, /dev/{disk}.")
    return major, minor


def _parse_volume(text: str) -> Volume:
    parts = text.split(":")
    if len(parts) == 3 and set(parts[2].split(",")) <= set(VOLUME_OPTIONS):
        source, target, mode = parts
    elif len(parts) == 2:
        (source, target), mode = parts, "rw"
    else:
        raise SpecError(f"-v {text!r} is not SRC:DST or SRC:DST:OPTIONS (OPTIONS from "
                        f"{', '.join(VOLUME_OPTIONS)}, comma-separated); give a host path and "
                        "a container path, e.g. -v /data:/data:ro.")
    options = set(mode.split(","))
    if {"ro", "rw"} <= options:
        raise SpecError(f"-v {text!r} says both ro and rw; keep one.")
    source = os.path.abspath(os.path.expanduser(source))
    if not os.path.exists(source):
        raise SpecError(f"-v {text!r}: the host path {source} does not exist; "
                        "create it or fix the path.")
    if not target.startswith("/") or "\0" in target:
        raise SpecError(f"-v {text!r}: the container path {target!r} must be absolute, "
                        "such as /data.")
    return Volume(source, os.path.normpath(target), "ro" in options, "dev" in options,
                  "suid" in options)


def _parse_names(text: str | None) -> tuple[str, ...]:
    """--input/--output: a comma list of names, each once."""
    if not text:
        return ()
    return tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))


def _parse_storage_opts(texts: list[str]) -> int:
    """Docker's --storage-opt size=SIZE; the only option there is here."""
    size = DEFAULT_STORAGE
    for text in texts:
        key, sep, value = text.partition("=")
        if key != "size" or not sep:
            raise SpecError(f"--storage-opt {text!r} is not known; the one storage option is "
                            "size=SIZE, e.g. --storage-opt size=2G.")
        size = parse_size(value, "--storage-opt size")
        if size < 4 << 20:
            raise SpecError(f"--storage-opt {text!r} is too small to build a root in; give "
                            "at least 4M.")
    return size


def _parse_env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not _ENV_NAME.match(name):
        raise SpecError(f"-e {text!r}: {name!r} is not a variable name; write NAME=value.")
    if not sep:  # Docker: `-e NAME` passes the host's value through
        value = os.environ.get(name, "")
    return name, value


def _parse_user(text):
    if text is None:
        return None
    uid, _, gid = text.partition(":")
    try:
        uid_n = int(uid)
        gid_n = int(gid) if gid else uid_n
    except ValueError:
        raise SpecError(f"--user {text!r} is not UID[:GID]; give numbers such as 1000:1000.")
    if uid_n < 0 or gid_n < 0:
        raise SpecError(f"--user {text!r} must not be negative; give numbers such as 1000:1000.")
    return uid_n, gid_n


def _parse_security_opts(values: list[str]) -> bool:
    """Docker's --security-opt values nsmagic knows; returns whether the seccomp filter is
    on. no-new-privileges is always set here, so it is taken and changes nothing."""
    seccomp = True
    for text in values:
        key, _, value = text.replace(":", "=", 1).partition("=")
        key, value = key.strip().lower(), value.strip()
        if key == "seccomp" and value == "unconfined":
            seccomp = False
        elif key == "seccomp" and value == "builtin":   # Docker's name for its default
            seccomp = True
        elif key == "seccomp":
            raise SpecError(f"--security-opt {text!r}: nsmagic has Docker's default profile "
                            "only, not profiles from files; use seccomp=unconfined to turn "
                            "it off, or leave the option out.")
        elif key == "no-new-privileges" and value.lower() in ("", "true"):
            continue
        elif key == "no-new-privileges":
            raise SpecError(f"--security-opt {text!r}: nsmagic always sets no_new_privs (its "
                            "capability drop and seccomp filter rely on it); leave it out.")
        else:
            raise SpecError(f"--security-opt {text!r} is not known; nsmagic takes "
                            "seccomp=unconfined (and no-new-privileges, always on).")
    return seccomp


# Named checks, run in order, as runc's validator does; each raises SpecError with one sentence.

def _check_memory(spec: Spec):
    if spec.memory is None:
        return
    if spec.memory < MIN_MEMORY:
        raise SpecError(f"--mem {format_size(spec.memory)} is below 6 MiB, the least a container "
                        "needs to start (Docker's minimum too); give at least 6M.")
    total = host_memory()
    if total and spec.memory > total:
        raise SpecError(f"--mem {format_size(spec.memory)} is more than the "
                        f"{format_size(total)} of memory this machine has; give at most "
                        f"{total >> 20}M.")


def host_memory() -> int | None:
    """MemTotal, in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_cpus(spec: Spec):
    if spec.cpus is None:
        return
    if spec.cpus < MIN_CPUS:
        raise SpecError(f"--cpus {spec.cpus:g} is below {MIN_CPUS}, the smallest quota (1 % of "
                        "a core); give a share of cores such as 0.5.")
    cores = os.cpu_count() or 1
    if spec.cpus > cores:
        raise SpecError(f"--cpus {spec.cpus:g} is more than the {cores} cores this machine has; "
                        f"give at most {cores}.")


def _check_pids(spec: Spec):
    if spec.pids is not None and spec.pids < 1:
        raise SpecError(f"--pids {spec.pids} must be at least 1; give a process limit such as "
                        "64.")


def _check_blkio_weight(spec: Spec):
    low, high = BLKIO_WEIGHTS
    if spec.blkio_weight is not None and not low <= spec.blkio_weight <= high:
        raise SpecError(f"--blkio-weight {spec.blkio_weight} is not between {low} and {high}; "
                        "give a relative weight such as 500.")


def _check_rootfs(spec: Spec):
    if spec.rootfs is None:
        return
    if not os.path.isdir(spec.rootfs):
        raise SpecError(f"--rootfs {spec.rootfs}: no such directory; give a directory that holds "
                        "a root filesystem (for example one unpacked from busybox or an image).")


def _check_hostname(spec: Spec):
    if spec.hostname is not None and not _HOSTNAME.match(spec.hostname):
        raise SpecError(f"--hostname {spec.hostname!r} is not a valid host name; use letters, "
                        "digits and '-', at most 63 characters.")


def _check_network(spec: Spec):
    from .net import modes
    mode = modes.parse(spec.network)
    if mode.bridged and mode.name != modes.DEFAULT_BRIDGE:
        from .net import networks
        if not networks.exists(mode.name):
            raise SpecError(f"--network {spec.network!r} is not known; use none, host, "
                            "bridge, pasta, container:NAME or a network from `nsmagic network "
                            f"ls` (`nsmagic network create {mode.name}` makes one).")
    if mode.kind == "pasta":
        from .net import rootless
        rootless.check(spec.publish)
    if spec.unconfined and mode.kind not in ("none", "host"):
        raise SpecError(f"--unconfined runs in the host's network, not on --network "
                        f"{spec.network}; drop one of them.")
    if spec.publish and mode.kind not in ("bridge", "pasta"):
        raise SpecError(f"-p publishes a port of a container on a bridge, and --network "
                        f"{spec.network} has none; add --network bridge.")
    if spec.network_rate and mode.kind != "bridge":
        raise SpecError(f"--network-rate limits a container's veth, and --network "
                        f"{spec.network} has none; use --network bridge (as root).")
    seen = set()
    for port in spec.publish:
        key = (port.host_ip, port.host_port, port.protocol)
        if port.host_port and key in seen:
            raise SpecError(f"-p publishes host port {port.host_port}/{port.protocol} twice; "
                            "give each its own host port.")
        seen.add(key)


def _check_image(spec: Spec):
    if spec.image is not None and spec.rootfs is not None:
        raise SpecError(f"--rootfs and the image {spec.image} both name the root; keep one.")
    if spec.image is not None:
        from .images.reference import parse
        if not spec.image.startswith("sha256:"):
            parse(spec.image)   # a bad name says so before anything starts


def _check_workdir(spec: Spec):
    if spec.workdir is not None and not spec.workdir.startswith("/"):
        raise SpecError(f"-w {spec.workdir!r} must be an absolute path inside the container, "
                        "such as /tmp.")


def _check_timeout(spec: Spec):
    if spec.timeout is not None and not spec.timeout > 0:
        raise SpecError(f"--timeout {spec.timeout} must be more than 0 seconds.")


def _check_interval(spec: Spec):
    if spec.interval is not None and not 0.02 <= spec.interval <= 60:
        raise SpecError(f"--interval {spec.interval} must be between 0.02 and 60 seconds.")


def _check_variable_names(spec: Spec):
    for flag, var in (("--out", spec.out_var), ("--err", spec.err_var)):
        if var is not None and not var.isidentifier():
            raise SpecError(f"{flag} {var!r} is not a Python variable name.")
    for flag, names in (("--input", spec.inputs), ("--output", spec.outputs)):
        for name in names:
            if not name.isidentifier():
                raise SpecError(f"{flag} {name!r} is not a Python variable name; give names "
                                "separated by commas, such as --input x,y.")
        if names and spec.command:
            raise SpecError(f"{flag} passes Python variables, and this cell runs "
                            f"{spec.command[0]}; drop {flag} or the command.")


def _check_keep(spec: Spec):
    if spec.rm and spec.keep:
        raise SpecError("--rm and --keep contradict each other; keep one.")


def _check_name(spec: Spec):
    if spec.name is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", spec.name):
        raise SpecError(f"--name {spec.name!r} is not a valid name; use letters, digits, '_', "
                        "'.' and '-'.")


CHECKS = [_check_memory, _check_cpus, _check_pids, _check_blkio_weight, _check_rootfs,
          _check_image, _check_hostname, _check_network, _check_workdir, _check_timeout,
          _check_interval, _check_variable_names, _check_name, _check_keep]


def validate(spec: Spec) -> Spec:
    for check in CHECKS:
        check(spec)
    return spec


class OptionParser(argparse.ArgumentParser):
    """argparse that raises SpecError with one sentence instead of exiting the process."""

    def error(self, message):
        raise SpecError(f"{message}; see `--help` for the options.")


class _Formatter(argparse.HelpFormatter):
    """argparse's, with the width given: without one it imports shutil (and with it lzma
    and bz2) for the terminal's size at every add_argument, ~2.5 ms of every CLI start."""

    def __init__(self, prog: str) -> None:
        try:
            width = int(os.environ.get("COLUMNS", "")) - 2
        except ValueError:
            width = 98
        super().__init__(prog, width=width)


DESCRIPTIONS = {
    "cell": "Run the cell (or COMMAND with the cell as its script) in fresh Linux namespaces "
            "under cgroup limits, on an overlay root.",
    "cli": "Run COMMAND (no COMMAND: Python, reading the script from stdin) in fresh Linux "
           "namespaces under cgroup limits, on an overlay root; exit with its status.",
}


@functools.lru_cache(maxsize=None)   # built once: ~0.4 ms, paid by every cell otherwise
def build_parser(parser_class=OptionParser, prog="%%container",
                 face: str = "cell") -> argparse.ArgumentParser:
    """The one option set, Docker's flag names where the concept is the same. `face` is
    "cell" (the magic: capture and plot options) or "cli" (nsmagic run: --json)."""
    p = parser_class(prog=prog, add_help=False, formatter_class=_Formatter,
                     description=DESCRIPTIONS[face])
    _limit_options(p.add_argument_group("limits (cgroups)"))
    _root_options(p.add_argument_group("root file system and volumes"))
    _process_options(p.add_argument_group("the process"), face)
    _security_options(p.add_argument_group("security"))
    if face == "cell":
        _cell_options(p.add_argument_group("the notebook"))
    p.add_argument("--help", action="help", help="show this help")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="program to run, the cell is its script (default: Python, through "
                        "IPython)" if face == "cell" else "program to run and its arguments "
                        "(default: Python, reading the script from stdin)")
    return p


def _limit_options(g) -> None:
    g.add_argument("-m", "--mem", "--memory", dest="memory", metavar="SIZE",
                   help="memory limit, e.g. 100M, 1.5G (swap held at 0)")
    g.add_argument("--cpus", metavar="N", help="CPU quota in cores, e.g. 0.5")
    g.add_argument("--pids", "--pids-limit", dest="pids", metavar="N",
                   help="maximum number of processes")
    g.add_argument("--device-read-bps", action="append", metavar="DEV:RATE",
                   help="read rate limit on a block device, e.g. /dev/sda:10mb")
    g.add_argument("--device-write-bps", action="append", metavar="DEV:RATE",
                   help="write rate limit on a block device, e.g. /dev/sda:10mb")
    g.add_argument("--device-read-iops", action="append", metavar="DEV:N",
                   help="read operations per second on a block device")
    g.add_argument("--device-write-iops", action="append", metavar="DEV:N",
                   help="write operations per second on a block device")
    g.add_argument("--blkio-weight", metavar="N",
                   help="block I/O weight relative to other groups, 10-1000")


def _root_options(g) -> None:
    g.add_argument("--rootfs", metavar="DIR",
                   help="directory used as the read-only lower layer (default: the host's "
                        "system directories)")
    g.add_argument("--image", metavar="NAME",
                   help="run on this image's layers, with its command and environment "
                        "(default: host, the host's system directories)")
    g.add_argument("--entrypoint", metavar="CMD",
                   help="replace the image's Entrypoint (\"\" clears it)")
    g.add_argument("-v", "--volume", action="append", default=[],
                   metavar="SRC:DST[:ro,dev,suid]", help="bind a host path into the container "
                   "(nosuid, nodev unless asked; ro read-only all the way down)")
    g.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="set an environment variable")
    g.add_argument("-w", "--workdir", metavar="DIR",
                   help="working directory inside (default: the image's, else /)")
    g.add_argument("--read-only", action="store_true", help="mount the root read-only")
    g.add_argument("--storage-opt", action="append", default=[], metavar="size=SIZE",
                   help="what the run may write to its root (the upper layer, a tmpfs that "
                        "counts against --mem), default size=1G")
    g.add_argument("--host-secrets", action="store_true",
                   help="show the host's files that are not world-readable (/etc/shadow, "
                        "keys...), which the default root hides")


def _process_options(g, face: str) -> None:
    g.add_argument("--hostname", "-h", metavar="NAME", help="host name inside")
    g.add_argument("--network", "--net", default="none", metavar="MODE",
                   help="none (own namespace, only lo; the default), host, bridge (the "
                        "bridge nsmagic0, outbound NAT), NAME (a network made with `nsmagic "
                        "network create`), container:NAME (share NAME's), pasta (rootless)")
    g.add_argument("-p", "--publish", action="append", default=[],
                   metavar="[IP:]HOST:CONTAINER[/udp]",
                   help="publish a container port on the host, e.g. 8080:80")
    g.add_argument("--network-rate", metavar="RATE",
                   help="limit the container's network traffic each way, e.g. 10mbit or 1mb "
                        "(a tc token bucket on its veth)")
    g.add_argument("-u", "--user", metavar="UID[:GID]", help="run as this user inside")
    g.add_argument("--timeout", type=_float_arg("--timeout"), metavar="SECONDS",
                   help="kill the container after this long")
    g.add_argument("--name", metavar="NAME", help="a name for the container (it then stays "
                   "after it exits: ps -a, diff, commit, logs, rm)")
    g.add_argument("--rm", action="store_true", help="remove the container when it exits "
                   "(on the CLI an image's container stays otherwise, as Docker's)")
    g.add_argument("--keep", action="store_true", help="keep the container after it exits")
    g.add_argument("--profile", action="store_true",
                   help="print how long each step took: fork, namespaces, cgroup, mounts, "
                        "pivot_root, exec, teardown")
    if face == "cell":
        g.add_argument("--no-raise-error", action="store_true",
                       help="do not raise ContainerError when the program exits non-zero")
    if face == "cli":
        g.add_argument("--json", action="store_true",
                       help="print the result as one JSON object on the last line of stdout")
        g.add_argument("-d", "--detach", action="store_true",
                       help="run in the background under a monitor process; print its name")
        g.add_argument("--rm-on-exit", action="store_true",
                       help="with -d: stop and remove it when the process that started it "
                            "(a shell, a notebook's kernel) exits")


def _security_options(g) -> None:
    g.add_argument("--strict", action="store_true",
                   help="fail instead of running when a limit cannot be enforced")
    g.add_argument("--security-opt", action="append", default=[], metavar="OPT",
                   help="seccomp=unconfined: no seccomp filter (Docker's default profile is "
                        "loaded otherwise)")
    g.add_argument("--unconfined", action="store_true",
                   help="no namespaces and no overlay (for hosts that forbid them): "
                        "writes reach the host")


def _cell_options(g) -> None:
    g.add_argument("--out", metavar="VAR", help="store stdout in this variable")
    g.add_argument("--err", metavar="VAR", help="store stderr in this variable")
    g.add_argument("--input", metavar="NAMES",
                   help="notebook variables copied into the cell, e.g. x,df (pickled)")
    g.add_argument("--output", metavar="NAMES",
                   help="cell variables copied back into the notebook at its end (plain "
                        "data only: numbers, text, containers, NumPy, pandas...)")
    g.add_argument("--no-plot", action="store_true", help="no live plot")
    g.add_argument("--interval", type=_float_arg("--interval"), metavar="SECONDS",
                   help="seconds between samples of the cgroup counters")


def _float_arg(flag):
    def convert(text):
        try:
            return float(text)
        except ValueError:
            raise SpecError(f"{flag} {text!r} is not a number of seconds.") from None
    return convert


__all__ = ["DeviceRate", "OptionParser", "Port", "Spec", "Volume", "build_parser", "format_size",
           "host_memory", "parse_size", "validate"]
