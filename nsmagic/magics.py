"""The IPython face: %%container (run a cell) and %container info. Thin: parse, delegate to
core.run, show, and fail as a cell fails. All logic lives in spec, core, the runtime (shared
with the CLI) and cell/ (a Python cell as a notebook cell)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_cell_magic, magics_class
from traitlets import Bool, CaselessStrEnum, Float

from . import core
from .cell import host, variables
from .cell.channel import Channel, RemoteError, remote_error
from .cell.variables import VariableError
from .errors import NsmagicError, SpecError
from .spec import OptionParser, Spec, build_parser, format_size


class ContainerError(subprocess.CalledProcessError):
    """A non-zero exit, as %%script raises it; shown as one line, not a traceback. With a
    reason (a command not found, a failure of nsmagic's own), the reason is that line."""

    def __init__(self, result, cell, reason: str | None = None):
        super().__init__(result.exit_code, cell)
        self.result, self.reason = result, reason

    def __str__(self):
        if self.reason:
            return f"{self.reason} (exit {self.returncode})"
        return (f"the container exited with {self.returncode}"
                f"{' (OOM killed)' if self.result.oom_killed else ''}; "
                "pass --no-raise-error to carry on after a failing cell.")

    def _render_traceback_(self):
        return [f"ContainerError: {self}"]


class ContainerInterrupted(KeyboardInterrupt):
    """The stop button (or Ctrl-C) during a container cell: one line, no traceback."""

    def _render_traceback_(self):
        return [str(self)]


class _HelpShown(Exception):
    """--help: the help is printed, and nothing else happens."""


class _MagicParser(OptionParser):
    def error(self, message):
        raise UsageError(f"{message}; see %%container --help.")

    def print_help(self, file=None):
        print(HELP, file=file)

    def exit(self, status=0, message=None):   # argparse's after --help: not SystemExit
        raise _HelpShown()


def _in_kernel() -> bool:
    try:
        from ipykernel.kernelapp import IPKernelApp
    except ImportError:
        return False
    return IPKernelApp.initialized()


def empty_body(lines: list[str]) -> list[str]:
    """A %%container cell with no body (`%%container --help`, `%%container ls /`): IPython
    refuses an empty cell magic before the magic sees it, so the cell calls the magic
    itself, its line expanded as IPython would ({var}). An IPython input transformer."""
    if (not lines or not lines[0].startswith("%%container")
            or any(line.strip() for line in lines[1:])):
        return lines
    line = lines[0][len("%%container"):].strip()
    return [f"get_ipython().find_cell_magic('container')"
            f"(get_ipython().var_expand({line!r}), '')\n"]


@magics_class
class ContainerMagics(Magics):
    """%config ContainerMagics.plot = False makes --no-plot the default, and so on."""

    plot = Bool(True, help="show the live plot unless --no-plot").tag(config=True)
    plot_after = Float(1.0, help="seconds a run lasts before its live plot is shown (a "
                                 "shorter run shows its summary line only)").tag(config=True)
    interval = Float(0.25, help="seconds between samples, unless --interval").tag(config=True)
    plot_backend = CaselessStrEnum(["auto", "widgets", "display"], default_value="auto",
                                   help="live view: ipywidgets dashboard, or a display "
                                        "handle updated with PNGs (what VS Code keeps)"
                                   ).tag(config=True)
    when_unavailable = CaselessStrEnum(
        ["raise", "explain"], default_value="raise",
        help="where this host cannot run a container (no namespaces: Binder, a locked pod): "
             "raise (the cell fails), or explain (print why in one sentence and go on)"
    ).tag(config=True)
    detached_outlive_kernel = Bool(
        False, help="%container run -d: keep detached containers when the kernel exits (as "
                    "Docker's outlive their client); by default they are stopped and removed "
                    "with it (--rm-on-exit), so a restarted notebook finds its names free and "
                    "its ports unpublished").tag(config=True)
    _host_info = None   # probed once per kernel, and only when `explain` needs it
    _ran = False        # the current cell's run is over (for what an interrupt then says)

    @line_cell_magic
    def container(self, line, cell=None):
        if cell is None:
            return self._subcommand(line)
        self._ran = False
        try:
            return self._cell(line, cell)
        except core.Interrupted as stop:
            how = stop.result.stopped_by
            raise ContainerInterrupted(
                "Container was interrupted" + (f" (stopped with {how})" if how else
                                               " before it started")
                + "; every process in it is gone and its cgroup removed.") from None
        except KeyboardInterrupt:   # before or after the run: no traceback of ours either
            raise ContainerInterrupted(
                "Interrupted after the container had ended; _container holds its result."
                if self._ran else "Interrupted before a container was started.") from None

    def _cell(self, line: str, cell: str):
        spec = self._spec(line, cell)
        return None if spec is None else self._run(spec, cell)

    def _run(self, spec: Spec, cell: str):
        if self.when_unavailable == "explain" and not spec.unconfined:
            reason = self._unavailable(spec)
            if reason:
                return self._explain(reason, spec)
        channel = self._channel(spec)
        view = self._live_view(spec) if spec.plot and _in_kernel() else None
        try:
            result = _execute(spec, view.update if view else None, channel)
        except core.Interrupted as stop:
            self._keep(stop.result, spec)
            if view:
                view.finish(stop.result)
            raise
        self._ran = True
        self._keep(result, spec)
        refused = self._take_outputs(spec, result, channel)
        failure = self._failure(spec, result, channel, cell)
        self._show(result, spec, view, failure)
        if failure is None and refused:
            failure = VariableError("\n".join(refused))
        if failure is not None:
            raise failure
        return channel.result if channel else None

    def _show(self, result, spec: Spec, view, failure) -> None:
        """The plot's end and the summary line (not when the line is only the reason the
        cell fails with: that is said once), then --profile's table."""
        if view:
            view.finish(result)
        elif not (isinstance(failure, ContainerError) and failure.reason == result.error
                  and result.summary() == f"nsmagic: {result.error}"):
            print(result.summary(), file=sys.stderr if result.error else sys.stdout)
        if spec.profile:
            print(result.profile_table())

    @cell_magic
    def image(self, line, cell):
        """%%image build NAME [--build-arg K=V] [--no-cache]: the cell is the Dockerfile,
        the context is the notebook's folder; each RUN runs in an nsmagic container."""
        import os
        import shlex

        from .images.commands import build
        words = shlex.split(line)
        if len(words) < 2 or words[0] != "build":
            raise UsageError("%%image build NAME: the cell is the Dockerfile, the context "
                             "the notebook's folder.")
        if self.when_unavailable == "explain":
            reason = self._unavailable(Spec())
            if reason:
                return self._explain(reason, Spec())
        try:
            self._softly(build, ["-t", words[1], *words[2:], os.getcwd()],
                         dockerfile_text=cell, out=sys.stdout, err=sys.stderr)
        except SpecError as err:
            raise UsageError(str(err)) from None

    def _softly(self, fn, *args, **kwargs):
        """An image command; where the host cannot run containers and the notebook asked to
        be told why (when_unavailable = "explain"), its failure is said, not raised: an
        image a cell could not build is missing for the cells after it."""
        try:
            return fn(*args, **kwargs)
        except NsmagicError as err:
            if (self.when_unavailable != "explain" or isinstance(err, SpecError)
                    or not self._unavailable(Spec())):
                raise
            print(f"nsmagic: {err}")

    def _spec(self, line: str, cell: str) -> Spec | None:
        """The cell's options; what it does not say comes from %config. None: --help."""
        try:
            spec = Spec.from_argv(line, script=cell, parser=build_parser(_MagicParser))
        except SpecError as err:
            raise UsageError(str(err)) from None
        except _HelpShown:
            return None
        return spec.replace(plot=self.plot if spec.plot is None else spec.plot,
                            interval=self.interval if spec.interval is None else spec.interval,
                            ipython=True)

    def _channel(self, spec: Spec) -> Channel | None:
        """A Python cell's channel, with its --input pickled (here, before anything starts:
        a variable that cannot go is a sentence, not a container)."""
        if not spec.is_python_cell or spec.image is not None:
            return None   # an image's own command reads the cell as its script
        inputs = variables.pickled(spec.inputs, self.shell.user_ns)
        # this cell's number, for the container's tracebacks ("Cell In[n]"): In holds it
        # already, whether IPython counts the cell before it runs (9) or after (8)
        number = len(self.shell.user_ns.get("In", ())) - 1
        return Channel(spec, inputs, number if number > 0 else self.shell.execution_count,
                       getattr(self.shell, "colors", None))

    def _take_outputs(self, spec: Spec, result, channel) -> list[str]:
        """--output into the notebook; the sentences of those refused (said only when the
        cell itself went well: after an exception, the exception is the story)."""
        if channel is None or not spec.outputs:
            return []
        refused, size = [], 0
        for name in spec.outputs:
            header, data = channel.outputs.get(name, ({"error": "missing"}, b""))
            try:
                self.shell.user_ns[name] = variables.load(name, header, data)
                size += len(data)
            except VariableError as err:
                refused.append(str(err))
        result.profile.append((f"--output loaded ({format_size(size)})", time.monotonic()))
        ok = result.exit_code == 0 and not channel.error and not channel.failure
        return refused if ok else []

    def _failure(self, spec: Spec, result, channel, cell) -> Exception | None:
        """How the cell fails, if it does: the host's own failure, a broken channel, the
        container's exception (its traceback), a non-zero exit (with its reason). With
        --no-raise-error each is said on stderr instead, and the cell goes on."""
        error = None
        if channel and (channel.failure or channel.problem):
            error = ContainerError(result, cell, channel.failure or channel.problem)
        elif channel and channel.error and result.exit_code == host.EXIT_ERROR:
            error = remote_error(**channel.error)
        elif result.exit_code != 0:
            error = ContainerError(result, cell, result.error)
        if error is None or spec.raise_error:
            return error
        if isinstance(error, RemoteError):
            print("\n".join(error.traceback), file=sys.stderr)
        elif error.reason:
            print(f"nsmagic: {error.reason}", file=sys.stderr)
        return None

    def _image_spec(self, rest: str) -> Spec:
        """%container run [options] IMAGE [COMMAND...], as `nsmagic run` takes it."""
        import shlex
        try:
            args = build_parser(_MagicParser).parse_args(shlex.split(rest))
            words = list(args.command or ())
            if words and words[0] != "--" and args.image is None:
                args.image, args.command = words[0], words[1:]
            spec = Spec.from_args(args)
        except (SpecError, ValueError) as err:
            raise UsageError(str(err)) from None
        return spec.replace(plot=self.plot if spec.plot is None else spec.plot,
                            interval=self.interval if spec.interval is None else spec.interval)

    def _keep(self, result, spec) -> None:
        """The result in `_container`, captured output in --out/--err's variables."""
        self.shell.user_ns["_container"] = result
        if spec.out_var:
            self.shell.user_ns[spec.out_var] = result.stdout or ""
        if spec.err_var:
            self.shell.user_ns[spec.err_var] = result.stderr or ""

    def _explain(self, reason: str, spec) -> None:
        print(reason)
        self.shell.user_ns["_container"] = None
        for var in (spec.out_var, spec.err_var):
            if var:
                self.shell.user_ns[var] = ""
        for var in spec.outputs:    # defined, so that the cells after it still run
            self.shell.user_ns[var] = None

    def _unavailable(self, spec):
        from .info import gather, unavailable_reason
        if ContainerMagics._host_info is None:
            ContainerMagics._host_info = gather()
        return unavailable_reason(ContainerMagics._host_info, spec)

    def _live_view(self, spec, widgets=None, delay=None):
        """The live plot; it costs nothing until the run has lasted `plot_after` seconds."""
        from .display import LiveView
        if widgets is None:
            widgets = {"auto": None, "widgets": True, "display": False}[self.plot_backend]
        return LiveView(spec, widgets=widgets,
                        delay=self.plot_after if delay is None else delay)

    def _subcommand(self, line):
        words = line.split()
        if not words or words[0] in ("-h", "--help", "help"):
            print(HELP)
            return
        if words[0] == "info":
            from .info import gather, report
            print(report(gather()))
            return
        if words[0] == "stats" and "--no-stream" not in words:
            return self._stats(words[1:])
        if words[0] == "run" and ("-d" in words or "--detach" in words):
            return self._detach(line)
        if words[0] in DOCKER_COMMANDS:
            return _docker_command(line)
        if words[0] in IMAGE_COMMANDS:
            return self._softly(_image_command, line)
        if words[0] == "layers":
            return self._softly(_layers, words[1:])
        if words[0] == "run":
            return self._run(self._image_spec(line.split(None, 1)[1] if words[1:] else ""),
                             line)
        raise UsageError(f"%container {words[0]!r} is not a subcommand; use: %container info, "
                         f"run [-d], {', '.join(DOCKER_COMMANDS + IMAGE_COMMANDS)}, or "
                         "%%container [options] as a cell magic.")

    def _detach(self, line: str) -> None:
        """`run -d`: a CLI of its own (its monitor must not be a fork of this kernel), tied
        to the kernel (--rm-on-exit) unless detached_outlive_kernel."""
        import shlex
        keep = [] if self.detached_outlive_kernel else ["--rm-on-exit"]
        done = subprocess.run([sys.executable, "-c", CLI, PACKAGE_PARENT, "run", *keep,
                               *shlex.split(line)[1:]], capture_output=True, text=True)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)

    def _stats(self, words):
        """A live plot per running container (any runner's) until interrupted, or for
        --seconds N."""
        from .ps import watch
        seconds = float(words[words.index("--seconds") + 1]) if "--seconds" in words else None
        views, t0 = {}, time.monotonic()

        def show(name, usage, limits, ended):
            if ended:
                print(f"{name} ended.")
                return
            if name not in views:
                limits_spec = Spec(memory=limits.memory, cpus=limits.cpus, pids=limits.pids)
                # display handles, not widgets: these views never finish, and a saved
                # notebook keeps the last PNG of each
                views[name] = (self._live_view(limits_spec, False, delay=0) if _in_kernel()
                               else None)
                print(f"{name}: following (limits: {limits_spec.memory or 'no'} bytes memory, "
                      f"{limits_spec.cpus or 'no'} CPU quota)")
            if views[name]:
                views[name].update(usage)
        try:
            watch(self.interval, show,
                  until=(lambda: time.monotonic() - t0 > seconds) if seconds else None)
        except KeyboardInterrupt:
            pass
        if not views:
            from .ps import none_running
            print(none_running())


# Docker's container and network commands (containers/commands.py, net/commands.py, ps.py);
# rm, logs and inspect there also serve the containers the images branch keeps.
DOCKER_COMMANDS = ("ps", "logs", "exec", "top", "stop", "kill", "start", "restart", "rm",
                   "inspect", "wait", "stats", "network")
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = "import sys; sys.path.insert(0, sys.argv.pop(1)); from nsmagic.cli import entry; entry()"


def _execute(spec: Spec, on_sample, channel):
    """core.run; a cell with --name or --keep stays after it exits (images.containers);
    where --name names a running detached container, the cell runs inside it (an exec,
    core.run_in), so a later cell talks to an earlier one's server."""
    inside = _running_detached(spec.name)
    if inside is not None:
        return core.run_in(inside, spec, out=sys.stdout, err=sys.stderr, on_sample=on_sample)
    if not (spec.keep or spec.name is not None) or spec.rm:
        return core.run(spec, out=sys.stdout, err=sys.stderr, on_sample=on_sample,
                        channel=channel)
    from .images import containers
    return containers.run_kept(spec, core.run, out=sys.stdout, err=sys.stderr,
                               on_sample=on_sample, channel=channel)[0]


IMAGE_COMMANDS = ("images", "image", "rmi", "tag", "history", "load", "save", "container",
                  "diff", "commit", "pull", "push")


def _running_detached(name: str | None):
    if not name:
        return None
    from .containers import records
    try:
        record = records.load(name)
    except NsmagicError:
        return None
    return record if records.detached(record) and records.status(record) == "running" \
        else None


def _docker_command(line: str) -> None:
    """Docker's container and network commands, as the CLI has them (same words, output)."""
    import shlex

    from .cli import main
    main(shlex.split(line))


def _layers(words: list[str]):
    """%container layers IMAGE [CONTAINER]: the layer stack drawn (a PNG, kept in a saved
    notebook); %container layers IMAGE N: layer N's files."""
    from IPython.display import Image as PNG
    from IPython.display import display

    from .images import catalog, draw
    from .images.store import Store
    if not words:
        raise UsageError("%container layers IMAGE [CONTAINER | N]")
    store = Store().ensure()
    image = catalog.find(words[0], store)
    if len(words) > 1 and words[1].isdigit():
        print(draw.layer_table(store, image, int(words[1])))
        return
    import io
    fig = draw.layer_stack(store, image, words[1] if len(words) > 1 else None)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    display(PNG(buf.getvalue()))


def _image_command(line: str) -> None:
    """The CLI's image commands, same words, same output."""
    import shlex

    from .images.commands import commands
    words = shlex.split(line)
    try:
        commands()[words[0]](words[1:])
    except SpecError as err:
        raise UsageError(str(err)) from None


HELP = build_parser(_MagicParser).format_help() + """
Line magic:
  %container info     what this machine can do (kernel, cgroups, namespaces, overlayfs)
  %container ps       every running nsmagic container on this machine, like `docker ps`
                      (a user's own; root sees every user's); -a also the ones that exited
                      and stay (cells with --name or --keep)
  %container stats    a live plot for each of them until interrupted (--seconds N to stop)
  %container run [options] IMAGE [COMMAND...]   an image's own command, as `docker run`
  %container images   the images in the store (also rmi, tag, inspect, history, load, save,
                      image prune, pull, push, rm, diff, commit, logs), as the CLI has them
  %container layers IMAGE [CONTAINER]   the layer stack drawn; IMAGE N: layer N's files
  %container run -d [options] -- COMMAND    a container in the background (its name printed);
                      stopped with the kernel unless ContainerMagics.detached_outlive_kernel
  %container logs|exec|top|stop|kill|start|restart|rm|inspect|wait NAME ...   as Docker's
  %container network create|ls|rm|inspect NAME   user-defined bridge networks
  %%container --name NAME   with a running detached container NAME: the cell runs in it

The last run's result is `_container` (exit_code, oom_killed, memory_peak, cpu_s, ...).
"""
ContainerMagics.container.__doc__ = HELP


__all__ = ["ContainerMagics", "ContainerError", "ContainerInterrupted", "NsmagicError",
           "RemoteError", "VariableError"]
