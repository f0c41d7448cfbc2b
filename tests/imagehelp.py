"""What the image tests share: the CLI as a subprocess, and an image of three layers whose
later layers delete, replace and hide what the earlier ones hold."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

from nsmagic.images import catalog, compose


def nsmagic(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "nsmagic", *args], input=stdin,
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def layered(store) -> str:
    """busybox, then a layer that adds files, then one that deletes and hides some."""
    base = catalog.find("busybox", store)
    one = compose.layer_from_bytes(store, compose.tar_of([
        ("data", "dir", 0o755, b""), ("data/a", "file", 0o644, b"a1\n"),
        ("data/b", "file", 0o644, b"b1\n"), ("keep", "dir", 0o755, b""),
        ("keep/old", "file", 0o644, b"old\n"), ("work", "dir", 0o755, b"")]), "RUN one")
    two = compose.layer_from_bytes(store, compose.tar_of([
        ("data", "dir", 0o755, b""), ("data/.wh.a", "file", 0o644, b""),
        ("data/b", "file", 0o644, b"b2\n"), ("keep", "dir", 0o755, b""),
        ("keep/.wh..wh..opq", "file", 0o644, b""), ("keep/new", "file", 0o644, b"new\n")]),
        "RUN two")
    compose.write_image(store, "layered", [one, two], {
        "Env": ["PATH=/bin", "GREETING=from the image"], "WorkingDir": "/work",
        "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo default $GREETING in $(pwd)"],
        "User": "nobody"}, base_image=base)
    return "layered"
