"""Image names, as Docker writes them: [REGISTRY/]REPOSITORY[:TAG][@DIGEST].

A name without a registry stays local ("busybox:latest", not "docker.io/library/busybox"):
this store serves a machine without Docker Hub, and a registry is named when one is used."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SpecError

DEFAULT_TAG = "latest"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_REGISTRY = re.compile(r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::\d+)?$")


@dataclass(frozen=True)
class Reference:
    registry: str          # "" for a local name
    repository: str        # "library/busybox", "busybox", "team/tool"
    tag: str
    digest: str = ""       # "sha256:..." when the name pins one

    @property
    def name(self) -> str:
        """REPOSITORY:TAG with the registry in front when there is one."""
        front = f"{self.registry}/" if self.registry else ""
        return f"{front}{self.repository}:{self.tag}"

    @property
    def repo(self) -> str:
        return f"{self.registry}/{self.repository}" if self.registry else self.repository


def parse(text: str) -> Reference:
    """A Reference, or SpecError with one sentence saying what is wrong with the name."""
    rest, _, digest = text.partition("@")
    if digest and not _DIGEST.match(digest):
        raise SpecError(f"the image name {text!r} has a malformed digest; write "
                        "NAME@sha256:<64 hex digits>.")
    registry, path = _split_registry(rest)
    path, tag = _split_tag(path)
    if not path or not _REPOSITORY.match(path) or len(path) > 255:
        raise SpecError(f"{text!r} is not a valid image name; use lower-case letters, digits "
                        "and separators (. _ -), as in busybox, my/tool:1.0 or "
                        "localhost:5000/app.")
    if tag and not _TAG.match(tag):
        raise SpecError(f"the tag of {text!r} is not valid; a tag is at most 128 letters, "
                        "digits, '_', '.' and '-'.")
    return Reference(registry, path, tag or DEFAULT_TAG, digest)


def _split_registry(text: str) -> tuple[str, str]:
    first, slash, rest = text.partition("/")
    if slash and (("." in first or ":" in first or first == "localhost")
                  and _REGISTRY.match(first)):
        return first, rest
    return "", text


def _split_tag(path: str) -> tuple[str, str]:
    last_slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > last_slash:
        return path[:colon], path[colon + 1:]
    return path, ""


def short_id(digest: str) -> str:
    """The 12 hex digits Docker shows for an image or a layer."""
    return digest.partition(":")[2][:12]
