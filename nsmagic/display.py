"""The live accounting view of a %%container cell: a matplotlib plot of the run's cgroup
counters (CPU and memory, and block I/O once there is some or a limit on it), redrawn a few
times a second while the cell runs, left as a static PNG with a summary table when it ends.

    view = LiveView(spec)            # in the kernel, before the run starts (costs nothing)
    core.run(spec, ..., on_sample=view.update)
    view.finish(result)

A run shorter than `delay` (PLOT_AFTER, 1 s) is not plotted: it ends with its summary line
only, and costs nothing here (no matplotlib, no widgets, no message). A plot of a shorter
run would hold at most four samples, and its first frame (imports, a full draw: ~200 ms
here, 400-900 ms on a slow machine) would cost more than the run. From `delay` on, the view
draws every sample it has kept since the start.

The last frame of a plotted run (fitted axes, the result in its header: a full draw) is made
off the cell's path where the frontend shows display updates that come after the cell's end:
one that allows input (JupyterLab, Notebook, VS Code keep a finished cell's display ids
live). Batch runners (nbclient, nbconvert, papermill) allow none and stop listening when the
cell ends: for them the last frame is made before the cell ends.

Two ways to reach the notebook, same picture:

- display handle (`widgets=False`): one `display_data` with an image/png, then an
  `update_display_data` per frame. JupyterLab, Notebook 7, VS Code and nbclient all keep it.
- dashboard (`widgets=True`, where ipywidgets works): an `ipywidgets.Image` beside an
  `ipywidgets.HTML` stats panel, updated through comm messages; shown through a display
  handle too, so that finish() can replace it with the static frame (JupyterLab does not save
  widget state by default, and nbconvert/GitHub never render it).

`widgets=None` takes the module default `WIDGETS` (None: the dashboard where ipywidgets is
importable in a kernel). Updates arrive on the kernel's main thread, inside the cell's own
execute request (core.run calls on_sample from its streaming loop), so every message already
carries the cell's parent header: no sampler thread, no set_parent/set_thread_parent juggling.
That is on purpose: it is what makes nbclient and VS Code attribute each update to the cell.

Frames are cheap: the axes are fixed (they only grow, by doubling), the static part of the
figure (axes, ticks, labels, limit lines, legends) is drawn once into a cached background,
and a frame restores it, draws the few moving artists and encodes the Agg buffer to PNG once
(PIL, which matplotlib itself requires). A full draw happens only when an axis doubles.

matplotlib and ipywidgets are imported here only, when a view is made: `%load_ext nsmagic`
stays cheap."""

from __future__ import annotations

import base64
import contextvars
import html
import math
import os
import struct
import sys
import threading
import time
import zlib

from .monitor import MiB, Series

__all__ = ["LiveView", "Plot", "WIDGETS", "FRAME_PERIOD", "PLOT_AFTER", "settle",
           "summary_bundle"]

WIDGETS: bool | None = None     # default of LiveView(widgets=None); None: auto
FRAME_PERIOD = 0.22             # seconds between frames at least: about 4 Hz, whatever the sampling
FRAME_BUDGET = 0.04             # a frame may cost at most this share of one core (backs off)
PLOT_AFTER = 1.0                # seconds a run lasts before it is plotted (see above)

# matplotlib is not made for threads: frames of the live view (the kernel's main thread) and
# last frames made off the cell's path (a thread each) are drawn one at a time.
_RENDER = threading.Lock()
_LAST_FRAMES: list[threading.Thread] = []


def settle(timeout: float = 30.0) -> None:
    """Wait for the last frames still being made off their cells' path."""
    while _LAST_FRAMES:
        _LAST_FRAMES.pop().join(timeout)


def _late_updates_shown() -> bool:
    """Does the frontend of this cell show display updates that come after the cell's end?
    Interactive frontends do, and send allow_stdin; batch runners send it off."""
    try:
        from IPython import get_ipython
        kernel = getattr(get_ipython(), "kernel", None)
    except Exception:
        return False
    return bool(getattr(kernel, "_allow_stdin", False))

_COLORS = {"cpu": "#1f77b4", "throttled": "#d62728", "quota": "#7f7f7f", "memory": "#2ca02c",
           "working_set": "#9467bd", "peak": "#2ca02c", "limit": "#7f7f7f", "oom": "#d62728",
           "read": "#17becf", "write": "#ff7f0e", "received": "#8c564b", "sent": "#e377c2"}
# Panels beside CPU and memory, shown once there is something to show: their title, the
# Series' two rates, and their legend names.
PANELS = {"io": ("disk I/O, MiB/s", ("io_read", "io_write"), ("read", "write")),
          "net": ("network, MiB/s", ("net_rx", "net_tx"), ("received", "sent"))}


# --- the picture


class Plot:
    """Two panels (CPU % of one core, memory MiB) on an Agg canvas, rendered to PNG bytes;
    a third (block I/O, MiB/s) from the start when the run has I/O rate limits, else from
    the first frame whose series shows I/O; and a network one (received and sent on the
    container's veth, MiB/s) likewise, with a network rate limit or network traffic.

    Knows nothing of kernels or cgroups: it draws a `monitor.Series` against the limits.
    `io_limits` is (read, write) in bytes/s, each None where not limited; `net_limit` the
    --network-rate, in bytes/s each way."""

    def __init__(self, memory_limit: int | None = None, cpus: float | None = None,
                 width: float = 7.2, height: float = 3.3, dpi: int = 90,
                 io_limits: tuple[int | None, int | None] | None = None,
                 net_limit: int | None = None):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.memory_limit = memory_limit / MiB if memory_limit else None
        self.cpus = cpus
        self.io_limits = io_limits
        self.limits = {"io": io_limits or (), "net": (net_limit, net_limit)}
        self.panels: dict[str, tuple] = {}    # kind -> (axes, its two lines)
        self._size = (width, height)
        self.cores = os.cpu_count() or 1
        self.fig = fig = Figure(figsize=(width, height), dpi=dpi, facecolor="white")
        self.canvas = FigureCanvasAgg(fig)
        fig.subplots_adjust(left=0.075, right=0.985, top=0.83, bottom=0.14, wspace=0.22)
        self.ax_cpu, self.ax_mem = fig.subplots(1, 2)
        self._style_axes()
        self._moving_artists()
        # The stats line is drawn with PIL onto the finished buffer: matplotlib's text costs
        # ~150 µs a glyph here (a 100-character line: 14 ms, more than the rest of a frame).
        self.header_px = int(0.09 * height * dpi)
        self._fonts = _fonts(round(8.5 * dpi / 72))
        self._limits_and_legends()
        # Backgrounds (the figure without its moving artists) by the axes' limits: a frame
        # whose limits were drawn before, in this run or an earlier one, restores one.
        # Python dicts keep insertion order: the oldest goes first when six are kept.
        self._backgrounds: dict[tuple, object] = {}
        self.full_draws = 0
        self.frames = 0
        if io_limits:
            self._add_panel("io")
        if net_limit:
            self._add_panel("net")
        self._from_start = len(self.panels)
        self._initial = self._limits()
        self._key = (memory_limit, cpus, io_limits, net_limit)

    @property
    def ax_io(self):
        return self.panels["io"][0] if "io" in self.panels else None

    @property
    def ax_net(self):
        return self.panels["net"][0] if "net" in self.panels else None

    def _style_axes(self) -> None:
        for ax, title in ((self.ax_cpu, "CPU, % of one core"), (self.ax_mem, "memory, MiB")):
            ax.set_ylabel(title, fontsize=8, labelpad=2)
            ax.set_xlabel("seconds", fontsize=8, labelpad=1)
            ax.tick_params(labelsize=7, pad=1.5)
            ax.grid(True, color="#e6e6e6", linewidth=0.6)
            ax.set_axisbelow(True)
            ax.set_xlim(0, 10)

    def _moving_artists(self) -> None:
        """Moving artists are `animated`: a full draw skips them, each frame draws them."""
        from matplotlib.lines import Line2D
        from matplotlib.patches import Polygon

        def line(ax, key, label, **kw):
            artist = Line2D([], [], color=_COLORS[key], label=label, animated=True,
                            linewidth=1.4, **kw)
            ax.add_line(artist)
            return artist

        self.cpu_line = line(self.ax_cpu, "cpu", "CPU")
        self.throttled_fill = Polygon([[0, 0]], closed=True, animated=True, label="throttled",
                                      facecolor=_COLORS["throttled"], alpha=0.35, linewidth=0)
        self.ax_cpu.add_patch(self.throttled_fill)
        self.mem_line = line(self.ax_mem, "memory", "usage")
        self.ws_line = line(self.ax_mem, "working_set", "working set", linestyle="--")
        self.peak_line = line(self.ax_mem, "peak", "peak", linestyle=":")
        self.peak_line.set_linewidth(1.0)
        # OOM kills: a vertical line on both panels (x in data, y in axes coordinates).
        self.oom_lines = [line(ax, "oom", "OOM kill", marker="v", markevery=(0, 3),
                               markersize=6, transform=ax.get_xaxis_transform())
                          for ax in (self.ax_cpu, self.ax_mem)]
        for artist in self.oom_lines:
            artist.set_linewidth(1.2)

    def _limits_and_legends(self) -> None:
        """Limits are static lines, drawn into the background with the legends."""
        cpus = self.cpus
        self.ax_cpu.set_ylim(0, 100.0 if not cpus else max(100.0, cpus * 100 * 1.3))
        handles = [self.cpu_line, self.throttled_fill]
        if cpus:
            handles.append(self.ax_cpu.axhline(cpus * 100, color=_COLORS["quota"],
                                               linestyle=":", linewidth=1.2,
                                               label=f"--cpus {cpus:g}"))
        handles.append(self.oom_lines[0])
        _legend(self.ax_cpu, handles)
        handles = [self.mem_line, self.ws_line, self.peak_line]
        if self.memory_limit:
            self.ax_mem.set_ylim(0, self.memory_limit * 1.12)
            handles.append(self.ax_mem.axhline(self.memory_limit, color=_COLORS["limit"],
                                               linestyle=":", linewidth=1.2,
                                               label=f"--mem {self.memory_limit:g} MiB"))
        else:
            self.ax_mem.set_ylim(0, 64)
        _legend(self.ax_mem, handles)

    def _add_panel(self, kind: str) -> None:
        """A narrower panel to the right, the figure widened for it so that the others
        keep their size and legends (the background is redrawn once, as when an axis
        doubles)."""
        from matplotlib.lines import Line2D
        title, _, names = PANELS[kind]
        kinds = [*self.panels, kind]
        width, height = self._size
        grow = 1 + 0.42 * len(kinds)
        self.fig.set_size_inches(width * grow, height)
        grid = self.fig.add_gridspec(1, 2 + len(kinds),
                                     width_ratios=(1, 1, *[0.8] * len(kinds)), wspace=0.3,
                                     left=0.075 / grow, right=1 - 0.015 / grow)
        self.ax_cpu.set_subplotspec(grid[0])
        self.ax_mem.set_subplotspec(grid[1])
        for column, (ax, _) in enumerate(self.panels.values(), 2):
            ax.set_subplotspec(grid[column])
        ax = self.fig.add_subplot(grid[1 + len(kinds)])
        ax.set_ylabel(title, fontsize=8, labelpad=2)
        ax.set_xlabel("seconds", fontsize=8, labelpad=1)
        ax.tick_params(labelsize=7, pad=1.5)
        ax.grid(True, color="#e6e6e6", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.set_xlim(self.ax_cpu.get_xlim())
        lines = [Line2D([], [], color=_COLORS[key], label=key, animated=True, linewidth=1.4)
                 for key in names]
        for artist in lines:
            ax.add_line(artist)
        handles, top = list(lines), 1.0
        for rate, key in zip(self.limits[kind], names):
            if rate and not (kind == "net" and key == "sent"):   # one line for both ways
                handles.append(ax.axhline(rate / MiB, color=_COLORS[key], linestyle=":",
                                          linewidth=1.2, label="limit"))
                top = max(top, rate / MiB * 1.3)
        ax.set_ylim(0, top)
        _legend(ax, handles[:3])
        self.panels[kind] = (ax, lines)
        self._backgrounds.clear()    # the figure itself changed
        self.grew = True

    # -- axes grow by doubling, so the background is redrawn log2(n) times per run

    def _fit(self, series: Series, final: bool) -> None:
        changed = False
        x_top = self.ax_cpu.get_xlim()[1]
        if final:
            # a "nice" length, so that runs of about the same length share a background
            want = _nice(max(1.0, series.duration * 1.03))
            if abs(want - x_top) > 1e-9:
                x_top, changed = want, True
        else:
            while series.duration > x_top * 0.98:
                x_top, changed = x_top * 2, True
        if changed:
            for ax in self._axes():
                ax.set_xlim(0, x_top)
        cpu_top = self.ax_cpu.get_ylim()[1]
        cpu_max = max(series.max_of("cpu"), series.max_of("throttled"))
        cap = self.cores * 100 * 1.05
        while cpu_max > cpu_top * 0.97 and cpu_top < cap:
            cpu_top, changed = min(cpu_top * 2, cap), True
            self.ax_cpu.set_ylim(0, cpu_top)
        if not self.memory_limit or final:
            mem_top = self.ax_mem.get_ylim()[1]
            mem_max = max(series.max_of("memory"), series.memory_peak / MiB)
            while mem_max > mem_top * 0.95:
                mem_top, changed = mem_top * 2, True
                self.ax_mem.set_ylim(0, mem_top)
        for kind, (ax, _) in self.panels.items():
            top = ax.get_ylim()[1]
            most = max(series.max_of(name) for name in PANELS[kind][1])
            while most > top * 0.95:
                top, changed = top * 2, True
                ax.set_ylim(0, top)

    def _axes(self) -> list:
        return [self.ax_cpu, self.ax_mem, *(ax for ax, _ in self.panels.values())]

    def _limits(self) -> tuple:
        return tuple((*ax.get_xlim(), *ax.get_ylim()) for ax in self._axes())

    def _background(self):
        """The background for the axes as they are now: drawn once per set of limits."""
        key = self._limits()
        background = self._backgrounds.get(key)
        if background is None:
            self.canvas.draw()               # skips the animated artists
            background = self.canvas.copy_from_bbox(self.fig.bbox)
            if len(self._backgrounds) >= 6:  # ~0.8 MB each: keep the newest
                self._backgrounds.pop(next(iter(self._backgrounds)))
            self._backgrounds[key] = background
            self.full_draws += 1
        else:
            self.canvas.restore_region(background)

    # -- one Plot per kind of run is kept between a kernel's cells: making the figure and
    # drawing its first background cost ~120 ms here, more than the frames of a short cell

    _idle: dict[tuple, Plot] = {}

    @classmethod
    def acquire(cls, memory_limit=None, cpus=None, io_limits=None, net_limit=None) -> Plot:
        """A Plot for a new run: an idle one kept from an earlier run with the same limits
        (axes back where they start), else a new one."""
        plot = cls._idle.pop((memory_limit, cpus, io_limits, net_limit), None)
        if plot is None:
            return cls(memory_limit, cpus, io_limits=io_limits, net_limit=net_limit)
        for ax, (x0, x1, y0, y1) in zip(plot._axes(), plot._initial):
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
        return plot

    def release(self) -> None:
        """The run is over: keep this Plot for the next run like it (at most 2 kinds kept);
        one that grew a panel on the way (disk I/O, network) is not like any new run:
        closed."""
        if len(self.panels) > self._from_start:
            self.close()
            return
        old = Plot._idle.pop(self._key, None)
        if old is not None and old is not self:
            old.close()
        Plot._idle[self._key] = self
        while len(Plot._idle) > 2:
            Plot._idle.pop(next(iter(Plot._idle))).close()

    def render(self, series: Series, final: bool = False, header: str | None = None) -> bytes:
        """One frame as PNG bytes: one (partial) draw, one encode. `final` fits the time
        axis to the run; `header` replaces the live stats line."""
        if "io" not in self.panels and series.io_seen:
            self._add_panel("io")
        if "net" not in self.panels and series.net_seen:
            self._add_panel("net")
        self._fit(series, final)
        self._background()
        t = series.t
        self.cpu_line.set_data(t, series.cpu)
        self.mem_line.set_data(t, series.memory)
        self.ws_line.set_data(t, series.working_set)
        self.peak_line.set_data(t, series.peak)
        if t:
            ys = [0.0 if math.isnan(v) else v for v in series.throttled]
            self.throttled_fill.set_xy([(t[0], 0.0), *zip(t, ys), (t[-1], 0.0)])
        xs, ys = [], []
        for when in series.oom_times:
            xs += [when, when, math.nan]
            ys += [1.0, 0.0, math.nan]
        for artist in self.oom_lines:
            artist.set_data(xs, ys)
        moving = [self.throttled_fill, self.cpu_line, self.peak_line, self.mem_line,
                  self.ws_line, *self.oom_lines]
        for kind, (_, lines) in self.panels.items():
            for artist, name in zip(lines, PANELS[kind][1]):
                artist.set_data(t, getattr(series, name))
            moving += lines
        for artist in moving:
            artist.axes.draw_artist(artist)
        import numpy as np
        pixels = np.asarray(self.canvas.buffer_rgba())
        kills = series.oom_kills
        _draw_header(pixels[:self.header_px], self._fonts, header or stats_line(series),
                     f"OOM killed ×{kills}" if kills > 1 else "OOM killed" if kills else "")
        self.frames += 1
        return encode_png(pixels)

    def close(self) -> None:
        self.fig.clear()
        self._backgrounds.clear()


CROWDED = 2.0   # runnable tasks per CPU (1-minute load average) above which frames thin out


def _crowd() -> float:
    """How far past CROWDED the machine is (at least 1): the frame period is stretched by
    it. Each kernel's plot keeps to its own budget, and a class of 40 kernels on 2 cores
    would give plots a core of their own; on a machine that crowded the cells' work comes
    first (the final frame is always drawn). A busy but not crowded machine keeps 4 Hz."""
    try:
        return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1) / CROWDED)
    except OSError:
        return 1.0


def _nice(seconds: float) -> float:
    """The least of 1, 2, 3, 5 times a power of ten that holds it: coarse on purpose, so
    that a kernel's cells of 1 to 30 s share six backgrounds (a class of 40 kernels on 2
    cores spent ~100 ms of CPU a cell redrawing a final frame's axes at finer steps)."""
    power = 10.0 ** math.floor(math.log10(seconds))
    for step in (1, 2, 3, 5, 10):
        if step * power >= seconds - 1e-9:
            return step * power
    return 10 * power


def _legend(ax, handles) -> None:
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.02), ncol=len(handles),
              fontsize=7, frameon=False, borderaxespad=0, handlelength=1.4, columnspacing=0.9,
              handletextpad=0.4)


def _fonts(size_px: int):
    """PIL fonts for the header (matplotlib's own DejaVu files); None: use matplotlib text."""
    try:
        import matplotlib
        from PIL import ImageFont
        ttf = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
        return (ImageFont.truetype(os.path.join(ttf, "DejaVuSans.ttf"), size_px),
                ImageFont.truetype(os.path.join(ttf, "DejaVuSans-Bold.ttf"), size_px))
    except Exception:          # a Pillow without FreeType
        return None


def _draw_header(strip, fonts, text: str, alert: str) -> None:
    """Write the stats line into the top rows of the frame (an RGBA array, in place)."""
    import numpy as np
    from PIL import Image, ImageDraw
    height, width = strip.shape[:2]
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    if fonts is None:
        draw.text((6, 3), f"{text}  {alert}", fill=(0, 0, 0))
    else:
        draw.text((6, 3), text, font=fonts[0], fill=(0, 0, 0))
        if alert:
            draw.text((width - 6, 3), alert, font=fonts[1], fill=(214, 39, 40), anchor="ra")
    strip[:, :, :3] = np.asarray(image)
    strip[:, :, 3] = 255


def encode_png(pixels) -> bytes:
    """An RGBA array as PNG: filter "none" and zlib level 1 (a plot is mostly flat colour).
    5x faster than PIL's adaptive filters here (1.5 ms against 8 ms a frame), as small."""
    import numpy as np
    height, width = pixels.shape[:2]
    raw = np.empty((height, width * 4 + 1), dtype=np.uint8)
    raw[:, 0] = 0                                   # each row: filter type 0
    raw[:, 1:] = pixels.reshape(height, width * 4)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 1))
            + chunk(b"IEND", b""))


def stats_line(series: Series) -> str:
    c = series.current()
    cpu = "-" if c["cpu"] is None else f"{c['cpu']:.0f} %"
    parts = [f"{c['t']:.1f} s", f"CPU {cpu}", f"mem {c['memory']:.1f} MiB",
             f"peak {c['memory_peak']:.1f} MiB", f"pids {c['pids']}",
             f"OOM kills {c['oom_kills']}"]
    if c["throttled_s"]:
        parts.insert(2, f"throttled {c['throttled_s']:.1f} s")
    if series.io_seen:
        parts.insert(-1, f"I/O r {c['io_read'] or 0:.1f} w {c['io_write'] or 0:.1f} MiB/s")
    if series.net_seen:
        parts.insert(-1, f"net rx {c['net_rx'] or 0:.2f} tx {c['net_tx'] or 0:.2f} MiB/s")
    return "  ·  ".join(parts)


def final_line(result) -> str:
    """The header of the last frame: what the run did, not its last sample (an OOM kill is
    drawn apart, in red)."""
    from .result import rows
    return "  ·  ".join(row.phrase for row in rows(result) if row.label != "OOM kills")


def io_limits(spec) -> tuple[int | None, int | None] | None:
    """The run's read and write rate limits (bytes/s, over all its devices), or None."""
    read = sum(r.value for r in spec.device_read_bps) or None
    write = sum(r.value for r in spec.device_write_bps) or None
    limited = read or write or spec.device_read_iops or spec.device_write_iops
    return (read, write) if limited else None


def _size(n) -> str:
    from .spec import format_size
    return format_size(n)


def summary_bundle(result, name: str = "") -> dict:
    """text/html table + a text/plain table of the same rows (result.rows)."""
    from .result import rows as result_rows
    rows = result_rows(result)
    width = max(len(row.label) for row in rows)
    plain = "\n".join(f"{row.label:<{width}}  {row.value}" for row in rows)
    cells = "".join(
        f"<tr><th style='text-align:left;padding:1px 12px 1px 0;font-weight:normal;"
        f"color:#555'>{html.escape(row.label)}</th><td style='text-align:left;padding:1px 0;"
        f"{'color:#d62728;font-weight:bold' if row.alert else ''}"
        f"'>{html.escape(row.value)}</td></tr>" for row in rows)
    caption = html.escape(name or result.name or "container")
    table = (f"<table class='nsmagic-summary' style='font-size:12px;border-collapse:collapse'>"
             f"<caption style='text-align:left;font-weight:bold;padding-bottom:2px'>"
             f"{caption}</caption>{cells}</table>")
    return {"text/html": table, "text/plain": plain}


# --- the view in the notebook


def _widgets_work() -> bool:
    """ipywidgets importable and a kernel with comms to carry it."""
    try:
        from IPython import get_ipython
        shell = get_ipython()
        if shell is None or getattr(shell, "kernel", None) is None:
            return False
        import ipywidgets  # noqa: F401
    except Exception:
        return False
    return True


class LiveView:
    """The live plot of one %%container run; `update` is core.run's on_sample.

    `LiveView.last` is the latest view made in this process, for tests and for a curious
    student (`LiveView.last.series.cpu`)."""

    last: LiveView | None = None

    def __init__(self, spec, widgets: bool | None = None, period: float | None = None,
                 delay: float | None = None):
        self.spec = spec
        self.want_widgets = WIDGETS if widgets is None else widgets
        self.widgets = False
        self.period = FRAME_PERIOD if period is None else period
        self.delay = PLOT_AFTER if delay is None else delay
        self.plot: Plot | None = None    # made when the run has lasted `delay`
        self.series: Series | None = None
        self.handle = None              # IPython DisplayHandle of the plot (both modes)
        self._box = self._image = self._stats = None
        self._next_frame = 0.0
        self._cost: float | None = None      # moving average of a frame's cost, in seconds
        self.frame_times: list[float] = []   # seconds per frame (render + encode + send)
        self.errors: list[str] = []
        self.finished = False
        self.name = ""
        LiveView.last = self

    # Called by core.run on the kernel's main thread, inside the cell's execute request.
    def update(self, usage, run=None) -> None:
        if self.series is None:
            self.series = Series(start=getattr(run, "started", None) or usage.time)
            self.name = getattr(run, "name", "") or ""
        self.series.add(usage)
        now = time.monotonic()
        if now < self._next_frame or self.errors:
            return
        if self.plot is None and (usage.time - self.series.start < self.delay
                                  or not self._start()):
            return
        begin, full_draws = time.perf_counter(), self.plot.full_draws
        try:
            with _RENDER:
                png = self.plot.render(self.series)
            self._show(png)
        except Exception as err:       # a broken plot must never break the run
            self.errors.append(f"{type(err).__name__}: {err}")
            print(f"nsmagic: live plot stopped: {self.errors[-1]}", file=sys.stderr)
            return
        cost = time.perf_counter() - begin
        self.frame_times.append(cost)
        # At most ~4 Hz; a slow machine backs off so the plot never takes over a core. Frames
        # that redrew the axes (the first, a doubling) are rare and left out of the average.
        if self.plot.full_draws == full_draws:
            self._cost = cost if self._cost is None else 0.7 * self._cost + 0.3 * cost
        self._next_frame = now + max(self.period, (self._cost or 0.0) / FRAME_BUDGET) * _crowd()

    def _start(self) -> bool:
        """The run has lasted long enough to be plotted: matplotlib (and widgets) now."""
        try:
            want = self.want_widgets
            self.widgets = _widgets_work() if want is None else bool(want and _widgets_work())
            with _RENDER:   # the pool is shared with the last-frame threads
                self.plot = Plot.acquire(self.spec.memory, self.spec.cpus,
                                         io_limits=io_limits(self.spec),
                                         net_limit=getattr(self.spec, "network_rate", None))
        except ImportError as err:     # no matplotlib: the summary line still comes
            self.errors.append(f"{type(err).__name__}: {err}")
            return False
        return True

    def _show(self, png: bytes) -> None:
        from IPython.display import display
        if self.widgets and self._box is None:
            try:
                self._start_dashboard(png)
                return
            except Exception as err:   # comms broken: fall back to the display handle
                print(f"nsmagic: no widget dashboard ({type(err).__name__}: {err}); "
                      "showing the plot as an image.", file=sys.stderr)
                self.widgets, self._box, self.handle = False, None, None
        if self.widgets:
            self._image.value = png
            self._stats.value = self._stats_html()
        elif self.handle is None:
            self.handle = display(self._png_bundle(png), raw=True, display_id=True)
        else:
            self.handle.update(self._png_bundle(png), raw=True)

    def _start_dashboard(self, png: bytes) -> None:
        """The plot beside an HTML stats panel, shown once through a display handle, so
        that finish() can put the static frame in its place."""
        import ipywidgets as w
        from IPython.display import display
        self._image = w.Image(value=png, format="png",
                              layout=w.Layout(width="auto", max_width="100%",
                                              flex="0 1 auto"))
        self._stats = w.HTML(value=self._stats_html(),
                             layout=w.Layout(min_width="170px", margin="0 0 0 8px"))
        self._box = w.HBox([self._image, self._stats],   # stats wrap below if narrow
                           layout=w.Layout(align_items="flex-start",
                                           flex_flow="row wrap"))
        self.handle = display(self._box, display_id=True)

    def _png_bundle(self, png: bytes, text: str | None = None) -> dict:
        return {"image/png": base64.b64encode(png).decode("ascii"),
                "text/plain": text or f"<nsmagic live plot: {stats_line(self.series)}>"}

    def _stats_html(self) -> str:
        c = self.series.current()
        rows = [("time", f"{c['t']:.1f} s"),
                ("CPU", "-" if c["cpu"] is None else f"{c['cpu']:.0f} %"),
                ("throttled", f"{c['throttled_s']:.2f} s"),
                ("memory", f"{c['memory']:.1f} MiB"),
                ("working set", f"{c['working_set']:.1f} MiB"),
                ("peak", f"{c['memory_peak']:.1f} MiB"),
                ("pids", f"{c['pids']} (peak {c['pids_peak']})"),
                ("OOM kills", str(c["oom_kills"]))]
        if self.spec.memory:
            rows.insert(6, ("limit", _size(self.spec.memory)))
        if self.spec.cpus:
            rows.insert(3, ("quota", f"{self.spec.cpus:g} CPU"))
        if self.series.io_seen or self.plot.ax_io is not None:
            rows += [("disk read", f"{c['io_read'] or 0:.1f} MiB/s"),
                     ("disk write", f"{c['io_write'] or 0:.1f} MiB/s")]
        if self.series.net_seen or self.plot.ax_net is not None:
            rows += [("net received", f"{c['net_rx'] or 0:.2f} MiB/s"),
                     ("net sent", f"{c['net_tx'] or 0:.2f} MiB/s")]
        cell = "padding:0 10px 0 0;line-height:1.35;border:0;text-align:left"
        cells = "".join(
            f"<tr><td style='{cell};color:#555'>{k}</td><td style='{cell}"
            f"{';color:#d62728;font-weight:bold' if k == 'OOM kills' and v != '0' else ''}'"
            f">{html.escape(v)}</td></tr>" for k, v in rows)
        return (f"<div style='font-size:12px'><b>{html.escape(self.name)}</b>"
                f"<table style='border-collapse:collapse;margin-top:4px'>{cells}</table></div>")

    def finish(self, result, background: bool | None = None) -> None:
        """Leave the last frame as a static PNG, then the summary table; print the summary.
        A run too short to be plotted gets its summary line only. The last frame is made in
        a thread (`background`; None: where the frontend shows late updates, see above)."""
        if self.finished:
            return
        self.finished = True
        if self.plot is not None and self.handle is not None and not self.errors:
            from IPython.display import display
            if self.series is not None:
                self.series.mark_oom(result.oom_kills)
            display(summary_bundle(result, self.name), raw=True)
            if _late_updates_shown() if background is None else background:
                # the cell's context (ipykernel keeps the cell's parent header in a context
                # variable): the update says it is this cell's, whatever runs by then
                frame = threading.Thread(target=contextvars.copy_context().run,
                                         args=(self._last_frame, result), daemon=True,
                                         name="nsmagic-last-frame")
                _LAST_FRAMES.append(frame)
                frame.start()
            else:
                self._last_frame(result)
        elif self.plot is not None:
            with _RENDER:
                self.plot.release()
        print(result.summary(), file=sys.stderr if result.error else sys.stdout)

    def _last_frame(self, result) -> None:
        """The run's whole series, its axes fitted, the result in the header, in place of
        the live view (of the widget dashboard too: a saved notebook keeps a plain PNG)."""
        try:
            with _RENDER:
                png = self.plot.render(self.series, final=True, header=final_line(result))
            self.handle.update(self._png_bundle(png, f"<nsmagic plot: {result.summary()}>"),
                               raw=True)
            if self._box is not None:
                self._box.close()
        except Exception as err:
            self.errors.append(f"{type(err).__name__}: {err}")
            print(f"nsmagic: final plot failed: {self.errors[-1]}", file=sys.stderr)
        finally:
            with _RENDER:
                self.plot.release()
