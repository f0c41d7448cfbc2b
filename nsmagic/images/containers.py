"""Containers kept after they exit, in the store: containers/<id>/container.json (the record:
id, name, image, command, created, state, exit code), its logs and its writable layer."""

from __future__ import annotations

import json
import os


def records(store) -> list[dict]:
    """Every kept container's record, newest first."""
    base = store.path("containers")
    found = []
    for cid in os.listdir(base) if os.path.isdir(base) else ():
        try:
            with open(os.path.join(base, cid, "container.json")) as f:
                found.append(json.load(f))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda r: r.get("created", 0), reverse=True)


def kept_images(store) -> set[str]:
    """Manifest digests of the images kept containers were made from."""
    return {r["image_digest"] for r in records(store) if r.get("image_digest")}
