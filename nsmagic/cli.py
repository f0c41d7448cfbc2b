"""The shell face: `nsmagic run [options] -- COMMAND`, `nsmagic info`. Same spec, same core."""

from __future__ import annotations

import json
import sys

from .errors import NsmagicError, SpecError
from .spec import Spec, build_parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "run":
            return _run(rest)
        if command == "ps":
            from .ps import table
            print(table())
            return 0
        if command == "info":
            from .info import gather, report
            info = gather()
            print(json.dumps(info) if "--json" in rest else report(info))
            return 0
        raise SpecError(f"{command!r} is not an nsmagic command; use `nsmagic run`, "
                        "`nsmagic info` or `nsmagic ps`.")
    except NsmagicError as err:
        print(f"nsmagic: {err}", file=sys.stderr)
        return 125


def _run(argv: list[str]) -> int:
    as_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
    if as_json:
        argv.remove("--json")
    parser = build_parser(prog="nsmagic run", cell_options=False)
    spec = Spec.from_args(parser.parse_args(argv))
    if spec.is_python_cell:   # no command: Python, with the script from stdin
        spec = spec.replace(script=sys.stdin.read())
    from .core import run
    from .runtime.pid1 import Zygote
    Zygote.fork_in_process = True   # this process is small and single-threaded
    try:
        result = run(spec, out=sys.stdout.buffer, err=sys.stderr.buffer)
    except KeyboardInterrupt as stop:
        result = stop.result
        print(f"nsmagic: interrupted; stopped with {result.stopped_by}, nothing left behind.",
              file=sys.stderr)
    if spec.profile:
        print(result.profile_table(), file=sys.stderr)
    if as_json:
        sys.stdout.flush()
        print(json.dumps(result.to_dict()))
    elif result.error:
        print(f"nsmagic: {result.error}", file=sys.stderr)
    return result.exit_code if result.exit_code is not None else 125


USAGE = """usage: nsmagic run [options] [--json] -- COMMAND [ARG...]
       nsmagic info [--json]
       nsmagic ps

run     run COMMAND in fresh namespaces under cgroup limits on an overlay root
        (no COMMAND: Python, reading the script from stdin); exits with its status.
        --json prints the result as one JSON object on the last line of stdout.
info    what this machine can do: kernel, cgroup layout, namespaces, overlayfs.
ps      every running nsmagic container on this machine (any notebook's or shell's).

options of run (nsmagic run --help for all): --mem SIZE --cpus N --pids N --hostname NAME
        --network none|host --rootfs DIR -v SRC:DST[:ro] -e K=V -w DIR --read-only
        --user UID[:GID] --timeout SECONDS --name NAME --strict
"""

if __name__ == "__main__":
    sys.exit(main())
