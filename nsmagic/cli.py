"""The shell face: `nsmagic run [options] -- COMMAND`, `nsmagic info`, `nsmagic ps`. Same
spec, same core as the magic. Imports stay lazy: a cold `nsmagic run` pays only for what a
run needs."""

from __future__ import annotations

import signal

# Until a container exists, Ctrl-C may end this process as it ends any program (quietly,
# nothing to clean up); a KeyboardInterrupt in the middle of an import prints a traceback.
signal.signal(signal.SIGINT, signal.SIG_DFL)

import os  # noqa: E402
import sys  # noqa: E402

from .errors import NsmagicError, SpecError  # noqa: E402

EXIT_SETUP = 125
_stopped_by = [signal.SIGINT]   # the signal that stopped the run: its exit is 128 + it


def stop_on_signals() -> None:
    """From here on a stop has work to do: Ctrl-C, a kill (SIGTERM) and a closed terminal
    (SIGHUP) all stop the container and clean up, as a KeyboardInterrupt does."""
    def stop(signum, _frame):
        _stopped_by[0] = signum
        raise KeyboardInterrupt
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command not in COMMANDS:
            raise SpecError(f"{command!r} is not an nsmagic command; `nsmagic help` lists "
                            "them.")
        return COMMANDS[command](rest)
    except NsmagicError as err:
        print(f"nsmagic: {err}", file=sys.stderr)
        return EXIT_SETUP
    except BrokenPipeError:   # `nsmagic inspect x | head`: the reader has what it wanted
        return 128 + signal.SIGPIPE


def entry() -> None:
    """The `nsmagic` command."""
    exit_now(main())


def exit_now(code: int) -> None:
    """Once the status is known and printed, leave: the interpreter's own teardown (module
    cleanup, garbage collection) would only make the shell wait. What a run left to finish
    is in a process of its own (see runtime.teardown.hand_off)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass   # closed early (`| head`): nothing more to say there
    os._exit(code)


def run(argv: list[str]) -> int:
    from .spec import Spec, build_parser
    args = build_parser(prog="nsmagic run", face="cli").parse_args(argv)
    spec = Spec.from_run_args(args)
    if args.detach:
        return _detached(spec, argv, args)
    if spec.is_python_cell:   # no command: Python, with the script from stdin
        spec = spec.replace(script=sys.stdin.read())
    from . import core
    from .runtime import forkserver
    forkserver.use_in_process()   # this process is small and single-threaded
    stop_on_signals()
    try:
        result = _run(spec)
    except core.Interrupted as stop:
        result = stop.result
        how = (f"stopped with {result.stopped_by}" if result.stopped_by else
               "before the container started")
        print(f"nsmagic: interrupted, {how}; nothing left behind.", file=sys.stderr)
        if result.exit_code is None:
            return 128 + _stopped_by[0]   # as a shell reports a program a signal ended
    if spec.profile:
        print(result.profile_table(), file=sys.stderr)
    if args.json:
        import json
        sys.stdout.flush()
        print(json.dumps(result.to_dict()))
    elif result.error:
        print(f"nsmagic: {result.error}", file=sys.stderr)
    return result.exit_code if result.exit_code is not None else EXIT_SETUP


DETACH_FLAGS = ("-d", "--detach", "--rm", "--rm-on-exit", "--json")


def _detached(spec, argv: list[str], args) -> int:
    """`run -d`: the container under a monitor of its own; its name is printed."""
    if spec.is_python_cell:
        raise SpecError("-d runs a COMMAND in the background (its stdin is empty); give one "
                        "after --, e.g. nsmagic run -d -- python3 -m http.server.")
    from .containers import monitor
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [w for w in argv[:end] if w not in DETACH_FLAGS] + argv[end:]
    record = monitor.detach(spec, kept, auto_remove=args.rm,
                            watch=os.getppid() if args.rm_on_exit else None)
    print(record["name"])
    return 0


def _run(spec):
    """core.run, or for a container that stays (see images.containers) the same run kept."""
    from . import core
    if spec.unconfined or spec.rm or not (spec.image or spec.keep or spec.name):
        return core.run(spec, out=sys.stdout.buffer, err=sys.stderr.buffer)
    from .images import containers
    if not containers.should_keep(spec, cli=True):
        return core.run(spec, out=sys.stdout.buffer, err=sys.stderr.buffer)
    return containers.run_kept(spec, core.run, out=sys.stdout.buffer,
                               err=sys.stderr.buffer)[0]


def info(argv: list[str]) -> int:
    parser = _parser("nsmagic info", "what this machine can do")
    parser.add_argument("--json", action="store_true", help="print it as JSON")
    args = parser.parse_args(argv)
    from .info import gather, report
    facts = gather()
    if args.json:
        import json
        print(json.dumps(facts))
    else:
        print(report(facts))
    return 0


def ps(argv: list[str]) -> int:
    parser = _parser("nsmagic ps", "every running nsmagic container on this machine")
    parser.add_argument("-a", "--all", action="store_true",
                        help="also the containers that exited and stay (until rm), "
                             "detached ones and kept ones")
    args = parser.parse_args(argv)
    from .ps import table
    print(table(all_containers=args.all))
    return 0


def setup_user(argv: list[str]) -> int:
    parser = _parser("nsmagic setup-user", "root: delegate a cgroup subtree to USER, under "
                     "ceilings USER cannot lift")
    parser.add_argument("user", metavar="USER", help="a user name or uid")
    parser.add_argument("-m", "--mem", "--memory", dest="mem", metavar="SIZE",
                        help="ceiling on all of USER's containers together (64M, 2G)")
    parser.add_argument("--cpus", metavar="N", help="ceiling in cores (0.5, 2)")
    parser.add_argument("--pids", "--pids-limit", dest="pids", metavar="N",
                        help="ceiling on processes")
    parser.add_argument("--remove", action="store_true", help="remove USER's subtree")
    parser.add_argument("--kill", action="store_true",
                        help="with --remove: kill what still runs in it")
    args = parser.parse_args(argv)
    from .cgroups import delegation
    if args.remove:
        gone = delegation.remove(args.user, kill=args.kill)
        print(f"removed {len(gone)} groups of {args.user}" + "".join(f"\n  {g}" for g in gone)
              if gone else f"{args.user} had no delegated cgroup here; nothing to remove.")
        return 0
    from .cgroups import Limits
    from .spec import _parse_cpus, _parse_pids, parse_size
    ceiling = Limits(memory=parse_size(args.mem) if args.mem else None,
                     cpus=_parse_cpus(args.cpus), pids=_parse_pids(args.pids))
    made = delegation.setup(args.user, ceiling)
    print(delegation.setup_report(args.user, made, ceiling))
    return 0


def _parser(prog: str, description: str):
    from .spec import OptionParser
    return OptionParser(prog=prog, description=description)


def network(argv: list[str]) -> int:
    from .net.commands import network
    return network(argv)


def _containers() -> dict:
    """Docker's container commands (containers/commands.py), imported when one is used;
    rm, logs and inspect also serve the containers images.containers keeps."""
    def command(name):
        def go(argv):
            from .containers import commands
            return commands.COMMANDS[name](argv)
        return go
    return {name: command(name) for name in ("logs", "exec", "top", "stop", "kill", "start",
                                             "restart", "rm", "inspect", "wait", "stats")}


def kernel(argv: list[str]) -> int:
    from . import kernel as kernels
    return kernels.main(argv)


def _image_command(name: str):
    """An image command (images, rmi, tag, history, image, load, save...), imported only
    when asked for."""
    def command(argv: list[str]) -> int:
        from .images.commands import commands
        return commands()[name](argv)
    return command


def build(argv: list[str]) -> int:
    from .images.commands import build as build_image
    from .runtime import forkserver
    forkserver.use_in_process()   # each RUN clones its PID 1 from this small process
    stop_on_signals()
    return build_image(argv, out=sys.stdout.buffer, err=sys.stderr.buffer)


COMMANDS = {"run": run, "info": info, "ps": ps, "build": build, "setup-user": setup_user,
            "kernel": kernel, "network": network,
            **{name: _image_command(name) for name in (
                "images", "image", "rmi", "tag", "history", "load", "save", "container",
                "diff", "commit", "pull", "push", "login", "logout")},
            **_containers()}

USAGE = """usage: nsmagic run [options] [--json] [-d [--rm] [--rm-on-exit]] -- COMMAND [ARG...]
       nsmagic run [options] [--json] IMAGE [COMMAND [ARG...]]
       nsmagic ps [-a] | logs [-f] [--tail N] NAME | exec [-i] [-t] NAME COMMAND...
       nsmagic stop [-t S] | kill [-s SIG] | start | restart | rm [-f] | wait NAME...
       nsmagic top NAME | inspect NAME|IMAGE... | stats [--no-stream] [NAME...]
       nsmagic network create [--subnet CIDR] NAME | ls | rm NAME | inspect NAME | prune
       nsmagic info [--json]
       nsmagic setup-user USER [--mem SIZE --cpus N --pids N] [--remove [--kill]]
       nsmagic kernel install --name NAME [--user | --prefix DIR] [run options]
       nsmagic images | rmi IMAGE... | tag SOURCE TARGET | history IMAGE
       nsmagic image ls|rm|tag|inspect|history|prune|load|save
       nsmagic load [-i FILE] | save [-o FILE] IMAGE...
       nsmagic build -t NAME [-f FILE] [--build-arg K=V] [--no-cache] DIR
       nsmagic diff CONTAINER | commit CONTAINER NAME
       nsmagic container ls|rm|prune|inspect|diff|commit|logs
       nsmagic pull|push [--insecure] REGISTRY/NAME[:TAG] | login REGISTRY -u USER --password-stdin

run     run COMMAND in fresh namespaces under cgroup limits on an overlay root
        (no COMMAND: Python, reading the script from stdin); exits with its status.
        --json prints the result as one JSON object on the last line of stdout.
        -d: in the background under a monitor process (nsmagic-monitor), which keeps
        its log and records its exit; prints its name. --rm forgets it once it exits;
        --rm-on-exit also stops it when the process that started it exits.
ps      running containers on this machine (any notebook's or shell's); -a: and the
        exited ones kept in the store. stats: their CPU, memory, network I/O, pids.
exec    a command in a running container: every namespace, its cgroup, its root,
        its capabilities and seccomp filter (-t: a terminal, -i: stdin).
network user-defined bridge networks, whose containers find each other by name.
info    what this machine can do: kernel, cgroup layout, namespaces, overlayfs,
        the seccomp filter, networking.
setup-user  (root) give USER a cgroup subtree of their own, on any layout (v2, v1,
        hybrid), under ceilings USER cannot lift (all their containers together);
        USER's nsmagic finds it by itself. --remove takes it away.
kernel install  a kernelspec whose whole kernel runs in a container with these run
        options (--mem, --cpus, --pids, --rootfs, -v ...); interrupt, restart and
        shutdown work; `nsmagic ps` shows it.
images  the images in the store (hello-world and busybox are made on first use, with no
        network; host, the default, is the host's own /usr, /etc and /opt).
load    images from a docker save or OCI archive; save writes one that docker load and
        skopeo read.

options of run (nsmagic run --help for all): --mem SIZE --cpus N --pids N
        --device-{read,write}-{bps,iops} DEV:RATE --blkio-weight N --hostname NAME
        --network none|host|bridge|NAME|container:NAME|pasta -p [IP:]HOST:CONTAINER[/udp]
        --network-rate RATE --rootfs DIR -v SRC:DST[:ro] -e K=V -w DIR --read-only
        --user UID[:GID] --timeout SECONDS --name NAME --strict --profile
        --security-opt seccomp=unconfined (Docker's seccomp profile is loaded otherwise)
"""

if __name__ == "__main__":
    exit_now(main())
