"""An image made from layers and a config, written into the store: what the built-in images,
`load`, `build` and `commit` share. Layers made here are plain (uncompressed) tars, as
`docker save` writes them: this store is local, and unpacking skips a decompression."""

from __future__ import annotations

import io
import platform
import tarfile
import time
from dataclasses import dataclass

from . import store as st

ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
                 "s390x": "s390x", "riscv64": "riscv64", "i686": "386"}
EPOCH = "1970-01-01T00:00:00Z"


def architecture() -> str:
    return ARCHITECTURES.get(platform.machine(), platform.machine())


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class NewLayer:
    blob: st.Descriptor
    diff_id: str
    created_by: str
    created: str = EPOCH


def layer_from_bytes(store: st.Store, tar: bytes, created_by: str,
                     created: str = EPOCH) -> NewLayer:
    blob = store.put_bytes(tar, st.LAYER)
    return NewLayer(blob, blob.digest, created_by, created)


def tar_of(entries) -> bytes:
    """A reproducible tar (owner 0, mtime 0) of (name, kind, mode, data_or_linkname)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, mode, payload in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime, info.uid, info.gid = mode, 0, 0, 0
            info.uname = info.gname = "root"
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def write_image(store: st.Store, name: str | None, layers: list[NewLayer], runtime: dict,
                base_image: st.Image | None = None, history: list[dict] | None = None,
                created: str | None = None) -> st.Image:
    """The image whose layers are `base_image`'s (None: no base) and then `layers`, with the
    runtime config `runtime`; named `name` when given. `history`, when given, replaces the
    one-entry-per-layer default: it also holds the steps that made no layer (config-only
    instructions), in order."""
    base = base_image.config if base_image else {}
    diff_ids = list(base.get("rootfs", {}).get("diff_ids", [])) + [x.diff_id for x in layers]
    config = {
        "created": created or (layers[-1].created if layers else EPOCH),
        "architecture": base.get("architecture") or architecture(),
        "os": "linux",
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": list(base.get("history", [])) + (history if history is not None else [
            {"created": x.created, "created_by": x.created_by} for x in layers]),
    }
    config_desc = store.put_json(config, st.CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": st.MANIFEST,
                "config": config_desc.to_json(),
                "layers": [d.to_json() for d in (base_image.layers if base_image else [])]
                + [x.blob.to_json() for x in layers]}
    manifest_desc = store.put_json(manifest, st.MANIFEST)
    if name:
        store.tag(name, manifest_desc)
    return st.Image(manifest_desc.digest, manifest, config, (name,) if name else ())

