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
EXIT_INTERRUPTED = 128 + 2   # SIGINT, as a shell reports a program Ctrl-C ended


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command not in COMMANDS:
            raise SpecError(f"{command!r} is not an nsmagic command; use "
                            f"{', '.join('`nsmagic ' + c + '`' for c in COMMANDS)}.")
        return COMMANDS[command](rest)
    except NsmagicError as err:
        print(f"nsmagic: {err}", file=sys.stderr)
        return EXIT_SETUP


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
    spec = Spec.from_args(args)
    if spec.is_python_cell:   # no command: Python, with the script from stdin
        spec = spec.replace(script=sys.stdin.read())
    from . import core
    from .runtime import forkserver
    forkserver.use_in_process()   # this process is small and single-threaded
    signal.signal(signal.SIGINT, signal.default_int_handler)   # now a stop has work to do
    try:
        result = core.run(spec, out=sys.stdout.buffer, err=sys.stderr.buffer)
    except core.Interrupted as stop:
        result = stop.result
        how = (f"stopped with {result.stopped_by}" if result.stopped_by else
               "before the container started")
        print(f"nsmagic: interrupted, {how}; nothing left behind.", file=sys.stderr)
        if result.exit_code is None:
            return EXIT_INTERRUPTED
    if spec.profile:
        print(result.profile_table(), file=sys.stderr)
    if args.json:
        import json
        sys.stdout.flush()
        print(json.dumps(result.to_dict()))
    elif result.error:
        print(f"nsmagic: {result.error}", file=sys.stderr)
    return result.exit_code if result.exit_code is not None else EXIT_SETUP


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
    _parser("nsmagic ps", "every running nsmagic container on this machine").parse_args(argv)
    from .ps import table
    print(table())
    return 0


def _parser(prog: str, description: str):
    from .spec import OptionParser
    return OptionParser(prog=prog, description=description)


COMMANDS = {"run": run, "info": info, "ps": ps}

USAGE = """usage: nsmagic run [options] [--json] -- COMMAND [ARG...]
       nsmagic info [--json]
       nsmagic ps

run     run COMMAND in fresh namespaces under cgroup limits on an overlay root
        (no COMMAND: Python, reading the script from stdin); exits with its status.
        --json prints the result as one JSON object on the last line of stdout.
info    what this machine can do: kernel, cgroup layout, namespaces, overlayfs,
        the seccomp filter.
ps      every running nsmagic container on this machine (any notebook's or shell's).

options of run (nsmagic run --help for all): --mem SIZE --cpus N --pids N
        --device-{read,write}-{bps,iops} DEV:RATE --blkio-weight N --hostname NAME
        --network none|host --rootfs DIR -v SRC:DST[:ro] -e K=V -w DIR --read-only
        --user UID[:GID] --timeout SECONDS --name NAME --strict --profile
        --security-opt seccomp=unconfined (Docker's seccomp profile is loaded otherwise)
"""

if __name__ == "__main__":
    exit_now(main())
