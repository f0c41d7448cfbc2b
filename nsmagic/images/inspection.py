"""Looking inside images and containers: what a layer adds, changes and deletes, the bytes
an image wastes on files a later layer replaces or deletes (as the `dive` tool counts
them), what a kept container changed (`diff`), and a new image from it (`commit`).

Layers are read as they are unpacked in the store (overlay's form: a whiteout is a 0:0
character device, an opaque directory has the opaque xattr), by lstat only: a layer's
links are never followed."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..errors import NsmagicError
from . import compose, containers, layerdiff
from . import store as st

OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque")


@dataclass(frozen=True)
class Entry:
    kind: str        # A, C or D
    path: str
    size: int        # bytes of a regular file (0 for the rest)


@dataclass(frozen=True)
class LayerView:
    index: int
    created_by: str
    size: int
    entries: tuple[Entry, ...]
    wasted: int      # bytes of this layer's files that a later layer replaces or deletes


def _trees(store: st.Store, image: st.Image) -> list[str]:
    """The image's unpacked layers, bottom first."""
    return [store.layer_tree(d, b) for d, b in zip(image.diff_ids, image.layers)]


def _files(tree: str) -> dict[str, os.stat_result]:
    """Every path of a layer ("/etc/passwd") with its lstat, parents before children."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            found["/" + os.path.relpath(path, tree)] = os.lstat(path)
    return found


def _whiteout(st_: os.stat_result) -> bool:
    return stat.S_ISCHR(st_.st_mode) and st_.st_rdev == 0


def _opaque(tree: str, path: str) -> bool:
    for name in OPAQUE:
        try:
            if os.getxattr(tree + path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


class _Merged:
    """What the layers show so far (bottom first): path -> (layer, size of a file)."""

    def __init__(self):
        self.paths: dict[str, tuple[int, int]] = {}

    def exists(self, path: str) -> bool:
        return path in self.paths

    def apply(self, index: int, tree: str, files: dict[str, os.stat_result]) -> list:
        """Lay layer `index` on top; returns (layer, size) of each earlier entry it hid
        (replaced, deleted, or below a deleted, replaced or opaque directory)."""
        hidden = []
        for path, st_ in files.items():
            is_dir = stat.S_ISDIR(st_.st_mode)
            if not is_dir or _whiteout(st_) or _opaque(tree, path):
                prefix = path + "/"
                for below in [p for p in self.paths if p.startswith(prefix)]:
                    hidden.append(self.paths.pop(below))
            if path in self.paths and not (is_dir and stat.S_ISDIR(st_.st_mode)):
                hidden.append(self.paths.pop(path))
            if not _whiteout(st_):
                self.paths[path] = (index, st_.st_size if stat.S_ISREG(st_.st_mode) else 0)
        return hidden


def layers(store: st.Store, image: st.Image) -> list[LayerView]:
    """Each layer, bottom first: its entries (A/C/D against the layers below it), its
    size, and the bytes of it that later layers throw away."""
    trees = _trees(store, image)
    steps = [h for h in image.config.get("history") or [] if not h.get("empty_layer")]
    merged, found = _Merged(), []
    wasted = [0] * len(trees)
    for index, tree in enumerate(trees):
        files = _files(tree)
        entries = tuple(Entry("D" if _whiteout(st_) else "C" if merged.exists(path) else "A",
                              path, st_.st_size if stat.S_ISREG(st_.st_mode) else 0)
                        for path, st_ in files.items())
        for layer_of, size in merged.apply(index, tree, files):
            wasted[layer_of] += size
        created_by = steps[index].get("created_by", "") if index < len(steps) else ""
        found.append((index, created_by, sum(e.size for e in entries), entries))
    return [LayerView(i, by, size, entries, wasted[i]) for i, by, size, entries in found]


# --- containers


def container_changes(store: st.Store, name: str) -> list[layerdiff.Change]:
    record = _exited(store, name)
    if record.data.get("ImageDigest"):
        trees = list(reversed(_trees(store, store.image(record.data["ImageDigest"]))))
    else:
        trees = []
    return layerdiff.changes(record.upper, lambda path: _in_image(trees, path))


def _exited(store: st.Store, name: str) -> containers.Record:
    record = containers.find(store, name)
    if record.running:
        raise NsmagicError(f"the container {record.name} is still running; its writable "
                           "layer is read once it has exited.")
    if not os.path.isdir(record.upper):
        raise NsmagicError(f"the container {record.name} kept no writable layer (it ran on "
                           "the host's directories, or was killed before it could be "
                           "copied).")
    return record


def _in_image(trees: list[str], path: str) -> bool:
    """Whether the image (layers top first) shows `path`."""
    parts = path.strip("/").split("/")
    for tree in trees:
        for depth in range(1, len(parts) + 1):
            here = "/" + "/".join(parts[:depth])
            try:
                st_ = os.lstat(tree + here)
            except OSError:
                break
            if _whiteout(st_):
                return False
            if depth < len(parts) and not stat.S_ISDIR(st_.st_mode):
                break     # a file or a link where a directory would be: not beneath it
            if depth == len(parts):
                return True
            if _opaque(tree, here) and not os.path.lexists(tree + path):
                return False
    return False


def commit(store: st.Store, name: str, image_name: str | None, message: str) -> st.Image:
    """A new image: the container's image and its writable layer on top."""
    record = _exited(store, name)
    if not record.data.get("ImageDigest"):
        raise NsmagicError(f"the container {record.name} ran on the host's directories; "
                           "only a container of an image can be committed.")
    base = store.image(record.data["ImageDigest"])
    tmp = os.path.join(store.staging("commit-"), "layer.tar")
    try:
        with open(tmp, "wb") as out:
            layerdiff.write_tar(record.upper, out)
        with open(tmp, "rb") as f:
            blob = store.put_stream(f, st.LAYER)
    finally:
        st.remove(os.path.dirname(tmp))
    created = compose.now()
    entry = {"created": created, "created_by": " ".join(record.data.get("Command") or []),
             "comment": message or f"committed from {record.name}"}
    layer = compose.NewLayer(blob, blob.digest, entry["created_by"], created)
    image = compose.write_image(store, image_name, [layer], base.runtime, base_image=base,
                                history=[entry], created=created)
    if not image_name:
        store.add_unnamed(st.Descriptor(st.MANIFEST, image.manifest_digest,
                                        len(store.read_blob(image.manifest_digest))))
    return image
