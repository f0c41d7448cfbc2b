"""What the container's root is made of: read-only lower layers (the Python environment among
them), a fresh upper layer per run, and volumes. plan() runs in the runner; inside/root.py
builds it."""

from __future__ import annotations

import os
import sys

from ..config import Bind, Dir, Layer, Link, RootPlan
from ..spec import Spec
from . import secrets

# The host's system directories: the default image. Never /home, /root, /tmp, /srv, /mnt or
# the notebook's own folder: user data enters only through a volume.
HOST_LAYERS = ("usr", "etc", "opt", "var/lib/dpkg", "var/lib/apt")
HOST_TOP_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
EMPTY_DIRS = {"tmp": 0o1777, "root": 0o700, "home": 0o755, "run": 0o755, "mnt": 0o755,
              "srv": 0o755, "media": 0o755, "var/tmp": 0o1777, "var/log": 0o755,
              "var/cache": 0o755, "proc": 0o555, "sys": 0o555, "dev": 0o755}
ALREADY_VISIBLE = ("/usr/", "/etc/", "/opt/")
MATPLOTLIB_CACHE = "/run/nsmagic-matplotlib"   # inside: the runner's cache, as a layer


def python_prefixes() -> list[str]:
    """The kernel's Python environment (venv and base install), where the default image does
    not already show it."""
    found = []
    for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        real = os.path.realpath(p)
        if not any((real + "/").startswith(v) for v in ALREADY_VISIBLE) and os.path.isdir(real):
            found.append(real)
    # a venv's prefix may be reached through a symlink; mount it at the path Python uses
    exe = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))
    if exe not in found and not any((exe + "/").startswith(v) for v in ALREADY_VISIBLE):
        if os.path.realpath(exe) in found:
            found.append(exe)
    return sorted(set(found))


def matplotlib_cache() -> str | None:
    """The runner's matplotlib cache, where it has one: a notebook cell's container gets it
    as a layer (MATPLOTLIB_CACHE, its MPLCONFIGDIR), so that its first figure finds the font
    list there instead of building it (~0.3-0.5 s). Found without importing matplotlib."""
    path = os.environ.get("MPLCONFIGDIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "matplotlib")
    try:
        return path if any(n.startswith("fontlist") for n in os.listdir(path)) else None
    except OSError:
        return None


def plan(spec: Spec, rootless: bool, image_layers: tuple[str, ...] | None = None) -> RootPlan:
    """What the root is made of, for PID 1 to build (see inside/root.build). An image's
    layers (unpacked trees, top first) are stacked into one overlay at /."""
    layers, links, binds = [], [], []
    own_root = spec.rootfs or image_layers is not None
    if image_layers is not None:
        layers = [Layer(tree, "/") for tree in image_layers]
    elif spec.rootfs:
        layers.append(Layer(os.path.abspath(spec.rootfs), "/"))
    else:
        for top in HOST_TOP_LINKS:
            path = "/" + top
            if os.path.islink(path):
                links.append(Link(top, os.readlink(path)))
            elif os.path.isdir(path):
                layers.append(Layer(path, path))
        for sub in HOST_LAYERS:
            if os.path.isdir("/" + sub):
                source = _user_etc() if rootless and sub == "etc" else None
                layers.append(Layer(source or "/" + sub, "/" + sub))
        if spec.is_python_cell:   # a lower layer of its own: `pip install` inside works,
            for prefix in python_prefixes():   # and goes with the run's upper layer
                layers.append(Layer(prefix, prefix))
            cache = matplotlib_cache() if spec.ipython else None
            if cache:
                layers.append(Layer(cache, MATPLOTLIB_CACHE))
    for v in spec.volumes:
        binds.append(Bind(v.source, v.target, v.read_only, os.path.isdir(v.source), v.dev,
                          v.suid))
    dirs = () if own_root else tuple(Dir(path, mode) for path, mode in EMPTY_DIRS.items())
    return RootPlan(tuple(layers), tuple(links), dirs, tuple(binds), spec.read_only,
                    storage=spec.storage, hidden=() if own_root else _hidden(spec, rootless),
                    resolv_conf=_resolv_conf(), keep_dir=spec.keep_dir or "")


def _user_etc() -> str | None:
    """For a user, the host's /etc as a copy the user owns (images/hostetc.py): the
    container's root can then change it, as root's container can change the host's /etc
    in its own upper layer."""
    from ..images import hostetc
    return hostetc.snapshot()


def _hidden(spec: Spec, rootless: bool) -> tuple[str, ...]:
    """The host's secrets, hidden from a root run on the default root. (In a user namespace
    the container's root is the calling user, who cannot read them anyway.)"""
    if spec.rootfs or spec.host_secrets or rootless:
        return ()
    return secrets.hidden()


def _resolv_conf() -> str:
    """The host's resolvers, as Docker copies them (with --network none they answer nothing,
    but a program that reads the file finds one)."""
    try:
        with open("/etc/resolv.conf") as f:
            return f.read(65536)
    except OSError:
        return ""
