"""An image drawn as what it is, a stack: one band per layer (bottom first, the instruction
that made it and its size), the thin writable layer of a container on top; and a layer's
contents as a table (A added, C changed, D deleted, and what later layers waste of it).
matplotlib is imported only here."""

from __future__ import annotations

from . import containers, inspection, views
from .store import Image, Store


def layer_stack(store: Store, image: Image, container: str | None = None):
    """A matplotlib Figure of the stack (Agg: no display needed)."""
    from matplotlib.figure import Figure
    layers = inspection.layers(store, image)
    top = _writable(store, container) if container else None
    bands = len(layers) + 1
    fig = Figure(figsize=(8, 0.55 * bands + 0.9), dpi=100)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96 - 0.5 / (0.55 * bands + 0.9)))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, bands)
    ax.axis("off")
    for i, layer in enumerate(layers):
        shade = 0.55 + 0.35 * (i / max(1, len(layers) - 1))
        ax.add_patch(_band(i, (0.25, 0.45, shade), "-"))
        text = f"{i}: {_short(layer.created_by)}"
        ax.text(0.02, i + 0.5, text, va="center", fontsize=9, color="white")
        size = views.human_size(layer.size) + (f"  ({views.human_size(layer.wasted)} "
                                               "wasted)" if layer.wasted else "")
        ax.text(0.98, i + 0.5, size, va="center", ha="right", fontsize=9, color="white")
    label = ("thin writable layer: each container's own, on a tmpfs (copied into the store "
             "for one that stays)" if top is None else
             f"thin writable layer of {container}: {top[0]} changes, "
             f"{views.human_size(top[1])}")
    ax.add_patch(_band(len(layers), (0.98, 0.85, 0.55), "--"))
    ax.text(0.02, len(layers) + 0.5, label, va="center", fontsize=9)
    name = image.names[0] if image.names else image.id[:19]
    fig.suptitle(f"{name}: {len(layers)} read-only layers (overlay lowerdirs), "
                 f"{views.human_size(sum(x.size for x in layers))}", fontsize=10)
    return fig


def _band(i: int, color, style: str):
    from matplotlib.patches import FancyBboxPatch
    return FancyBboxPatch((0.01, i + 0.08), 0.98, 0.84, boxstyle="round,pad=0,rounding_size=0.02",
                          facecolor=color, edgecolor="black", linestyle=style, linewidth=1)


def _short(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _writable(store: Store, name: str) -> tuple[int, int]:
    """(changes, bytes) of a kept container's writable layer."""
    record = containers.find(store, name)
    changes = inspection.container_changes(store, record.name)
    size = 0
    import os
    for dirpath, _dirs, files in os.walk(record.upper):
        for f in files:
            size += os.lstat(os.path.join(dirpath, f)).st_size
    return len(changes), size


def layer_table(store: Store, image: Image, index: int, limit: int = 40) -> str:
    """One layer's entries, as `dive` lists them, and what later layers waste of it."""
    layers = inspection.layers(store, image)
    if not 0 <= index < len(layers):
        from ..errors import SpecError
        raise SpecError(f"the image has layers 0 to {len(layers) - 1}; there is no layer "
                        f"{index}.")
    layer = layers[index]
    rows = [["", "PATH", "SIZE"]]
    for entry in layer.entries[:limit]:
        rows.append([entry.kind, entry.path, views.human_size(entry.size) if entry.size else
                     ""])
    more = len(layer.entries) - limit
    counts = {k: sum(1 for e in layer.entries if e.kind == k) for k in "ACD"}
    head = (f"layer {index}: {_short(layer.created_by)}\n"
            f"{counts['A']} added, {counts['C']} changed, {counts['D']} deleted; "
            f"{views.human_size(layer.size)}, of which later layers waste "
            f"{views.human_size(layer.wasted)}\n")
    return head + views.columns(rows) + (f"\n… and {more} more" if more > 0 else "")
