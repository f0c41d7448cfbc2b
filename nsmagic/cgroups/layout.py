"""Which cgroup layout this machine has (v2, v1, hybrid), where each controller lives,
where this process sits in each hierarchy, and which groups root delegated to this user with
`nsmagic setup-user`. Read from /proc and the cgroup file systems, never guessed."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

WANTED_V1 = ("memory", "cpu", "cpuacct", "pids")
WANTED_V2 = ("memory", "cpu", "pids", "io")
# Options of a v1 cgroup mount that name no controller (the others are controllers, or
# "name=..." for a named hierarchy such as systemd's).
# `nsmagic setup-user` delegates to a user, in each controller's hierarchy (v1) or in the
# cgroup2 (v2), <mount>/nsmagic-users/<uid>/delegated: a fixed place, so that nsmagic started
# by that user finds it by looking there (no environment to pass through a spawner, a sudo or
# a login shell). <uid>, not the name: it is what the kernel checks (the group must be owned
# by this uid to count), it survives a rename, and a uid without a passwd entry (a container)
# still finds its own. The <uid> group above it is root's and holds the user's ceilings.
USERS_DIR = "nsmagic-users"
DELEGATED = "delegated"
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
    # What `nsmagic setup-user` delegated to this (non-root) user: controller -> directory
    # (v1), and the cgroup2 directory (v2). Empty for root, who needs none.
    delegated: dict[str, str] = field(default_factory=dict)
    delegated_v2: str | None = None

    def v1_dir(self, controller: str) -> str | None:
        """Where this process's runs go in a v1 hierarchy: the group delegated to this user
        there, else this process's own group (root's is writable; a user's is not)."""
        if controller in self.delegated:
            return self.delegated[controller]
        mnt = self.v1_mounts.get(controller)
        if mnt is None:
            return None
        return os.path.join(mnt, self.v1_paths.get(controller, "/").lstrip("/"))

    def v1_run_hierarchies(self) -> list[str]:
        """The v1 hierarchies (controllers, or name=...) a run gets a group in: all of them,
        but only the delegated ones for a user root gave a subtree to (the others are not
        this user's to write; the run's processes stay in the runner's group there)."""
        if self.delegated:
            return sorted(self.delegated)
        return list(self.v1_mounts)

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
    layout = Layout(kind, v1_mounts, v2_mount, v1_paths, v2_path)
    if os.geteuid() != 0:
        _find_delegation(layout, os.getuid())
    return layout


def delegated_dir(mount: str, uid: int) -> str:
    return os.path.join(mount, USERS_DIR, str(uid), DELEGATED)


def owned_by(path: str, uid: int) -> bool:
    try:
        return os.stat(path).st_uid == uid
    except OSError:
        return False


def _find_delegation(layout: Layout, uid: int) -> None:
    """Fill layout.delegated(_v2) with the groups setup-user gave this uid. A group counts
    only if it is owned by this uid: one anybody else made there is not a delegation."""
    if layout.kind == "v2":
        path = delegated_dir(layout.v2_mount, uid)
        layout.delegated_v2 = path if owned_by(path, uid) else None
        return
    for controller, mount in layout.v1_mounts.items():
        if controller.startswith("name="):
            continue
        path = delegated_dir(mount, uid)
        if owned_by(path, uid):
            layout.delegated[controller] = path


def _relative(path: str, mount_root: str | None) -> str:
    """/proc/self/cgroup paths are relative to the hierarchy root; a mount may show a subtree."""
    if mount_root and mount_root != "/" and path.startswith(mount_root):
        path = path[len(mount_root):] or "/"
    return path
