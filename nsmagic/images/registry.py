"""Pull and push over the OCI distribution API (the protocol of Docker Hub, ECR, GHCR and
the reference registry), through oras-py's Registry client: it holds the HTTP session and
answers the registry's 401 challenges (HTTP basic, or a bearer token fetched with the
credentials). nsmagic adds what an image store needs on top:

- a manifest list / OCI index is resolved to this machine's platform (linux/<arch>);
- every manifest and blob is hashed as it arrives and refused unless it matches its digest
  (blobs land by rename, so a refused or interrupted one leaves nothing), and the layers
  are unpacked (and so checked against the config's diff_ids) before the image is named:
  an interrupted pull leaves no half image (the blobs it finished are reused next time);
- a manifest is pushed as the very bytes the store holds, so its digest is the same there;
- plain HTTP only with --insecure and only to a loopback address.

Why oras-py and not python-dxf (the other maintained registry client on PyPI): dxf
verifies blob digests itself, but refuses credentials over plain HTTP outright, which a
registry on loopback with htpasswd needs; docker-registry-client is unmaintained since
2017. oras-py's higher-level push/pull are for OCI artifacts (they re-serialise manifests),
so its request layer (do_request) is used, not those."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import socket
import sys
import time

from ..errors import NsmagicError, SpecError
from . import catalog, compose, reference
from . import store as st

INDEXES = (st.INDEX, "application/vnd.docker.distribution.manifest.list.v2+json")
ACCEPT = ", ".join((*st.MANIFESTS, *INDEXES))
CHUNK = 1 << 20


class RegistryError(NsmagicError):
    pass


# --- credentials (nsmagic login), kept as Docker keeps them: base64 user:password, 0600


def _auth_file() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "nsmagic", "auth.json")


def _read_auths() -> dict:
    try:
        with open(_auth_file()) as f:
            return json.load(f).get("auths", {})
    except (OSError, ValueError):
        return {}


def login(registry: str, username: str, password: str, insecure: bool = False) -> None:
    """Check the credentials against the registry, then keep them (mode 0600)."""
    client = Client(registry, insecure, (username, password))
    client.check()
    auths = _read_auths()
    auths[registry] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    path = _auth_file()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"auths": auths}, f)
    os.replace(path + ".tmp", path)


def logout(registry: str) -> bool:
    auths = _read_auths()
    if auths.pop(registry, None) is None:
        return False
    with open(_auth_file(), "w") as f:
        json.dump({"auths": auths}, f)
    return True


def _credentials(registry: str) -> tuple[str, str] | None:
    entry = _read_auths().get(registry)
    if not entry:
        return None
    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    return user, password


# --- the client


def _is_loopback(host: str) -> bool:
    name = host.rpartition(":")[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(name)).is_loopback
        except OSError:
            return False


class Client:
    """One registry: its oras-py session, its auth, the requests nsmagic makes."""

    def __init__(self, registry: str, insecure: bool,
                 credentials: tuple[str, str] | None = None):
        if insecure and not _is_loopback(registry):
            raise SpecError(f"--insecure (plain HTTP) is only for a registry on this machine's "
                            f"loopback; {registry} is not one: use HTTPS.")
        try:
            import oras.provider
        except ImportError:
            raise NsmagicError("pull and push need oras-py: pip install oras.") from None
        self.registry, self.scheme = registry, "http" if insecure else "https"
        self.credentials = credentials or _credentials(registry)
        self.backend = self._challenge_scheme()
        self.oras = oras.provider.Registry(hostname=registry, insecure=insecure,
                                           auth_backend=self.backend)
        if self.credentials:
            self.oras.auth.set_basic_auth(*self.credentials)

    def _challenge_scheme(self) -> str:
        """basic or token: what /v2/ asks for (oras-py needs to know which beforehand)."""
        import requests
        try:
            r = requests.get(self.url("/v2/"), timeout=10)
        except requests.RequestException as err:
            raise RegistryError(f"cannot reach the registry {self.registry}: {_why(err)}; is "
                                "it running (and for plain HTTP on loopback, pass "
                                "--insecure)?") from None
        challenge = r.headers.get("WWW-Authenticate", "").lower()
        return "basic" if challenge.startswith("basic") else "token"

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.registry}{path}"

    def request(self, method: str, path: str, what: str, ok=(200,), headers=None, **kw):
        """One request; a 401 is answered by oras-py (a token fetched, or basic auth). With
        basic auth the header goes on every request: a streamed body cannot be sent twice."""
        import requests
        headers = dict(headers or {})
        if self.backend == "basic" and self.credentials:
            user, password = self.credentials
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{user}:{password}".encode()).decode()
        kw["headers"] = headers
        try:
            r = self._do_request(self.url(path) if path.startswith("/") else path, method,
                                 **kw)
        except requests.RequestException as err:
            raise RegistryError(f"cannot reach the registry {self.registry}: "
                                f"{_why(err)}.") from None
        except Exception as err:   # oras-py raises plain exceptions for failed auth flows
            raise RegistryError(f"the registry {self.registry} refused {what}: {err}.") from None
        if r.status_code in (401, 403):
            raise RegistryError(f"the registry {self.registry} refused {what} (HTTP "
                                f"{r.status_code}): log in with nsmagic login "
                                f"{self.registry} -u USER --password-stdin, or check the "
                                "user's rights.")
        if r.status_code not in ok:
            raise RegistryError(f"the registry {self.registry} answered HTTP {r.status_code} "
                                f"to {what}: {_said(r)}")
        return r

    def _do_request(self, url: str, method: str, **kw):
        """A request, and the distribution spec's token flow on a 401: a token for the scope
        the challenge names, fetched from its realm by oras-py (with the login's basic auth,
        else anonymously), then the request once more. Not oras-py's do_request: that one
        re-sends a token it holds when the registry asks for a wider scope (a push after a
        pull's token is refused again), and its retry decorator sleeps 3 s, 5 s, 11 s, 29 s,
        83 s on any error, where a user wants the one-sentence answer at once."""
        kw.setdefault("verify", getattr(self.oras, "_tls_verify", True))
        if self.backend == "basic":   # the header is on every request already (above)
            return self.oras.session.request(method, url, **kw)
        from oras.auth.utils import parse_auth_header
        auth, headers = self.oras.auth, kw.pop("headers", None) or {}
        r = self.oras.session.request(method, url, headers={**headers,
                                                            **auth.get_auth_header()}, **kw)
        challenge = r.headers.get("WWW-Authenticate", "")
        replayable = isinstance(kw.get("data"), (bytes, type(None)))   # not a spent stream
        if r.status_code != 401 or not challenge.lower().startswith("bearer") \
                or not replayable:
            return r
        token = auth.request_token(parse_auth_header(challenge))
        if not token:
            return r      # the token server refused: the 401 says so to the caller
        auth.token = token
        return self.oras.session.request(method, url, headers={**headers,
                                                               **auth.get_auth_header()}, **kw)

    def check(self) -> None:
        self.request("GET", "/v2/", "the credentials")


def _why(err) -> str:
    text = str(err)
    for known in ("Connection refused", "Name or service not known", "timed out",
                  "certificate verify failed", "wrong version number"):
        if known in text:
            return known.lower()
    return text[:200]


def _said(r) -> str:
    try:
        errors = r.json().get("errors") or []
        return "; ".join(e.get("message", "") for e in errors) or r.text[:200]
    except ValueError:
        return r.text[:200]


# --- pull


def pull(name: str, insecure: bool = False, store: st.Store | None = None,
         progress=None) -> st.Image:
    ref = reference.parse(name)
    if not ref.registry:
        raise SpecError(f"{name}: give the registry in the name (such as "
                        f"127.0.0.1:5000/{ref.repository}); nsmagic has no default registry.")
    store = (store or st.Store()).ensure()
    say = progress or Progress()
    client = Client(ref.registry, insecure)
    raw, media_type = _manifest(client, ref, ref.digest or ref.tag)
    manifest = json.loads(raw)
    if media_type in INDEXES or "manifests" in manifest:
        raw, media_type = _manifest(client, ref, _platform(manifest, name))
        manifest = json.loads(raw)
    blobs = [manifest["config"], *manifest.get("layers", [])]
    for desc in blobs:
        _fetch(client, ref, store, st.Descriptor.from_json(desc), say)
    config = store.read_json(manifest["config"]["digest"])
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(manifest.get("layers", [])):
        raise RegistryError(f"{name}: its config and manifest disagree on the layers.")
    for diff_id, desc in zip(diff_ids, manifest["layers"]):
        store.layer_tree(diff_id, st.Descriptor.from_json(desc))   # checked, unpacked once
    manifest_desc = store.put_bytes(raw, media_type if media_type in st.MANIFESTS
                                    else st.MANIFEST)
    store.tag(ref.name, manifest_desc)
    say.done(f"{ref.name}: pulled, {manifest_desc.digest}")
    return store.find(ref.name)


MAX_MANIFEST = 4 << 20   # what registries accept (the distribution spec's advice)


def _manifest(client: Client, ref, what: str) -> tuple[bytes, str]:
    r = client.request("GET", f"/v2/{ref.repository}/manifests/{what}",
                       f"the manifest of {ref.repo}:{what}", ok=(200, 404),
                       headers={"Accept": ACCEPT}, stream=True)
    with contextlib.closing(r):
        if r.status_code == 404:
            raise catalog.ImageNotFound(f"the registry {client.registry} has no image "
                                        f"{ref.repository}:{what}.")
        r.raw.decode_content = True
        raw = r.raw.read(MAX_MANIFEST + 1)
    if len(raw) > MAX_MANIFEST:
        raise RegistryError(f"the manifest of {ref.repo}:{what} is larger than "
                            f"{MAX_MANIFEST >> 20} MiB: refused.")
    expected = what if what.startswith("sha256:") else r.headers.get("Docker-Content-Digest")
    if expected and "sha256:" + hashlib.sha256(raw).hexdigest() != expected:
        raise RegistryError(f"the manifest of {ref.repo}:{what} does not match its digest "
                            f"{expected[:19]}…; refused.")
    media_type = r.headers.get("Content-Type", "").split(";")[0] or \
        json.loads(raw).get("mediaType", "")
    return raw, media_type


def _platform(index: dict, name: str) -> str:
    arch = compose.architecture()
    for m in index.get("manifests", []):
        p = m.get("platform") or {}
        if p.get("os", "linux") == "linux" and p.get("architecture") == arch:
            return m["digest"]
    have = ", ".join(f"{(m.get('platform') or {}).get('os')}/"
                     f"{(m.get('platform') or {}).get('architecture')}"
                     for m in index.get("manifests", []))
    raise RegistryError(f"{name} has no image for linux/{arch} (this machine); it has: "
                        f"{have or 'none'}.")


def _fetch(client: Client, ref, store: st.Store, desc: st.Descriptor, say) -> None:
    if store.has_blob(desc.digest):
        say.done(f"{reference.short_id(desc.digest)}: already here")
        return
    r = client.request("GET", f"/v2/{ref.repository}/blobs/{desc.digest}",
                       f"the blob {desc.digest[:19]}…", stream=True)
    with contextlib.closing(r):
        r.raw.decode_content = True
        stream = _Counting(r.raw, desc, say)
        try:
            store.put_stream(stream, desc.media_type, expect=desc.digest)
        except NsmagicError as err:
            raise RegistryError(f"{ref.repo}: {err}") from None
    say.done(f"{reference.short_id(desc.digest)}: pulled {_size(desc.size)}")


class _Counting:
    """A blob's stream, reporting its progress as it is read (downloads), or as requests
    reads it to send it (uploads: a sized, iterable body is streamed, not loaded)."""

    def __init__(self, raw, desc: st.Descriptor, say):
        self.raw, self.desc, self.say, self.seen = raw, desc, say, 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.seen += len(data)
        if self.seen > self.desc.size:   # a registry that sends on must not fill the disk
            raise RegistryError(f"the blob {self.desc.digest[:19]}… is longer than the "
                                f"{self.desc.size} bytes its manifest gives: refused.")
        self.say.update(reference.short_id(self.desc.digest), self.seen, self.desc.size)
        return data

    def __len__(self) -> int:
        return self.desc.size

    def __iter__(self):
        while chunk := self.read(CHUNK):
            yield chunk


# --- push


def push(name: str, insecure: bool = False, store: st.Store | None = None,
         progress=None) -> str:
    """Push the image named `name` (which names its registry); returns its digest."""
    ref = reference.parse(name)
    if not ref.registry:
        raise SpecError(f"{name}: give the registry in the name; tag it first, such as: "
                        f"nsmagic tag {name} 127.0.0.1:5000/{ref.repository}")
    store = (store or st.Store()).ensure()
    say = progress or Progress()
    image = catalog.find(name, store)
    client = Client(ref.registry, insecure)
    for desc in [*image.layers, st.Descriptor(st.CONFIG, image.id,
                                              len(store.read_blob(image.id)))]:
        _upload(client, ref, store, desc, say)
    raw = store.read_blob(image.manifest_digest)
    media_type = image.manifest.get("mediaType", st.MANIFEST)
    client.request("PUT", f"/v2/{ref.repository}/manifests/{ref.tag}",
                   f"the manifest of {ref.name}", ok=(200, 201),
                   data=raw, headers={"Content-Type": media_type})
    say.done(f"{ref.name}: digest: {image.manifest_digest} size: {len(raw)}")
    return image.manifest_digest


def _upload(client: Client, ref, store: st.Store, desc: st.Descriptor, say) -> None:
    path = f"/v2/{ref.repository}/blobs/{desc.digest}"
    if client.request("HEAD", path, "a blob check", ok=(200, 404)).status_code == 200:
        say.done(f"{reference.short_id(desc.digest)}: layer already exists")
        return
    r = client.request("POST", f"/v2/{ref.repository}/blobs/uploads/", "an upload",
                       ok=(202,))
    location = r.headers["Location"]
    if location.startswith("/"):
        location = client.url(location)
    sep = "&" if "?" in location else "?"
    with open(store.blob_path(desc.digest), "rb") as f:
        client.request("PUT", f"{location}{sep}digest={desc.digest}",
                       f"the blob {desc.digest[:19]}…", ok=(201,),
                       data=_Counting(f, desc, say),
                       headers={"Content-Type": "application/octet-stream"})
    say.done(f"{reference.short_id(desc.digest)}: pushed {_size(desc.size)}")


def _size(n: int) -> str:
    from .views import human_size
    return human_size(n)


class Progress:
    """One line per blob: rewritten in place on a terminal (and in a notebook, whose output
    honours a carriage return), a line when it is done."""

    def __init__(self, out=None):
        self.out = out or sys.stderr
        self.last = 0.0
        # a bar where a carriage return rewrites the line: a terminal, a notebook's output
        self.live = (getattr(self.out, "isatty", lambda: False)()
                     or type(self.out).__module__.startswith("ipykernel"))

    def update(self, what: str, seen: int, total: int) -> None:
        if not self.live or total < (1 << 20):   # a small blob: its line when it is done
            return
        now = time.monotonic()
        if now - self.last < 0.1 and seen < total:
            return
        self.last = now
        width = 30
        filled = int(width * seen / total) if total else width
        self.out.write(f"\r{what}: [{'=' * filled}{' ' * (width - filled)}] "
                       f"{_size(seen)}/{_size(total)}")
        self.out.flush()

    def done(self, text: str) -> None:
        self.out.write(f"\r{text}{' ' * 20}\n" if self.live else f"{text}\n")
        self.out.flush()
