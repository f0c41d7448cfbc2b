"""How images look in a table, as Docker shows them: decimal sizes ("4.26MB"), ages
("2 minutes ago"), short ids, and plain columns."""

from __future__ import annotations

import calendar
import time

from . import reference
from .store import Image, Store


def human_size(n: int) -> str:
    """Docker's: decimal units, three significant digits."""
    for unit, power in (("GB", 9), ("MB", 6), ("kB", 3)):
        if n >= 10 ** power:
            return f"{n / 10 ** power:.3g}{unit}"
    return f"{n}B"


def ago(stamp: str | float | None, now: float | None = None) -> str:
    """'2 minutes ago' from an RFC 3339 time (as image configs hold) or a Unix time."""
    if stamp is None or stamp == "":
        return "-"
    seconds = (now or time.time()) - (_parse_time(stamp) if isinstance(stamp, str) else stamp)
    if seconds < 1:
        return "Less than a second ago"
    for unit, size in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400),
                       ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size:
            count = int(seconds // size)
            if unit == "hour" and count == 1:
                return "About an hour ago"
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "-"


def _parse_time(text: str) -> float:
    try:
        return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0.0


def image_size(store: Store, image: Image) -> int:
    """Bytes of its layers' contents (unpacked), as Docker's SIZE; a layer not unpacked
    yet counts its archive's size."""
    total = 0
    for diff_id, blob in zip(image.diff_ids, image.layers):
        total += store.layer_info(diff_id).get("size", blob.size)
    return total


def columns(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def images_table(store: Store) -> str:
    rows = [["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]]
    listed = []
    for image in store.images():
        for name in image.names or ("<none>:<none>",):
            repo, _, tag = name.rpartition(":")
            listed.append((repo, tag, image))
    for repo, tag, image in sorted(listed, key=lambda x: (x[0], x[1])):
        rows.append([repo, tag, reference.short_id(image.id), ago(image.config.get("created")),
                     human_size(image_size(store, image))])
    rows.append(["host", "-", "-", "-", "the host's /usr /etc /opt (default)"])
    return columns(rows)


def history_table(store: Store, image: Image) -> str:
    """One line per step, newest first; steps that made no layer show 0B."""
    rows = [["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]]
    layers = list(zip(image.diff_ids, image.layers))
    steps = []
    for entry in image.config.get("history") or []:
        size = 0
        if not entry.get("empty_layer") and layers:
            diff_id, blob = layers.pop(0)
            size = store.layer_info(diff_id).get("size", blob.size)
        steps.append((entry, size))
    for i, (entry, size) in enumerate(reversed(steps)):
        by = " ".join(str(entry.get("created_by", "")).split())
        rows.append([reference.short_id(image.id) if i == 0 else "<missing>",
                     ago(entry.get("created")), by[:60] + ("…" if len(by) > 60 else ""),
                     human_size(size), entry.get("comment", "")])
    return columns(rows)


def inspect(store: Store, image: Image) -> dict:
    """Docker's `image inspect` fields, and where nsmagic keeps the layers."""
    return {
        "Id": image.id,
        "RepoTags": list(image.names),
        "RepoDigests": [],
        "Created": image.config.get("created"),
        "Architecture": image.config.get("architecture"),
        "Os": image.config.get("os"),
        "Config": image.runtime,
        "RootFS": {"Type": "layers", "Layers": image.diff_ids},
        "Size": image_size(store, image),
        "Nsmagic": {"ManifestDigest": image.manifest_digest, "Store": store.root,
                    "LayerDirs": [store.path("layers", d.removeprefix("sha256:"), "tree")
                                  for d in image.diff_ids]},
    }


def containers_table(records) -> str:
    """`docker ps -a`'s columns."""
    rows = [["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"]]
    for r in records:
        command = " ".join(r.data.get("Command") or [])
        rows.append([r.id[:12], r.data.get("Image") or "-",
                     '"' + (command[:20] + "…" if len(command) > 20 else command) + '"',
                     ago(r.data.get("Created")), r.status(), r.name])
    return columns(rows)
