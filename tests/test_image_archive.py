"""nsmagic save and load: both archive formats, plain, gzip and zstd; corrupt archives
refused by digest with nothing named and nothing left in the store's tmp/."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile

import pytest
from imagehelp import nsmagic

from nsmagic.errors import NsmagicError
from nsmagic.images import archive, catalog, compose
from nsmagic.images.store import Store

pytestmark = pytest.mark.core


def saved(store, *names) -> bytes:
    out = io.BytesIO()
    archive.save(list(names), out, store)
    return out.getvalue()


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


def rebuild(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def fresh(tmp_path, name="other") -> Store:
    return Store(str(tmp_path / name)).ensure()


def write(tmp_path, data: bytes, name="a.tar") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_save_is_both_formats(store):
    files = members(saved(store, "busybox"))
    image = catalog.find("busybox", store)
    docker, = json.loads(files["manifest.json"])
    assert docker["RepoTags"] == ["busybox:latest"]
    assert docker["Config"] == "blobs/sha256/" + image.id[7:]
    index = json.loads(files["index.json"])
    entry, = index["manifests"]
    assert entry["digest"] == image.manifest_digest
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}


@pytest.mark.parametrize("squeeze", ["plain", "gzip", "zstd"])
@pytest.mark.parametrize("form", ["docker", "oci"])
def test_round_trip(store, tmp_path, squeeze, form):
    files = members(saved(store, "busybox"))
    files.pop("index.json" if form == "docker" else "manifest.json")
    data = rebuild(files)
    if squeeze == "gzip":
        data = gzip.compress(data)
    elif squeeze == "zstd":
        zstandard = pytest.importorskip("zstandard")
        data = zstandard.ZstdCompressor().compress(data)
    other = fresh(tmp_path)
    assert archive.load(write(tmp_path, data), other) == ["busybox:latest"]
    assert other.find("busybox").id == catalog.find("busybox", store).id
    assert os.listdir(other.path("tmp")) == []


def test_zstd_layers(store, tmp_path):
    """An OCI archive whose layer is zstd-compressed (as skopeo/podman can write)."""
    zstandard = pytest.importorskip("zstandard")
    tar = compose.tar_of([("greeting", "file", 0o644, b"hello zstd\n")])
    blob = store.put_bytes(zstandard.ZstdCompressor().compress(tar),
                           "application/vnd.oci.image.layer.v1.tar+zstd")
    layer = compose.NewLayer(blob, store.put_bytes(tar, "x").digest, "ADD greeting")
    compose.write_image(store, "zst", [layer], {"Cmd": ["/greeting"]})
    other = fresh(tmp_path)
    archive.load(write(tmp_path, saved(store, "zst")), other)
    image = other.find("zst")
    tree = other.layer_tree(image.diff_ids[0], image.layers[0])
    assert open(os.path.join(tree, "greeting")).read() == "hello zstd\n"


@pytest.mark.parametrize("form", ["docker", "oci"])
def test_corrupt_layer_refused(store, tmp_path, form):
    files = members(saved(store, "busybox"))
    files.pop("index.json" if form == "docker" else "manifest.json")
    layer_name = max(files, key=lambda n: len(files[n]))
    data = bytearray(files[layer_name])
    data[600] ^= 0xFF                 # a byte of busybox's binary
    files[layer_name] = bytes(data)
    other = fresh(tmp_path)
    with pytest.raises(NsmagicError, match="does not match its (digest|diff_id)"):
        archive.load(write(tmp_path, rebuild(files)), other)
    assert other.images() == []
    for kept in ("tmp", "layers", "blobs/sha256"):
        assert os.listdir(other.path(kept)) == []


@pytest.mark.parametrize("data,said", [
    (b"not an archive at all" * 40, "is not an image archive"),
    (rebuild({"hello.txt": b"hi"}), "has neither manifest.json"),
    (rebuild({"manifest.json": b"[{\"Config\": \"gone.json\", \"Layers\": []}]"}),
     "lacks 'gone.json'"),
    (rebuild({"manifest.json": b"{nope"}), "not valid JSON"),
])
def test_bad_archives_one_sentence(tmp_path, data, said):
    with pytest.raises(NsmagicError, match=said):
        archive.load(write(tmp_path, data), fresh(tmp_path))


def test_archive_links_stay_inside(store, tmp_path):
    """A manifest naming a member that is a symlink out of the archive finds nothing."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = b'[{"Config": "c.json", "Layers": []}]'
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("c.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/hostname"
        tar.addfile(link)
    with pytest.raises(NsmagicError, match="lacks 'etc/hostname'"):
        archive.load(write(tmp_path, out.getvalue()), fresh(tmp_path))


def test_cli_save_load_rmi(store, tmp_path):
    path = str(tmp_path / "hello.tar")
    assert nsmagic("save", "-o", path, "hello-world").returncode == 0
    done = nsmagic("rmi", "hello-world")
    assert done.stdout.splitlines()[0] == "Untagged: hello-world:latest"
    assert done.stdout.splitlines()[1].startswith("Deleted: sha256:")
    assert os.listdir(store.path("layers")) == []
    done = nsmagic("load", "-i", path)
    assert done.stdout == "Loaded image: hello-world:latest\n", done.stderr
    assert "hello-world" in nsmagic("images").stdout
    done = nsmagic("load", "-i", str(tmp_path / "missing.tar"))
    assert done.returncode == 125 and done.stderr.startswith("nsmagic: cannot read")


@pytest.mark.parametrize("limit,said", [("size", "decompresses to more than"),
                                        ("disk", "would fill the store's disk")])
def test_a_compressed_archive_that_expands_without_end_is_cut_off(tmp_path, monkeypatch,
                                                                  limit, said):
    """A few MB of gzip may hold gigabytes of zeros: the decompression into the store
    stops at the unpacker's budget, or before the store's disk runs low (both scaled down
    here: 64 MiB of zeros against a budget of 8 MiB, a disk that must keep 1 EiB free)."""
    from nsmagic.images import unpack
    if limit == "size":
        monkeypatch.setattr(unpack, "MAX_BYTES", 8 << 20)
    else:
        monkeypatch.setattr(archive, "KEEP_FREE", 1 << 60)
    path = tmp_path / "bomb.tar.gz"
    with gzip.open(path, "wb") as f:
        for _ in range(64):
            f.write(bytes(1 << 20))
    other = fresh(tmp_path)
    with pytest.raises(NsmagicError, match=said):
        archive.load(str(path), other)
    assert os.listdir(other.path("tmp")) == []
