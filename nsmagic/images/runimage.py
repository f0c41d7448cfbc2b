"""What an image gives a run, as Docker applies it: its layers (unpacked once, stacked as
overlay lower layers, top first) and its Entrypoint, Cmd, Env, WorkingDir and User, with
the run's own options over them (a COMMAND replaces Cmd, --entrypoint replaces Entrypoint
and drops Cmd, -e over Env, -w over WorkingDir, -u over User)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..errors import NsmagicError
from ..inside import linux
from . import catalog
from .store import Image, Store

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# overlayfs stacks at most 500 lower layers (OVL_MAX_STACK), and mount(2) reads at most one
# page of options (each layer costs ~18 bytes as /proc/self/fd/N); Docker's overlay2 stops
# at 128, and so does this.
MAX_LAYERS = 128
PYTHON_CELL = ("python3", "-u", "-")


@dataclass(frozen=True)
class ImageRun:
    name: str
    image: Image
    layers: tuple[str, ...]          # unpacked trees, the top layer first (overlay's order)
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    workdir: str
    user: tuple[int, int] | None
    notices: tuple[str, ...] = ()    # what unpacking a layer skipped or changed, this time


def for_spec(spec, store: Store | None = None) -> ImageRun | None:
    """None for the default root (the host's directories) or --rootfs."""
    if spec.image is None:
        return None
    store = store or Store(spec.store)
    image = catalog.find(spec.image, store)
    diff_ids, blobs = image.diff_ids, image.layers
    if len(diff_ids) != len(blobs):
        raise NsmagicError(f"the image {spec.image} is malformed: its config lists "
                           f"{len(diff_ids)} layers and its manifest {len(blobs)}.")
    if len(diff_ids) > MAX_LAYERS:
        raise NsmagicError(f"the image {spec.image} has {len(diff_ids)} layers; overlayfs "
                           f"stacks at most {MAX_LAYERS} here (as Docker's overlay2): "
                           "squash it into fewer layers.")
    notices: list[str] = []
    trees = [store.layer_tree(d, b, notices) for d, b in zip(diff_ids, blobs)]
    rt = image.runtime
    layers = tuple(reversed(trees))
    user = spec.user if spec.user is not None else _user(rt.get("User") or "", layers,
                                                        spec.image)
    return ImageRun(spec.image, image, layers, _argv(spec, rt), _env(spec, rt),
                    spec.workdir or rt.get("WorkingDir") or "/", user, tuple(notices))


def _argv(spec, rt: dict) -> tuple[str, ...]:
    if spec.is_python_cell:
        return PYTHON_CELL
    if spec.entrypoint is not None:
        entry, cmd = ([spec.entrypoint] if spec.entrypoint else []), []
    else:
        entry, cmd = list(rt.get("Entrypoint") or []), list(rt.get("Cmd") or [])
    argv = entry + (list(spec.command) if spec.command else cmd)
    if not argv:
        raise NsmagicError(f"the image {spec.image} has no command (no Entrypoint or Cmd); "
                           "give one after the image's name.")
    return tuple(argv)


def _env(spec, rt: dict) -> tuple[tuple[str, str], ...]:
    env = {"PATH": DEFAULT_PATH}
    for item in rt.get("Env") or []:
        key, _, value = item.partition("=")
        if key:
            env[key] = value
    env.update(dict(spec.env))
    return tuple(env.items())


def _user(text: str, layers: tuple[str, ...], image: str) -> tuple[int, int] | None:
    """Docker's User: uid, uid:gid, name or name:group, names looked up in the image's own
    /etc/passwd and /etc/group."""
    if not text:
        return None
    user, _, group = text.partition(":")
    passwd = _etc(layers, "passwd")
    uid, gid = _lookup(user, passwd, 2, image, "user", "passwd")
    if group:
        gid = _lookup(group, _etc(layers, "group"), 2, image, "group", "group")[0]
    elif not user.isdigit():
        gid = _lookup(user, passwd, 3, image, "user", "passwd")[0]
    return uid, gid


def _lookup(name: str, lines: list[list[str]], column: int, image: str, what: str,
            file: str) -> tuple[int, int]:
    if name.isdigit():
        return int(name), int(name) if what == "user" else 0
    for fields in lines:
        if len(fields) > 3 and fields[0] == name:
            try:
                return int(fields[column]), int(fields[3]) if what == "user" else 0
            except ValueError:
                break
    raise NsmagicError(f"the image {image} runs as the {what} {name!r}, which its "
                       f"/etc/{file} does not list; give a number with -u UID[:GID].")


def _etc(layers: tuple[str, ...], name: str) -> list[list[str]]:
    """/etc/NAME as the container would see it: from the top-most layer that has it. Read
    beneath that layer only, never through a link (an image's file is hostile input)."""
    flags = (linux.RESOLVE_BENEATH | linux.RESOLVE_NO_SYMLINKS | linux.RESOLVE_NO_MAGICLINKS)
    for tree in layers:
        top = os.open(tree, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = linux.openat2(top, f"etc/{name}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK,
                               flags)
        except OSError:
            continue
        finally:
            os.close(top)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return []   # a whiteout (the file deleted) or something odd
            text = f.read(1 << 20).decode("utf-8", "replace")
        return [line.split(":") for line in text.splitlines()]
    return []
