"""Which cgroup layout this machine has (v2, v1, hybrid), where each controller lives,
and where this process sits in each hierarchy. Read from /proc, never guessed."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

WANTED_V1 = ("memory", "cpu", "cpuacct", "pids")
WANTED_V2 = ("memory", "cpu", "pids", "io")
# Options of a v1 cgroup mount that name no controller (the others are controllers, or
# "name=..." for a named hierarchy such as systemd's).
_NOT_CONTROLLERS = {"rw", "ro", "none", "all", "noprefix", "clone_children", "xattr",
                    "cpuset_v2_mode", "favordynmods"}


@dataclass
class Layout:
    kind: str                                             # "v2", "v1", "hybrid" or "none"
    # controller (or "name=..." for a named hierarchy) -> mount point, for every v1 hierarchy
    v1_mounts: dict[str, str] = field(default_factory=dict)
    v2_mount: str | None = None
    v1_paths: dict[str, str] = field(default_factory=dict)    # controller -> our group path
    v2_path: str | None = None                                 # our group path in cgroup2

    def v1_dir(self, controller: str) -> str | None:
        mnt = self.v1_mounts.get(controller)
        if mnt is None:
            return None
        return os.path.join(mnt, self.v1_paths.get(controller, "/").lstrip("/"))

    def v2_dir(self) -> str | None:
        if self.v2_mount is None:
            return None
        return os.path.join(self.v2_mount, (self.v2_path or "/").lstrip("/"))

    def v2_controllers(self) -> list[str]:
        if self.v2_mount is None:
            return []
        try:
            with open(os.path.join(self.v2_mount, "cgroup.controllers")) as f:
                return f.read().split()
        except OSError:
            return []


def _unescape(path: str) -> str:
    return path.encode().decode("unicode_escape") if "\\" in path else path


def detect(mountinfo: str = "/proc/self/mountinfo", cgroup: str = "/proc/self/cgroup") -> Layout:
    v1_mounts: dict[str, str] = {}
    v1_roots: dict[str, str] = {}
    v2_mount = v2_root = None
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(tail) < 3:
                continue
            fstype, options = tail[0], tail[2].split(",")
            root, point = _unescape(fields[3]), _unescape(fields[4])
            if fstype == "cgroup2":
                # /sys/fs/cgroup wins over a second mount (hybrid keeps it at .../unified)
                if v2_mount is None or point == "/sys/fs/cgroup":
                    v2_mount, v2_root = point, root
            elif fstype == "cgroup":
                for opt in options:
                    if opt not in _NOT_CONTROLLERS and not opt.startswith("release_agent="):
                        v1_mounts.setdefault(opt, point)
                        v1_roots.setdefault(opt, root)
    v1_paths: dict[str, str] = {}
    v2_path = None
    with open(cgroup) as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers == "":
                v2_path = _relative(path, v2_root)
            for c in controllers.split(","):
                if c in v1_mounts:
                    v1_paths[c] = _relative(path, v1_roots.get(c, "/"))
    if v2_mount and not any(c in v1_mounts for c in WANTED_V1):
        kind = "v2"
    elif v1_mounts and v2_mount:
        kind = "hybrid"
    elif v1_mounts:
        kind = "v1"
    else:
        kind = "none"
    return Layout(kind, v1_mounts, v2_mount, v1_paths, v2_path)


def _relative(path: str, mount_root: str | None) -> str:
    """/proc/self/cgroup paths are relative to the hierarchy root; a mount may show a subtree."""
    if mount_root and mount_root != "/" and path.startswith(mount_root):
        path = path[len(mount_root):] or "/"
    return path
