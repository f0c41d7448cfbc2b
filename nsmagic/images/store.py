"""The local image store: an OCI image-layout, plus each layer unpacked once.

    <root>/                     mode 0700: root's /var/lib/nsmagic, a user's
                                $XDG_DATA_HOME/nsmagic (NSMAGIC_STORE overrides both)
      oci-layout, index.json    the OCI image-layout; index.json names the images
      blobs/sha256/<hex>        manifests, configs and layer archives, as received
      layers/<diff_id hex>/     a layer unpacked (content-addressed by its uncompressed
        tree/                   digest, so images share it): an overlay lower layer
        layer.json              its size and what the unpacker skipped or changed
      containers/<id>/          containers kept after they exit (see containers.py)
      tmp/                      staging: everything lands by rename(2), so an interrupted
                                write leaves no half blob, layer or index

index.json is OCI's: one manifest descriptor per name, the name in the annotation
`io.nsmagic.image.name` (full, "busybox:latest") and its tag in
`org.opencontainers.image.ref.name`, as other OCI tools read it."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field

from .. import dirs
from ..errors import NsmagicError
from . import reference

# gzip, shutil, tempfile and the unpacker are imported where used: a run on an image that is
# already unpacked (the common case, and a cold CLI's) needs none of them.

NAME_KEY = "io.nsmagic.image.name"
REF_KEY = "org.opencontainers.image.ref.name"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = LAYER + "+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFESTS = (MANIFEST, DOCKER_MANIFEST)
GZIP_MAGIC, ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
CHUNK = 1 << 20


class ImageNotFound(NsmagicError):
    """No such image in the store."""


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d

    @classmethod
    def from_json(cls, d: dict) -> Descriptor:
        return cls(d["mediaType"], d["digest"], int(d["size"]), dict(d.get("annotations") or {}))


@dataclass(frozen=True)
class Image:
    """An image in the store: its manifest, its config and the names it goes by."""
    manifest_digest: str
    manifest: dict
    config: dict
    names: tuple[str, ...]

    @property
    def id(self) -> str:
        """Docker's image id: the config's digest."""
        return self.manifest["config"]["digest"]

    @property
    def layers(self) -> list[Descriptor]:
        return [Descriptor.from_json(d) for d in self.manifest.get("layers", [])]

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config.get("rootfs", {}).get("diff_ids", []))

    @property
    def runtime(self) -> dict:
        """The config's `config` part: Entrypoint, Cmd, Env, WorkingDir, User..."""
        return self.config.get("config") or {}


class Store:
    def __init__(self, root: str | None = None):
        self.root = root or dirs.store_root()
        self._held = False

    # --- layout

    def ensure(self) -> Store:
        try:
            return self._ensure()
        except OSError as err:
            raise NsmagicError(f"cannot make the image store at {self.root}: "
                               f"{(err.strerror or str(err)).lower()}; set NSMAGIC_STORE (or "
                               "XDG_DATA_HOME) to a directory of yours.") from None

    def _ensure(self) -> Store:
        if not os.path.isdir(os.path.join(self.root, "blobs", "sha256")):
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            for sub in ("blobs/sha256", "layers", "containers", "tmp"):
                os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
            self._write_json("oci-layout", {"imageLayoutVersion": "1.0.0"})
            if not os.path.exists(self.path("index.json")):
                self._write_json("index.json", {"schemaVersion": 2, "mediaType": INDEX,
                                                "manifests": []})
        os.chmod(self.root, 0o700)   # set-id files of images are never reachable by others
        return self

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def blob_path(self, digest: str) -> str:
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
            raise NsmagicError(f"{digest[:80]!r} is not a sha256 digest.")
        return self.path("blobs", "sha256", hexd)

    @contextlib.contextmanager
    def locked(self):
        """The store's one writer lock (index.json, pruning); blobs and layers land by
        rename and need none."""
        if self._held:            # re-entered (a built-in made while the lock is held)
            yield
            return
        self.ensure()
        fd = os.open(self.path("lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._held = True
            yield
        finally:
            self._held = False
            os.close(fd)

    def staging(self, prefix: str = "stage-") -> str:
        """A directory in tmp/, named for this process (prune leaves a live one's alone)."""
        import tempfile
        self.ensure()
        return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=self.path("tmp"))

    def _write_json(self, rel: str, value) -> None:
        tmp = self.path(f"{rel}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(value, f, indent=1)
            f.write("\n")
        os.replace(tmp, self.path(rel))

    # --- blobs

    def put_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not os.path.exists(path):
            self.ensure()
            tmp = self.path("tmp", f"blob-{os.getpid()}-{os.urandom(4).hex()}")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return Descriptor(media_type, digest, len(data))

    def put_json(self, value, media_type: str) -> Descriptor:
        return self.put_bytes(json.dumps(value, separators=(",", ":")).encode(), media_type)

    def put_stream(self, stream, media_type: str, expect: str | None = None) -> Descriptor:
        """Copy `stream` into a blob, hashing on the way; with `expect`, a digest that
        differs is refused and nothing is kept."""
        import tempfile
        self.ensure()
        h, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.path("tmp"), prefix=f"blob-{os.getpid()}-")
        try:
            with os.fdopen(fd, "wb") as f:
                while chunk := stream.read(CHUNK):
                    h.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
            digest = "sha256:" + h.hexdigest()
            if expect and digest != expect:
                raise NsmagicError(f"a blob's content does not match its digest (expected "
                                   f"{expect[:19]}…, got {digest[:19]}…); it is corrupt or "
                                   "was tampered with, and was not stored.")
            os.replace(tmp, self.blob_path(digest))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return Descriptor(media_type, digest, size)

    def has_blob(self, digest: str) -> bool:
        return os.path.exists(self.blob_path(digest))

    def read_blob(self, digest: str) -> bytes:
        try:
            with open(self.blob_path(digest), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NsmagicError(f"the store lacks the blob {digest[:19]}…; the image is "
                               "incomplete: remove it (nsmagic rmi) and load it again.") from None

    def read_json(self, digest: str) -> dict:
        return json.loads(self.read_blob(digest))

    # --- names (index.json)

    def _index(self) -> dict:
        self.ensure()
        with open(self.path("index.json")) as f:
            return json.load(f)

    def entries(self) -> list[Descriptor]:
        return [Descriptor.from_json(d) for d in self._index().get("manifests", [])]

    def tag(self, name: str, manifest: Descriptor) -> None:
        """Give the image `manifest` the name `name` (taking it from any other image)."""
        ref = reference.parse(name)
        with self.locked():
            index = self._index()
            kept = [d for d in index["manifests"]
                    if (d.get("annotations") or {}).get(NAME_KEY) != ref.name]
            entry = Descriptor(manifest.media_type, manifest.digest, manifest.size,
                               {NAME_KEY: ref.name, REF_KEY: ref.tag})
            kept = [d for d in kept if d["digest"] != manifest.digest   # its unnamed entry
                    or (d.get("annotations") or {}).get(NAME_KEY)]
            for d in index["manifests"]:   # the name's former image stays, as <none>
                if d not in kept and d["digest"] != manifest.digest and not any(
                        k["digest"] == d["digest"] for k in kept):
                    kept.append({k: v for k, v in d.items() if k != "annotations"})
            index["manifests"] = kept + [entry.to_json()]
            self._write_json("index.json", index)

    def untag(self, name: str) -> bool:
        ref = reference.parse(name)
        with self.locked():
            index = self._index()
            kept = [d for d in index["manifests"]
                    if (d.get("annotations") or {}).get(NAME_KEY) != ref.name]
            if len(kept) == len(index["manifests"]):
                return False
            index["manifests"] = kept
            self._write_json("index.json", index)
            return True

    def add_unnamed(self, manifest: Descriptor) -> None:
        """An image without a name (a load of an untagged archive, a build without -t):
        listed as <none>, found by its id, kept until `rmi` or until it is named."""
        with self.locked():
            index = self._index()
            if not any(d["digest"] == manifest.digest for d in index["manifests"]):
                index["manifests"].append(manifest.to_json())
                self._write_json("index.json", index)

    def is_named(self, manifest_digest: str) -> bool:
        return any(d.digest == manifest_digest and d.annotations.get(NAME_KEY)
                   for d in self.entries())

    def forget(self, manifest_digest: str) -> None:
        """Drop every index entry of the image (its names and an unnamed entry)."""
        with self.locked():
            index = self._index()
            index["manifests"] = [d for d in index["manifests"]
                                  if d["digest"] != manifest_digest]
            self._write_json("index.json", index)

    def images(self) -> list[Image]:
        """Every named image, one entry per manifest, with all its names."""
        names: dict[str, list[str]] = {}
        for d in self.entries():
            if d.media_type in MANIFESTS:
                names.setdefault(d.digest, []).append(d.annotations.get(NAME_KEY, ""))
        return [self.image(digest, tuple(n for n in ns if n)) for digest, ns in names.items()]

    def image(self, manifest_digest: str, names: tuple[str, ...] = ()) -> Image:
        manifest = self.read_json(manifest_digest)
        config = self.read_json(manifest["config"]["digest"])
        return Image(manifest_digest, manifest, config, names)

    def find(self, text: str) -> Image | None:
        """By name ("busybox", "busybox:1.36"), by image id or manifest digest, or a unique
        prefix of the id (as Docker takes "3f57d9401f8d")."""
        images = self.images()
        if _looks_like_id(text):
            hexd = text.removeprefix("sha256:")
            hits = [i for i in images if i.id.removeprefix("sha256:").startswith(hexd)
                    or i.manifest_digest.removeprefix("sha256:").startswith(hexd)]
            if len({i.manifest_digest for i in hits}) == 1:
                return hits[0]
        ref = reference.parse(text)
        for image in images:
            if ref.name in image.names:
                return image
        return None

    # --- layers, unpacked once

    def layer_tree(self, diff_id: str, blob: Descriptor | None = None,
                   notices: list[str] | None = None) -> str:
        """The directory holding layer `diff_id` unpacked (an overlay lower layer); made
        from its blob the first time (and then what the unpacker skipped or changed is
        added to `notices`)."""
        hexd = self.blob_path(diff_id).rpartition("/")[2]
        done = self.path("layers", hexd)
        if not os.path.isdir(done):
            if blob is None:
                raise NsmagicError(f"the layer {diff_id[:19]}… is not in the store.")
            said = self._unpack(diff_id, blob, done)
            if notices is not None:
                notices += [f"layer {reference.short_id(diff_id)}: {n}" for n in said]
        return os.path.join(done, "tree")

    def _unpack(self, diff_id: str, blob: Descriptor, done: str) -> list[str]:
        from . import unpack
        stage = self.staging("layer-")
        try:
            os.mkdir(os.path.join(stage, "tree"), 0o755)
            what = f"the layer {reference.short_id(diff_id)}"
            with open(self.blob_path(blob.digest), "rb") as raw:
                stream = HashingReader(decompressed(raw))
                report = unpack.unpack(stream, os.path.join(stage, "tree"), what=what)
                stream.drain()
            if stream.digest() != diff_id:
                raise unpack.UnpackError(f"{what}'s content does not match its diff_id; the "
                                         "image is corrupt.")
            with open(os.path.join(stage, "layer.json"), "w") as f:
                json.dump({"diff_id": diff_id, "size": report.size,
                           "notices": report.notices()}, f)
            try:
                os.rename(stage, done)
            except OSError:
                if not os.path.isdir(done):   # else another process unpacked it first
                    raise
        finally:
            if os.path.exists(stage):
                remove(stage)
        return report.notices()

    def layer_info(self, diff_id: str) -> dict:
        hexd = diff_id.removeprefix("sha256:")
        try:
            with open(self.path("layers", hexd, "layer.json")) as f:
                return json.load(f)
        except OSError:
            return {}

    # --- pruning

    def referenced(self) -> tuple[set[str], set[str]]:
        """(blob digests, diff_ids) that images in the index, kept containers and the
        build cache use."""
        from .containers import kept_images  # containers pin their images' layers
        images = self.images()
        for digest in kept_images(self) | self._cached_images():
            with contextlib.suppress(NsmagicError, OSError, ValueError, KeyError):
                images.append(self.image(digest))
        blobs, diffs = set(), set()
        for image in images:
            blobs |= {image.manifest_digest, image.id} | {d.digest for d in image.layers}
            diffs |= set(image.diff_ids)
        return blobs, diffs

    def _cached_images(self) -> set[str]:
        """The images the build cache points to (see build.py)."""
        found = set()
        for key in os.listdir(self.path("cache")) if os.path.isdir(self.path("cache")) else ():
            with contextlib.suppress(OSError), open(self.path("cache", key)) as f:
                found.add(f.read().strip())
        return found

    def _drop_dangling(self) -> None:
        """Unnamed images (<none>) go, as `docker image prune` removes dangling ones; those
        a kept container was made from stay."""
        from .containers import kept_images
        used = kept_images(self)
        index = self._index()
        index["manifests"] = [d for d in index["manifests"]
                              if (d.get("annotations") or {}).get(NAME_KEY)
                              or d["digest"] in used]
        self._write_json("index.json", index)

    def prune(self, everything: bool = True) -> tuple[int, int]:
        """Remove blobs and unpacked layers no image or container uses; (count, bytes).
        With `everything` (`image prune`), unnamed images first, and what interrupted
        writes left in tmp/ after."""
        count = freed = 0
        with self.locked():
            if everything:   # `image prune`: unnamed images and the build cache go
                self._drop_dangling()
                remove(self.path("cache"))
            blobs, diffs = self.referenced()
            for hexd in os.listdir(self.path("blobs", "sha256")):
                if "sha256:" + hexd not in blobs:
                    path = self.path("blobs", "sha256", hexd)
                    freed += os.lstat(path).st_size
                    os.unlink(path)
                    count += 1
            for hexd in os.listdir(self.path("layers")):
                if "sha256:" + hexd not in diffs:
                    freed += self.layer_info("sha256:" + hexd).get("size", 0)
                    remove(self.path("layers", hexd))
                    count += 1
            for name in os.listdir(self.path("tmp")) if everything else ():
                if not _alive(name):
                    remove(self.path("tmp", name))
        return count, freed


def _alive(staged: str) -> bool:
    """Whether the process that named a tmp/ entry (KIND-PID-RANDOM) still runs."""
    try:
        return dirs.pid_exists(int(staged.split("-")[1]))
    except (IndexError, ValueError):
        return False


def _looks_like_id(text: str) -> bool:
    hexd = text.removeprefix("sha256:")
    return 4 <= len(hexd) <= 64 and all(c in "0123456789abcdef" for c in hexd)


def decompressed(raw):
    """gzip, zstd or plain, told by the first bytes (a media type may say otherwise)."""
    head = raw.peek(4)[:4] if hasattr(raw, "peek") else b""
    if head[:2] == GZIP_MAGIC:
        import gzip
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head == ZSTD_MAGIC:
        try:
            import zstandard
        except ImportError:
            raise NsmagicError("this layer is zstd-compressed and the zstandard module is "
                               "missing; pip install zstandard.") from None
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return raw


class HashingReader:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, inner):
        self.inner = inner
        self.h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.h.update(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self.h.hexdigest()


def remove(path: str) -> None:
    """rm -rf that also empties directories an image left without write permission."""
    def retry(func, target, _exc):
        parent = os.path.dirname(target)
        os.chmod(parent, 0o700)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, 0o700)
        func(target)
    if os.path.isdir(path) and not os.path.islink(path):
        import shutil
        shutil.rmtree(path, onerror=retry)
    elif os.path.lexists(path):
        os.unlink(path)
