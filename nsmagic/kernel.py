"""A whole Jupyter kernel in an nsmagic container: `nsmagic kernel install --name NAME [run
options]` writes a kernelspec whose argv is `nsmagic kernel run [run options] -- CONNECTION`,
and that runs ipykernel inside a container with those limits.

Design, each choice for a reason:
- The kernel shares the host's network namespace (`--network host`): the frontend connects
  to the ZMQ ports written in the connection file on the host's loopback, and a port a
  kernel binds in a namespace of its own would reach nothing. The connection file is bound
  read-only at its own path.
- `interrupt_mode: message`: the frontend asks the kernel itself (over its control channel)
  instead of signalling the launcher's process group, which holds this runner too: a SIGINT
  there would stop the container, not the cell.
- Shutdown and restart are the kernel's own (shutdown_request); the container ends when its
  kernel does, and this runner with it, with the kernel's status. A SIGTERM to this runner
  (a frontend giving up on a kernel) stops the container as Ctrl-C stops a run.
- A kernel that dies for a reason of nsmagic's (an OOM kill at --mem, the pids limit) says so
  on stderr (the server's log), exits with Docker's status (137), and leaves the sentence
  beside the connection file: the kernel restarted on that file prints it in its first
  cell, so the notebook, not only the log, says why its kernel died.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile

from .errors import SpecError

NOTICE_SUFFIX = ".nsmagic-exit"
# Run in the kernel at start: print the previous kernel's death (if any) in the first cell.
NOTICE_CODE = (
    "import os as _o\n"
    "def _nsmagic_notice(*_a, _text=_o.environ.pop('NSMAGIC_KERNEL_NOTICE', '')):\n"
    "    import sys\n"
    "    get_ipython().events.unregister('pre_run_cell', _nsmagic_notice)\n"
    "    if _text:\n"
    "        print(_text, file=sys.stderr)\n"
    "get_ipython().events.register('pre_run_cell', _nsmagic_notice)\n"
    "del _o\n")


def install(argv: list[str]) -> str:
    """`nsmagic kernel install --name NAME [--display-name TEXT] [--user | --prefix DIR]
    [run options]`; returns where the kernelspec went."""
    from .spec import OptionParser, Spec, build_parser
    p = OptionParser(prog="nsmagic kernel install", add_help=True,
                     description="install a kernelspec whose kernel runs in a container")
    p.add_argument("--name", required=True, help="the kernel's name (letters, digits, -_.)")
    p.add_argument("--display-name", help="what the notebook's kernel picker shows")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", dest="user_install", action="store_true",
                       help="for this user only (~/.local/share/jupyter/kernels)")
    where.add_argument("--prefix", help="under PREFIX/share/jupyter/kernels (default: this "
                                        "Python's environment as root, else --user)")
    args, run_options = p.parse_known_args(argv)
    if not all(c.isalnum() or c in "-_." for c in args.name):
        raise SpecError(f"--name {args.name!r} may hold only letters, digits, '-', '_' and "
                        "'.'; give a name such as python-1g.")
    checked = Spec.from_args(build_parser(prog="nsmagic kernel install", face="cli")
                             .parse_args([*run_options, "--", "true"]))
    if checked.network != "none" and "--network" in run_options:
        raise SpecError("--network is not an option of a kernel: it shares the host's "
                        "network so that its ports reach the frontend; drop --network.")
    spec = {"argv": [sys.executable, "-m", "nsmagic", "kernel", "run", *run_options, "--",
                     "{connection_file}"],
            "display_name": args.display_name or f"Python (nsmagic {' '.join(run_options)})"
                                                   .replace(" )", ")"),
            "language": "python", "interrupt_mode": "message",
            "metadata": {"nsmagic": {"options": run_options}}}
    return _write(args.name, spec, args.user_install or (os.geteuid() != 0 and not args.prefix),
                  args.prefix)


def _write(name: str, spec: dict, user: bool, prefix: str | None) -> str:
    from jupyter_client.kernelspec import KernelSpecManager
    source = tempfile.mkdtemp(prefix="nsmagic-kernelspec-")
    try:
        with open(os.path.join(source, "kernel.json"), "w") as f:
            json.dump(spec, f, indent=1)
        return KernelSpecManager().install_kernel_spec(
            source, name, user=user, prefix=None if user else (prefix or sys.prefix))
    finally:
        shutil.rmtree(source, ignore_errors=True)


def run(argv: list[str]) -> int:
    """`nsmagic kernel run [run options] -- CONNECTION_FILE`: the kernelspec's argv."""
    if "--" not in argv or argv.index("--") != len(argv) - 2:
        raise SpecError("nsmagic kernel run takes run options, then -- and the connection "
                        "file; it is what a kernelspec from `nsmagic kernel install` runs.")
    options, connection = argv[:-2], os.path.abspath(argv[-1])
    from . import core
    from .rootfs.plan import python_prefixes
    from .runtime import forkserver
    from .spec import Spec, build_parser
    notice = _take_notice(connection)
    # the kernel's Python environment, as a Python cell gets it (a command gets only the root)
    python = [w for p in python_prefixes() for w in ("-v", f"{p}:{p}:ro")]
    args = build_parser(prog="nsmagic kernel run", face="cli").parse_args([
        *options, *python, "--network", "host", "-v", f"{connection}:{connection}:ro",
        "-e", f"NSMAGIC_KERNEL_NOTICE={notice}",
        "--", sys.executable, "-m", "ipykernel_launcher", "-f", connection,
        f"--IPKernelApp.exec_lines={json.dumps([NOTICE_CODE])}"])
    spec = Spec.from_args(args)
    forkserver.use_in_process()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # interrupts come as messages
    try:
        result = core.run(spec, out=sys.stdout.buffer, err=sys.stderr.buffer)
    except core.Interrupted as stop:
        return stop.result.exit_code or 0   # stopped from outside (a frontend's SIGTERM)
    if result.exit_code not in (0, None) or result.oom_killed:
        _leave_notice(connection, result)
    return result.exit_code if result.exit_code is not None else 125


def _stop(signum, frame):
    raise KeyboardInterrupt   # core.run stops the container: SIGINT, SIGTERM, SIGKILL


def why_it_died(result) -> str:
    """One sentence: the kernel's container ended, and why."""
    from .spec import format_size
    if result.oom_killed:
        limit = result.memory_limit
        return (f"nsmagic: the kernel was OOM-killed: its container reached its memory limit"
                f"{f' of {format_size(limit)}' if limit else ''} (exit 137); restart it, "
                "and use less memory or install the kernel with a larger --mem.")
    if result.error:
        return f"nsmagic: the kernel's container failed: {result.error}"
    return (f"nsmagic: the kernel exited with {result.exit_code}"
            + (f" (killed by signal {result.exit_code - 128})" if result.exit_code > 128 else "")
            + ".")


def _leave_notice(connection: str, result) -> None:
    sentence = why_it_died(result)
    print(sentence, file=sys.stderr, flush=True)
    try:
        with open(connection + NOTICE_SUFFIX, "w") as f:
            f.write(sentence)
    except OSError:
        pass   # the runtime directory is gone (the server shut down): the log has it


def _take_notice(connection: str) -> str:
    path = connection + NOTICE_SUFFIX
    try:
        with open(path) as f:
            text = f.read().strip()
        os.unlink(path)
    except OSError:
        return ""
    return text.replace("nsmagic: the kernel", "nsmagic: the previous kernel", 1)


def main(argv: list[str]) -> int:
    """`nsmagic kernel install ...` or `nsmagic kernel run ...`."""
    if argv[:1] == ["install"]:
        print(f"installed the kernelspec in {install(argv[1:])}")
        return 0
    if argv[:1] == ["run"]:
        return run(argv[1:])
    raise SpecError("use `nsmagic kernel install --name NAME [run options]` (a kernelspec whose "
                    "kernel runs in a container); `nsmagic kernel run` is what it runs.")
