"""Finding an image by the name a user gives: the store's, or a built-in made on first use;
`host` (the default) is not in the store, and `scratch` has nothing to run."""

from __future__ import annotations

from ..errors import NsmagicError
from . import reference
from .store import Image, ImageNotFound, Store

HOST, SCRATCH = "host", "scratch"
BUILTIN = ("hello-world", "busybox")   # made by builtin.py, imported only to make one


def find(text: str, store: Store | None = None) -> Image:
    """The image named `text` (a name, an id or a unique id prefix)."""
    store = store or Store()
    if text == HOST:
        raise NsmagicError("host is the host's own /usr, /etc and /opt, not an image in the "
                           "store; it is what a run uses when no image is named.")
    image = store.find(text)
    if image is not None:
        return image
    if _is_manifest_digest(text, store):   # an image a build made on its way (no name)
        return store.image(text)
    ref = reference.parse(text)
    if text == SCRATCH or ref.name == "scratch:latest":
        raise NsmagicError("scratch is the empty image, for FROM scratch in a Dockerfile; "
                           "there is nothing in it to run.")
    if not ref.registry and not ref.digest and ref.tag == reference.DEFAULT_TAG \
            and ref.repository in BUILTIN:
        from . import builtin
        with store.locked():   # two runs asking at once make it once
            image = store.find(text)
            if image is None:
                builtin.make(store, ref.repository)
        return store.find(text)
    raise ImageNotFound(f"there is no image {ref.name} on this machine; `nsmagic images` "
                        "lists what there is (hello-world and busybox are made here on "
                        "first use; load another with nsmagic load -i FILE).")


def _is_manifest_digest(text: str, store: Store) -> bool:
    hexd = text.removeprefix("sha256:")
    return (text.startswith("sha256:") and len(hexd) == 64 and store.has_blob(text)
            and b'"layers"' in store.read_blob(text)[:1 << 20])
