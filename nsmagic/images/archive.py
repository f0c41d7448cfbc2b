"""`nsmagic load` and `nsmagic save`: image archives in both formats other tools write.

- docker save: manifest.json ([{Config, RepoTags, Layers}]), the config and layer tars by
  the paths it names (Docker 25+ points them into an OCI blobs/ directory, by symlinks);
- OCI archive (skopeo's oci-archive:, Docker 25+): oci-layout, index.json, blobs/sha256/.

The archive itself may be plain, gzip or zstd. It is read in place (tarfile, random access;
a compressed one is first decompressed into the store's tmp/): nothing of it is extracted
by path. Members are found by their normalised names; a link inside the archive is followed
only to another member. Every blob read into the store is hashed: an OCI blob must match its
digest, a layer its diff_id (checked as it is unpacked, during the load), so a corrupt
archive is refused, and nothing is named until every image of it has landed.

`save` writes one archive that is both: manifest.json for `docker load` and
`skopeo copy docker-archive:`, oci-layout and index.json for `oci-archive:`."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import sys
import tarfile

from ..errors import NsmagicError, SpecError
from ..spec import OptionParser
from . import catalog, compose, reference, unpack
from . import store as st

MAX_JSON = 16 << 20
DOCKER_NAME_KEY = "io.containerd.image.name"


class ArchiveError(NsmagicError):
    pass


# --- reading an archive


class _Archive:
    """A tar read by member name, never extracted."""

    def __init__(self, path: str):
        try:
            self.tar = unpack.open_tar(name=path, mode="r:")
        except (tarfile.TarError, OSError) as err:
            raise ArchiveError(f"{path} is not an image archive (not a tar: {err}); give a "
                               "file made by docker save, nsmagic save or skopeo.") from None
        self.members = {}
        for m in self.tar.getmembers():
            name = posixpath.normpath(m.name.lstrip("/"))
            if not name.startswith("../"):
                self.members[name] = m

    def member(self, name: str, hops: int = 0) -> tarfile.TarInfo:
        name = posixpath.normpath(name.lstrip("/"))
        m = self.members.get(name)
        if m is None or hops > 8:
            raise ArchiveError(f"the archive lacks {name[:200]!r}, which its manifest names; "
                               "it is incomplete or damaged.")
        if m.issym() or m.islnk():
            base = posixpath.dirname(name) if m.issym() else ""
            return self.member(posixpath.join(base, m.linkname), hops + 1)
        if not m.isreg():
            raise ArchiveError(f"{name[:200]!r} in the archive is not a file.")
        return m

    def has(self, name: str) -> bool:
        return name in self.members

    def open(self, name: str):
        return self.tar.extractfile(self.member(name))

    def json(self, name: str):
        m = self.member(name)
        if m.size > MAX_JSON:
            raise ArchiveError(f"{name[:200]!r} in the archive is too large to be JSON.")
        try:
            return json.loads(self.tar.extractfile(m).read())
        except ValueError:
            raise ArchiveError(f"{name[:200]!r} in the archive is not valid JSON; the archive "
                               "is damaged.") from None

    def close(self) -> None:
        self.tar.close()


@contextlib.contextmanager
def _plain_tar(store: st.Store, path: str):
    """The archive as an uncompressed tar file: itself, or decompressed into tmp/."""
    try:
        raw = open(path, "rb")
    except OSError as err:
        raise ArchiveError(f"cannot read {path}: {err.strerror.lower()}.") from None
    with raw:
        head = raw.peek(4)[:4]
        if head[:2] != st.GZIP_MAGIC and head != st.ZSTD_MAGIC and path != "/dev/stdin":
            yield path
            return
        stage = store.staging("load-")
        try:
            with open(os.path.join(stage, "archive.tar"), "wb") as out:
                _bounded_copy(st.decompressed(raw), out, path)
            yield os.path.join(stage, "archive.tar")
        finally:
            st.remove(stage)


KEEP_FREE = 1 << 30   # a decompressing archive stops before the store's disk has less free


def _bounded_copy(src, out, path: str) -> None:
    """A compressed archive decompressed, no larger than the unpacker takes of a layer and
    never filling the store's disk (a few MB of zeros compress a thousandfold)."""
    written = look_at = 0
    while chunk := src.read(st.CHUNK):
        out.write(chunk)
        written += len(chunk)
        if written > unpack.MAX_BYTES:
            raise ArchiveError(f"{path} decompresses to more than "
                               f"{unpack.MAX_BYTES >> 20} MiB: refused.")
        if written >= look_at:     # at first, then every 64 MiB: the disk's free space
            look_at = written + (64 << 20)
            fs = os.fstatvfs(out.fileno())
            if fs.f_bavail * fs.f_frsize < KEEP_FREE:
                raise ArchiveError(f"{path} decompressed would fill the store's disk (less "
                                   f"than {KEEP_FREE >> 30} GiB left): refused; make room "
                                   "or load it uncompressed.")


def load(path: str, store: st.Store | None = None, progress=None) -> list[str]:
    """Load every image of the archive at `path`; returns the names (or ids) loaded."""
    store = (store or st.Store()).ensure()
    say = progress or (lambda _text: None)
    with _plain_tar(store, path) as plain:
        archive = _Archive(plain)
        try:
            with store.locked():
                try:
                    found = (_docker_images(archive, store, say)
                             if archive.has("manifest.json") else
                             _oci_images(archive, store, say))
                except BaseException:
                    store.prune(everything=False)   # the blobs of a load that failed
                    raise
                if not found:
                    raise ArchiveError(f"{path} holds no image.")
                loaded = []
                for names, manifest in found:   # named only once all have landed
                    for name in names:
                        store.tag(name, manifest)
                    if not names:
                        store.add_unnamed(manifest)
                    loaded += names or [store.image(manifest.digest).id]
                return loaded
        finally:
            archive.close()


def _docker_images(archive: _Archive, store: st.Store, say) -> list:
    entries = archive.json("manifest.json")
    if not isinstance(entries, list):
        raise ArchiveError("the archive's manifest.json is not a list of images.")
    found = []
    for entry in entries:
        config_bytes = archive.open(entry["Config"]).read(MAX_JSON)
        config = json.loads(config_bytes)
        config_desc = store.put_bytes(config_bytes, st.CONFIG)
        layers = [_layer_blob(archive, store, p, say) for p in entry.get("Layers") or []]
        manifest = _manifest(store, config_desc, layers, config, say)
        names = [_local_name(t) for t in entry.get("RepoTags") or []]
        found.append((names, manifest))
    return found


def _layer_blob(archive: _Archive, store: st.Store, path: str, say) -> st.Descriptor:
    stream = archive.open(path)
    head = stream.read(4)
    stream.seek(0)
    media = (st.LAYER_GZIP if head[:2] == st.GZIP_MAGIC else
             st.LAYER + "+zstd" if head == st.ZSTD_MAGIC else st.LAYER)
    say(f"copying layer {path}")
    return store.put_stream(stream, media)


def _oci_images(archive: _Archive, store: st.Store, say) -> list:
    if not archive.has("index.json"):
        raise ArchiveError("the archive has neither manifest.json (docker save) nor "
                           "index.json (OCI); it is not an image archive.")
    found = []
    for desc in archive.json("index.json").get("manifests") or []:
        manifest = _resolve_platform(archive, store, st.Descriptor.from_json(desc))
        for blob in [manifest["config"], *manifest.get("layers", [])]:
            _copy_blob(archive, store, st.Descriptor.from_json(blob), say)
        config = store.read_json(manifest["config"]["digest"])
        blobs = [st.Descriptor.from_json(d) for d in manifest.get("layers", [])]
        _unpack(store, blobs, config, say)
        found.append((_oci_names(desc), _put_manifest(archive, store, desc, manifest)))
    return found


def _resolve_platform(archive: _Archive, store: st.Store, desc: st.Descriptor) -> dict:
    """A manifest, or from an index (a multi-platform image) this machine's."""
    value = _blob_json(archive, desc)
    if "manifests" in value:
        mine = [m for m in value["manifests"]
                if (m.get("platform") or {}).get("architecture") == compose.architecture()]
        if not mine:
            raise ArchiveError(f"the archive has no image for {compose.architecture()} "
                               "(this machine).")
        return _resolve_platform(archive, store, st.Descriptor.from_json(mine[0]))
    value["_descriptor"] = desc
    return value


def _blob_json(archive: _Archive, desc: st.Descriptor) -> dict:
    data = _verified(archive, desc).read(MAX_JSON)
    if "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
        raise ArchiveError(f"the archive's blob {desc.digest[:19]}… does not match its "
                           "digest; the archive is corrupt.")
    return json.loads(data)


def _verified(archive: _Archive, desc: st.Descriptor):
    hexd = desc.digest.partition(":")[2]
    return archive.open(f"blobs/sha256/{hexd}")


def _copy_blob(archive: _Archive, store: st.Store, desc: st.Descriptor, say) -> None:
    if store.has_blob(desc.digest):
        return
    say(f"copying blob {desc.digest[:19]}…")
    try:
        store.put_stream(_verified(archive, desc), desc.media_type, expect=desc.digest)
    except NsmagicError as err:
        raise ArchiveError(f"the archive is corrupt: {err}") from None


def _put_manifest(archive, store: st.Store, desc: dict, manifest: dict) -> st.Descriptor:
    inner = manifest.pop("_descriptor")
    _copy_blob(archive, store, inner, lambda _t: None)
    return st.Descriptor(inner.media_type or st.MANIFEST, inner.digest, inner.size)


def _oci_names(desc: dict) -> list[str]:
    notes = desc.get("annotations") or {}
    name = notes.get(DOCKER_NAME_KEY) or notes.get(st.NAME_KEY) or ""
    ref = notes.get(st.REF_KEY, "")
    if not name and (":" in ref or "/" in ref):   # some tools keep the whole name there
        name = ref
    return [_local_name(name)] if name else []


def _local_name(name: str) -> str:
    """Docker Hub's full names as Docker shows them ("busybox:latest")."""
    name = name.removeprefix("docker.io/library/").removeprefix("docker.io/")
    return reference.parse(name).name


def _unpack(store: st.Store, layers: list[st.Descriptor], config_json: dict, say) -> None:
    """Every layer unpacked now (so checked against its diff_id now), what the unpacker
    skipped or changed said."""
    diff_ids = (config_json.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(layers):
        raise ArchiveError(f"the archive's image lists {len(layers)} layers and its config "
                           f"{len(diff_ids)}; it is damaged.")
    notices: list[str] = []
    for diff_id, blob in zip(diff_ids, layers):
        store.layer_tree(diff_id, blob, notices)
    for notice in notices:
        say(notice)


def _manifest(store: st.Store, config: st.Descriptor, layers: list[st.Descriptor],
              config_json: dict, say) -> st.Descriptor:
    _unpack(store, layers, config_json, say)
    return store.put_json({"schemaVersion": 2, "mediaType": st.MANIFEST,
                           "config": config.to_json(),
                           "layers": [d.to_json() for d in layers]}, st.MANIFEST)


# --- writing one


def save(names: list[str], out, store: st.Store | None = None) -> None:
    """One archive of the images `names`, to the binary file `out`."""
    store = (store or st.Store()).ensure()
    images = [(n, catalog.find(n, store)) for n in names]
    written: set[str] = set()
    docker, index = [], []
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        for asked, image in images:
            blobs = [image.manifest_digest, image.id] + [d.digest for d in image.layers]
            for digest in blobs:
                if digest not in written:
                    _add_blob(tar, store, digest)
                    written.add(digest)
            full = _full_name(asked)
            tags = [full] if full in image.names else list(image.names)   # an id: all
            docker.append({"Config": _blob_name(image.id), "RepoTags": tags,
                           "Layers": [_blob_name(d.digest) for d in image.layers]})
            size = os.path.getsize(store.blob_path(image.manifest_digest))
            for name in tags or [""]:
                notes = ({DOCKER_NAME_KEY: name, st.REF_KEY: reference.parse(name).tag}
                         if name else {})
                index.append(st.Descriptor(st.MANIFEST, image.manifest_digest, size,
                                           notes).to_json())
        _add(tar, "index.json", json.dumps({"schemaVersion": 2, "mediaType": st.INDEX,
                                            "manifests": index}).encode())
        _add(tar, "manifest.json", json.dumps(docker).encode())


def _full_name(text: str) -> str | None:
    try:
        return reference.parse(text).name
    except SpecError:
        return None


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.partition(":")[2]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _add_blob(tar: tarfile.TarFile, store: st.Store, digest: str) -> None:
    path = store.blob_path(digest)
    info = tarfile.TarInfo(_blob_name(digest))
    info.size, info.mode, info.mtime = os.path.getsize(path), 0o644, 0
    with open(path, "rb") as f:
        tar.addfile(info, f)


# --- the commands


def load_command(argv: list[str]) -> int:
    p = OptionParser(prog="nsmagic load", description="load images from a docker save or "
                     "OCI archive (plain, gzip or zstd)")
    p.add_argument("-i", "--input", metavar="FILE", help="the archive (default: stdin)")
    p.add_argument("-q", "--quiet", action="store_true", help="say only what was loaded")
    args = p.parse_args(argv)
    path = args.input or "/dev/stdin"
    say = None if args.quiet else (lambda text: print(text, file=sys.stderr))
    for name in load(path, progress=say):
        print(f"Loaded image{' ID' if name.startswith('sha256:') else ''}: {name}")
    return 0


def save_command(argv: list[str]) -> int:
    p = OptionParser(prog="nsmagic save", description="save images to an archive that "
                     "docker load, skopeo (docker-archive: and oci-archive:) and nsmagic "
                     "load read")
    p.add_argument("-o", "--output", metavar="FILE", help="the archive (default: stdout)")
    p.add_argument("names", nargs="+", metavar="IMAGE")
    args = p.parse_args(argv)
    if args.output is None and sys.stdout.isatty():
        raise SpecError("nsmagic save would write a binary archive to the terminal; give "
                        "-o FILE or redirect stdout.")
    if args.output is None:
        save(args.names, sys.stdout.buffer)
        return 0
    tmp = f"{args.output}.{os.getpid()}.part"
    try:
        with open(tmp, "wb") as out:
            save(args.names, out)
        os.replace(tmp, args.output)   # never half an archive under the name asked for
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return 0
