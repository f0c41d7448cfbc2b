"""Every option of a run, parsed and validated once; shared by the magic and the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import shlex
from dataclasses import dataclass

from .errors import SpecError

NETWORKS = ("none", "host")
DEFAULT_INTERVAL = 0.25   # seconds between samples of the cgroup counters
DEFAULT_STORAGE = 1 << 30  # bytes a run may write to its root, as --storage-opt size=1G
VOLUME_OPTIONS = ("ro", "rw", "dev", "suid")
# Spec fields that shape one run's handling, not its container (see Spec.container_part).
PER_RUN = ("script", "timeout", "raise_error", "strict", "name", "out_var", "err_var", "plot",
           "interval", "profile", "inputs", "outputs")

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
class Spec:
    """What to run and how; frozen so the parent and the child read the same thing."""

    command: tuple[str, ...] = ()        # empty: the cell is Python, run by the kernel's Python
    script: str | None = None            # the cell body, fed on stdin (as IPython's %%script does)
    memory: int | None = None            # bytes; swap is held at 0 so the limit is real
    cpus: float | None = None
    pids: int | None = None
    hostname: str | None = None
    network: str = "none"
    rootfs: str | None = None            # None: the host's system directories, read-only
    volumes: tuple[Volume, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = "/"
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
        return not self.command

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
            hostname=args.hostname,
            network=args.network,
            rootfs=args.rootfs,
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
    if not value > 0:
        raise SpecError(f"--cpus {text} must be more than 0; give a share of cores such as 0.5.")
    cores = os.cpu_count() or 1
    if value > cores:
        raise SpecError(f"--cpus {text} is more than the {cores} cores this machine has; "
                        f"give at most {cores}.")
    return value


def _parse_pids(text):
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise SpecError(f"--pids {text!r} is not a whole number; give a process limit such as 64.")
    if value < 1:
        raise SpecError(f"--pids {text} must be at least 1; give a process limit such as 64.")
    return value


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


# Named checks, run in order, as runc's validator does; each raises SpecError with one sentence.

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
    if spec.network not in NETWORKS:
        raise SpecError(f"--network {spec.network!r} is not known; use one of: "
                        f"{', '.join(NETWORKS)}.")


def _check_workdir(spec: Spec):
    if not spec.workdir.startswith("/"):
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


def _check_name(spec: Spec):
    if spec.name is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", spec.name):
        raise SpecError(f"--name {spec.name!r} is not a valid name; use letters, digits, '_', "
                        "'.' and '-'.")


CHECKS = [_check_rootfs, _check_hostname, _check_network, _check_workdir, _check_timeout,
          _check_interval, _check_variable_names, _check_name]


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
    p.add_argument("-m", "--mem", "--memory", dest="memory", metavar="SIZE",
                   help="memory limit, e.g. 100M, 1.5G (swap held at 0)")
    p.add_argument("--cpus", metavar="N", help="CPU quota in cores, e.g. 0.5")
    p.add_argument("--pids", "--pids-limit", dest="pids", metavar="N",
                   help="maximum number of processes")
    p.add_argument("--hostname", "-h", metavar="NAME", help="host name inside")
    p.add_argument("--network", "--net", default="none", metavar="MODE",
                   help="none (own namespace, only lo) or host")
    p.add_argument("--rootfs", metavar="DIR",
                   help="directory used as the read-only lower layer (default: the host's "
                        "system directories)")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]",
                   help="bind a host path into the container")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="set an environment variable")
    p.add_argument("-w", "--workdir", default="/", metavar="DIR", help="working directory inside")
    p.add_argument("--read-only", action="store_true", help="mount the root read-only")
    p.add_argument("--storage-opt", action="append", default=[], metavar="size=SIZE",
                   help="what the run may write to its root (the upper layer, a tmpfs that "
                        "counts against --mem), default size=1G")
    p.add_argument("--host-secrets", action="store_true",
                   help="show the host's files that are not world-readable (/etc/shadow, "
                        "keys...), which the default root hides")
    p.add_argument("-u", "--user", metavar="UID[:GID]", help="run as this user inside")
    p.add_argument("--timeout", type=_float_arg("--timeout"), metavar="SECONDS",
                   help="kill the container after this long")
    p.add_argument("--name", metavar="NAME", help="a name for the run")
    if face == "cell":
        p.add_argument("--no-raise-error", action="store_true",
                       help="do not raise ContainerError when the program exits non-zero")
    p.add_argument("--strict", action="store_true",
                   help="fail instead of running when a limit cannot be enforced")
    p.add_argument("--profile", action="store_true",
                   help="print how long each step took: fork, namespaces, cgroup, mounts, "
                        "pivot_root, exec, teardown")
    p.add_argument("--unconfined", action="store_true",
                   help="no namespaces and no overlay (for hosts that forbid them): "
                        "writes reach the host")
    if face == "cli":
        p.add_argument("--json", action="store_true",
                       help="print the result as one JSON object on the last line of stdout")
    if face == "cell":
        p.add_argument("--out", metavar="VAR", help="store stdout in this variable")
        p.add_argument("--err", metavar="VAR", help="store stderr in this variable")
        p.add_argument("--input", metavar="NAMES",
                       help="notebook variables copied into the cell, e.g. x,df (pickled)")
        p.add_argument("--output", metavar="NAMES",
                       help="cell variables copied back into the notebook at its end (plain "
                            "data only: numbers, text, containers, NumPy, pandas...)")
        p.add_argument("--no-plot", action="store_true", help="no live plot")
        p.add_argument("--interval", type=_float_arg("--interval"), metavar="SECONDS",
                       help="seconds between samples of the cgroup counters")
    p.add_argument("--help", action="help", help="show this help")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="program to run, the cell is its script (default: Python, through "
                        "IPython)" if face == "cell" else "program to run and its arguments "
                        "(default: Python, reading the script from stdin)")
    return p


def _float_arg(flag):
    def convert(text):
        try:
            return float(text)
        except ValueError:
            raise SpecError(f"{flag} {text!r} is not a number of seconds.") from None
    return convert


__all__ = ["OptionParser", "Spec", "Volume", "build_parser", "format_size", "parse_size",
           "validate"]
