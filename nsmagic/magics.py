"""The IPython face: %%container (run a cell) and %container info. Thin: parse, delegate to
core.run, show. All logic lives in spec, core and the runtime, shared with the CLI."""

from __future__ import annotations

import subprocess
import sys
import time

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from traitlets import Bool, CaselessStrEnum, Float

from . import core
from .errors import NsmagicError, SpecError
from .spec import OptionParser, Spec, build_parser


class ContainerError(subprocess.CalledProcessError):
    """A non-zero exit, as %%script raises it; shown as one line, not a traceback."""

    def __init__(self, result, cell):
        super().__init__(result.exit_code, cell)
        self.result = result

    def __str__(self):
        return (f"the container exited with {self.returncode}"
                f"{' (OOM killed)' if self.result.oom_killed else ''}; "
                "pass --no-raise-error to carry on after a failing cell.")

    def _render_traceback_(self):
        return [f"ContainerError: {self}"]


class _MagicParser(OptionParser):
    def error(self, message):
        raise UsageError(f"{message}; see %%container --help.")


def _in_kernel() -> bool:
    try:
        from ipykernel.kernelapp import IPKernelApp
    except ImportError:
        return False
    return IPKernelApp.initialized()


@magics_class
class ContainerMagics(Magics):
    """%config ContainerMagics.plot = False makes --no-plot the default, and so on."""

    plot = Bool(True, help="show the live plot unless --no-plot").tag(config=True)
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
    _host_info = None   # probed once per kernel, and only when `explain` needs it

    @line_cell_magic
    def container(self, line, cell=None):
        if cell is None:
            return self._subcommand(line)
        spec = self._spec(line, cell)
        if self.when_unavailable == "explain" and not spec.unconfined:
            reason = self._unavailable(spec)
            if reason:
                return self._explain(reason, spec)
        view = self._live_view(spec) if spec.plot and _in_kernel() else None
        try:
            result = core.run(spec, out=sys.stdout, err=sys.stderr,
                              on_sample=view.update if view else None)
        except core.Interrupted as stop:
            self._keep(stop.result, spec)
            if view:
                view.finish(stop.result)
            how = stop.result.stopped_by
            print("Container was interrupted" + (f" (stopped with {how})" if how else
                                                  " before it started")
                  + "; every process in it is gone and its cgroup removed.", file=sys.stderr)
            raise
        self._keep(result, spec)
        if view:
            view.finish(result)
        else:
            print(result.summary(), file=sys.stderr if result.error else sys.stdout)
        if spec.profile:
            print(result.profile_table())
        if result.exit_code != 0 and spec.raise_error:
            raise ContainerError(result, cell)

    def _spec(self, line: str, cell: str) -> Spec:
        """The cell's options; what it does not say comes from %config."""
        try:
            spec = Spec.from_argv(line, script=cell, parser=build_parser(_MagicParser))
        except SpecError as err:
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

    def _unavailable(self, spec):
        from .info import gather, unavailable_reason
        if ContainerMagics._host_info is None:
            ContainerMagics._host_info = gather()
        return unavailable_reason(ContainerMagics._host_info, spec)

    def _live_view(self, spec, widgets=None):
        try:
            from .display import LiveView
        except ImportError:   # no matplotlib: the summary line still comes
            return None
        if widgets is None:
            widgets = {"auto": None, "widgets": True, "display": False}[self.plot_backend]
        return LiveView(spec, widgets=widgets)

    def _subcommand(self, line):
        words = line.split()
        if not words or words[0] in ("-h", "--help", "help"):
            print(HELP)
            return
        if words[0] == "info":
            from .info import gather, report
            print(report(gather()))
            return
        if words[0] == "ps":
            from .ps import table
            print(table())
            return
        if words[0] == "stats":
            return self._stats(words[1:])
        raise UsageError(f"%container {words[0]!r} is not a subcommand; use: %container info, "
                         "ps or stats, or %%container [options] as a cell magic.")

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
                views[name] = self._live_view(limits_spec, False) if _in_kernel() else None
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


HELP = build_parser(_MagicParser).format_help() + """
Line magic:
  %container info     what this machine can do (kernel, cgroups, namespaces, overlayfs)
  %container ps       every running nsmagic container on this machine, like `docker ps`
                      (a user's own only; root sees every user's)
  %container stats    a live plot for each of them until interrupted (--seconds N to stop)

The last run's result is `_container` (exit_code, oom_killed, memory_peak, cpu_s, ...).
"""
ContainerMagics.container.__doc__ = HELP


__all__ = ["ContainerMagics", "ContainerError", "NsmagicError"]
