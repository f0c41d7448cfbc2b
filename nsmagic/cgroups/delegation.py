"""`nsmagic setup-user`: root gives a user a cgroup subtree of their own, on whatever layout
the host has, under ceilings the user cannot lift; and what that user's nsmagic says about it.

In every hierarchy a run uses (each mounted v1 controller; the cgroup2 on pure v2):

    <mount>/nsmagic-users/              root's
    <mount>/nsmagic-users/<uid>/        root's: the user's ceilings (memory, cpu, pids), and on
                                        v1 Docker's device allow-list, which groups below inherit
    <mount>/nsmagic-users/<uid>/delegated/               the user's: runs are made here
    <mount>/nsmagic-users/<uid>/delegated/nsmagic-leaf/  the user's: where root puts the user's
                                        own processes (a Jupyter server), beside the runs

What is given is what systemd's Delegate=yes gives on v2: the directory (to make groups in)
and cgroup.procs, cgroup.threads, cgroup.subtree_control (to move processes and hand
controllers down), never a limit file. The ceiling sits one group higher, on files that stay
root's: a user may raise the limits of groups they made (their own runs), and the kernel still
holds every group below the ceiling to it. The delegated directory is mode 0700, so another
user's nsmagic neither lists nor reads this user's runs.

Processes move: v1 lets a user write their own processes into any group whose `tasks` they own,
so a user's nsmagic uses the subtree from wherever it was started. v2 asks for write access to
the common ancestor of the old and the new group: only processes already inside the subtree
can use it, so root puts them there (`join`, from a spawner; or one `echo` into cgroup.procs).
"""

from __future__ import annotations

import os
import pwd
import sys

from ..errors import CgroupError
from .base import Limits, kill_until_empty, make_dir, read_limit, remove_tree, subtree_pids, write
from .layout import DELEGATED, USERS_DIR, Layout, delegated_dir, detect
from .v1 import DEVICE_RULES, _read_text, write_error
from .v2 import LEAF, _available, _enable

CEILING_FLAGS = {"memory": "--mem", "cpu": "--cpus", "pids": "--pids"}
# v2: what a delegatee writes (systemd's list; the kernel's cgroup-v2.rst "Delegation")
V2_DELEGATED_FILES = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")
# v1: the directory (mkdir), and the files that move processes in
V1_DELEGATED_FILES = ("cgroup.procs", "tasks")


# --- who

def resolve_user(user: str) -> pwd.struct_passwd:
    """A user by name or uid, or one sentence saying there is none."""
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, ValueError):
        raise CgroupError(f"there is no user {user!r} on this machine; create it first "
                          f"(useradd {user}) or give an existing name or uid.") from None


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def setup_command(uid: int | None = None) -> str:
    """The command root runs to delegate a subtree to this user on this host, quoted: this
    installation's own `nsmagic` script where it has one, else its Python with -m."""
    who = user_name(os.getuid() if uid is None else uid)
    script = os.path.join(os.path.dirname(sys.executable), "nsmagic")
    program = script if os.access(script, os.X_OK) else f"{sys.executable} -m nsmagic"
    return f"`{program} setup-user {who}`"


def outside_message(delegated: str, own: str) -> str:
    """v2: the user has a subtree, but this process was started outside it."""
    leaf = os.path.join(delegated, LEAF)
    return (f"a cgroup is delegated to you at {delegated}, but this process runs in {own}, "
            "outside it, and cgroup v2 lets only root move it in: start Jupyter through a "
            "spawner that calls nsmagic's join (docs/jupyterhub.md), or have root run "
            f"`echo PID > {leaf}/cgroup.procs` for the shell you start it from.")


# --- where

def hierarchies(layout: Layout) -> dict[str, list[str]]:
    """mount point -> the controllers in it, for every hierarchy setup-user delegates: each
    mounted v1 controller's (named ones such as name=systemd are their owner's, not ours),
    or the cgroup2 on pure v2 (a hybrid host's cgroup2 holds no controller a run limits)."""
    if layout.kind == "v2":
        return {layout.v2_mount: ["unified"]}
    found: dict[str, list[str]] = {}
    for controller, mount in layout.v1_mounts.items():
        if not controller.startswith("name="):
            found.setdefault(mount, []).append(controller)
    return found


def ceiling_dir(mount: str, uid: int) -> str:
    return os.path.join(mount, USERS_DIR, str(uid))


# --- setup

def setup(user: str, ceiling: Limits, layout: Layout | None = None) -> list[str]:
    """Make (or update) the user's subtree with exactly these ceilings; returns what was
    done, one line each."""
    if os.geteuid() != 0:
        raise CgroupError("setup-user needs root: it makes cgroups and gives them to a user; "
                          "run it as root (sudo nsmagic setup-user ...).")
    entry = resolve_user(user)
    _check_ceiling(ceiling)
    layout = layout or detect()
    _check_layout(layout, ceiling)
    done, new = [], []
    try:
        for mount, controllers in sorted(hierarchies(layout).items()):
            top = ceiling_dir(mount, entry.pw_uid)
            if not os.path.isdir(top):
                new.append(top)
            if layout.kind == "v2":
                _setup_v2(mount, entry, ceiling)
            else:
                _setup_v1(mount, controllers, entry, ceiling)
            done.append(delegated_dir(mount, entry.pw_uid))
    except BaseException:
        _undo(new)   # a first setup that failed half-way leaves nothing behind
        raise
    return done


def _undo(tops: list[str]) -> None:
    for top in tops:
        try:
            remove_tree(top, tries=1)
        except (OSError, CgroupError):
            pass
        _remove_if_empty(os.path.dirname(top))


def _check_ceiling(ceiling: Limits) -> None:
    """The run options' own checks (at least 6 MiB, at most this host's memory and cores),
    each failing with its sentence."""
    from ..spec import Spec, validate
    validate(Spec(memory=ceiling.memory, cpus=ceiling.cpus, pids=ceiling.pids))


def _check_layout(layout: Layout, ceiling: Limits) -> None:
    """Every controller a ceiling (or a run's limit) needs must be there to delegate."""
    if layout.kind == "none":
        raise CgroupError("no cgroup file system is mounted here, so there is nothing to "
                          "delegate; mount cgroup2 at /sys/fs/cgroup (or the v1 hierarchies).")
    have = (set(_available(layout.v2_mount)) if layout.kind == "v2"
            else {c for c in layout.v1_mounts if not c.startswith("name=")})
    if not have & {"memory", "cpu", "pids"}:
        raise CgroupError(f"this host's {layout.kind} cgroups have none of the memory, cpu and "
                          "pids controllers, so no limit could be delegated; enable them "
                          "(v2: in /sys/fs/cgroup/cgroup.subtree_control; v1: mount them).")
    for controller, flag in CEILING_FLAGS.items():
        if _ceiling_value(ceiling, controller) is not None and controller not in have:
            raise CgroupError(f"{flag} needs the {controller} controller, which this host's "
                              f"{layout.kind} cgroups do not have; enable it or drop {flag}.")


def _ceiling_value(ceiling: Limits, controller: str):
    return {"memory": ceiling.memory, "cpu": ceiling.cpus, "pids": ceiling.pids}[controller]


def _setup_v2(mount: str, entry: pwd.struct_passwd, ceiling: Limits) -> None:
    users, top = os.path.join(mount, USERS_DIR), ceiling_dir(mount, entry.pw_uid)
    # Each level hands the controllers down (the root's, then the users' group's, then the
    # user's ceiling group's, for the delegated group to hand on to its runs).
    _enable(mount, _available(mount))
    make_dir(users)
    _enable(users, _available(users))
    make_dir(top)
    _write_ceiling_v2(top, ceiling)
    _enable(top, _available(top))
    mine = os.path.join(top, DELEGATED)
    for path in (mine, os.path.join(mine, LEAF)):
        make_dir(path)
        _give(path, V2_DELEGATED_FILES, entry)


def _write_ceiling_v2(top: str, ceiling: Limits) -> None:
    """Exactly the ceilings asked for: one not given is lifted ("max")."""
    cpus = ceiling.cpus
    write(f"{top}/memory.max", str(ceiling.memory or "max"))
    if os.path.exists(f"{top}/memory.swap.max"):   # else swap would hold what RAM may not
        write(f"{top}/memory.swap.max", "0" if ceiling.memory else "max")
    write(f"{top}/cpu.max", f"{int(cpus * 100_000)} 100000" if cpus else "max 100000")
    write(f"{top}/pids.max", str(ceiling.pids or "max"))


def _setup_v1(mount: str, controllers: list[str], entry: pwd.struct_passwd,
              ceiling: Limits) -> None:
    users, top = os.path.join(mount, USERS_DIR), ceiling_dir(mount, entry.pw_uid)
    mine = os.path.join(top, DELEGATED)
    leaf = os.path.join(mine, LEAF)
    for path in (users, top, mine, leaf):
        make_dir(path)
        if "cpuset" in controllers:   # a new cpuset group has no CPUs until given its parent's
            _inherit_cpuset(path)
        if path == top and "devices" in controllers:
            _allow_devices(top)       # before it has children: then the kernel refuses "a"
    _write_ceiling_v1(top, controllers, ceiling)
    for path in (mine, leaf):
        _give(path, V1_DELEGATED_FILES, entry)


def _inherit_cpuset(path: str) -> None:
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not _read_text(f"{path}/{name}"):
            write(f"{path}/{name}", _read_text(f"{os.path.dirname(path)}/{name}"))


def _allow_devices(top: str) -> None:
    """Docker's allow-list on the user's ceiling group: only root may write one, and every
    group made below (the user's runs) starts with it. Written once, on a new group (a
    second setup finds it there, and the kernel lets a list change only in a childless
    group)."""
    if _read_text(f"{top}/devices.list") != "a *:* rwm":
        return
    write(f"{top}/devices.deny", "a")
    for rule in DEVICE_RULES:
        try:
            write(f"{top}/devices.allow", rule)
        except CgroupError:
            if rule != DEVICE_RULES[0]:
                continue   # a device root's own group lacks stays denied (nsmagic in a container)
            raise


def _write_ceiling_v1(top: str, controllers: list[str], ceiling: Limits) -> None:
    if "memory" in controllers:
        _write_memory_v1(top, ceiling.memory)
    if "cpu" in controllers:
        write(f"{top}/cpu.cfs_period_us", "100000")
        write(f"{top}/cpu.cfs_quota_us", str(int(ceiling.cpus * 100_000) if ceiling.cpus else -1))
    if "pids" in controllers:
        write(f"{top}/pids.max", str(ceiling.pids or "max"))


def _write_memory_v1(top: str, memory: int | None) -> None:
    """memory.memsw (RAM + swap) must stay at or above memory.limit at every step: raise it
    first when the limit goes up, lower it last when the limit comes down."""
    limit, memsw = f"{top}/memory.limit_in_bytes", f"{top}/memory.memsw.limit_in_bytes"
    value = str(memory or -1)
    if not os.path.exists(memsw):
        write(limit, value)
        return
    old = read_limit(limit)
    if memory is None or (old is not None and memory > old):
        write(memsw, value)
        write(limit, value)
    else:
        write(limit, value)
        write(memsw, value)


def _give(path: str, files: tuple[str, ...], entry: pwd.struct_passwd) -> None:
    """Delegate a group: its directory and the files that move processes, to the user; the
    directory private to them."""
    try:
        os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(path, 0o700)
        for name in files:
            os.chown(os.path.join(path, name), entry.pw_uid, entry.pw_gid)
    except OSError as err:
        raise write_error(path, f"owner {entry.pw_name}", err) from err


# --- remove

def remove(user: str, kill: bool = False, layout: Layout | None = None) -> list[str]:
    """Remove the user's subtree everywhere (their runs' groups included); refuse while
    processes are in it unless `kill`. Returns the groups removed."""
    if os.geteuid() != 0:
        raise CgroupError("setup-user --remove needs root: the ceiling groups are root's; run it "
                          "as root.")
    entry = resolve_user(user)
    layout = layout or detect()
    tops = [ceiling_dir(m, entry.pw_uid) for m in sorted(hierarchies(layout))]
    tops = [t for t in tops if os.path.isdir(t)]
    busy = sorted(set().union(*(subtree_pids(t) for t in tops))) if tops else []
    if busy and not kill:
        shown = " ".join(map(str, busy[:8])) + (" ..." if len(busy) > 8 else "")
        raise CgroupError(f"{entry.pw_name}'s cgroups still hold {len(busy)} processes ({shown}); "
                          "stop them (the user's server and containers) first, or add --kill.")
    for top in tops:
        kill_until_empty(lambda top=top: subtree_pids(top), top)
        remove_tree(top)
    for mount in hierarchies(layout):
        _remove_if_empty(os.path.join(mount, USERS_DIR))
    return tops


def _remove_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass   # another user's subtree is still there


# --- join (root, in a spawner: the process about to become the user's server)

def join(user: str | int, pid: int = 0, layout: Layout | None = None) -> list[str]:
    """Move `pid` (0: the calling process) into the user's leaf in every delegated
    hierarchy, so that it and all it starts count against the user's ceilings and, on v2,
    may use the subtree. Root only; returns the groups joined."""
    joined = leaves(user, layout)
    for leaf in joined:
        write(f"{leaf}/cgroup.procs", str(pid))
    return joined


def leaves(user: str | int, layout: Layout | None = None) -> list[str]:
    """The user's leaf groups, one per delegated hierarchy: where join puts a process."""
    uid = user if isinstance(user, int) else resolve_user(user).pw_uid
    layout = layout or detect()
    found = []
    for mount in sorted(hierarchies(layout)):
        leaf = os.path.join(delegated_dir(mount, uid), LEAF)
        if not os.path.isdir(leaf):
            raise CgroupError(f"{user_name(uid)} has no delegated cgroup at {leaf}; run "
                              f"{setup_command(uid)} as root first.")
        found.append(leaf)
    return found


# --- what the user's nsmagic says (info)

def describe(layout: Layout) -> dict:
    """Which delegation this process has: kind (nsmagic, systemd-style, none, root), where,
    the ceilings over it, and the command that would give it one where it has none."""
    uid = os.getuid()
    if os.geteuid() == 0:
        return {"kind": "root", "text": "none needed (root)"}
    if layout.delegated or layout.delegated_v2:
        return _describe_nsmagic(layout, uid)
    own = layout.v2_dir() if layout.kind == "v2" else None
    if own and os.access(os.path.join(own, "cgroup.subtree_control"), os.W_OK):
        return {"kind": "scope", "where": own,
                "text": f"a delegated cgroup v2 group (systemd's Delegate=yes): {own}"}
    if _read_only(layout):
        return {"kind": "container", "text": CONTAINER_TEXT}
    return {"kind": "none", "command": setup_command(uid),
            "text": f"none; to get one, have root run {setup_command(uid)} (with ceilings "
                    "on all your containers together: --mem 2G --cpus 1 --pids 512)"}


CONTAINER_TEXT = ("none: the cgroup file system is mounted read-only here, as a container's "
                  "is by default; limits need the runtime to give this container a writable, "
                  "delegated cgroup (docs/kubernetes.md)")


def _read_only(layout: Layout) -> bool:
    """The cgroup file systems are mounted read-only: inside a container, where no root of
    this machine's can run setup-user."""
    mounts = {layout.v2_mount} if layout.kind == "v2" else set(layout.v1_mounts.values())
    try:
        return bool(mounts) and all(os.statvfs(m).f_flag & os.ST_RDONLY for m in mounts if m)
    except OSError:
        return False


def _describe_nsmagic(layout: Layout, uid: int) -> dict:
    where = layout.delegated_v2 or sorted(set(layout.delegated.values()))[0]
    dirs = [layout.delegated_v2] if layout.delegated_v2 else sorted(set(layout.delegated.values()))
    info = {"kind": "nsmagic", "where": where, "dirs": dirs, "ceiling": _read_ceiling(layout)}
    text = (f"nsmagic setup-user, for uid {uid}: {_short(dirs)}; ceilings (root's, on the "
            f"group above): {_ceiling_text(info['ceiling'])}")
    own = layout.v2_dir()
    if layout.delegated_v2 and own and not (own + "/").startswith(layout.delegated_v2 + "/"):
        info["outside"] = outside_message(layout.delegated_v2, own)
        text += f"; NOT usable from here: {info['outside']}"
    info["text"] = text
    return info


def _short(dirs: list[str]) -> str:
    """/sys/fs/cgroup/{cpu,memory,pids}/nsmagic-users/65534/delegated for v1's many."""
    if len(dirs) == 1:
        return dirs[0]
    heads = [d.split("/")[4] if d.startswith("/sys/fs/cgroup/") else None for d in dirs]
    tails = {"/".join(d.split("/")[5:]) for d in dirs}
    if None in heads or len(tails) != 1:
        return ", ".join(dirs)
    return f"/sys/fs/cgroup/{{{','.join(heads)}}}/{tails.pop()}"


def _read_ceiling(layout: Layout) -> Limits:
    if layout.delegated_v2:
        top = os.path.dirname(layout.delegated_v2)
        quota = (_read_text(f"{top}/cpu.max").split() or ["max"])[0]
        return Limits(memory=read_limit(f"{top}/memory.max"),
                      cpus=int(quota) / 100_000 if quota.isdigit() else None,
                      pids=read_limit(f"{top}/pids.max"))
    top = {c: os.path.dirname(d) for c, d in layout.delegated.items()}
    quota = read_limit(f"{top['cpu']}/cpu.cfs_quota_us") if "cpu" in top else None
    period = read_limit(f"{top['cpu']}/cpu.cfs_period_us") if "cpu" in top else None
    return Limits(
        memory=read_limit(f"{top['memory']}/memory.limit_in_bytes") if "memory" in top else None,
        cpus=quota / period if quota and period else None,
        pids=read_limit(f"{top['pids']}/pids.max") if "pids" in top else None)


def _ceiling_text(c: Limits) -> str:
    from ..spec import format_size
    parts = [f"memory {format_size(c.memory)}" if c.memory else "memory unlimited",
             f"cpus {c.cpus:g}" if c.cpus else "cpus unlimited",
             f"pids {c.pids}" if c.pids else "pids unlimited"]
    return ", ".join(parts)



def setup_report(user: str, made: list[str], ceiling: Limits) -> str:
    entry = resolve_user(user)
    lines = [f"delegated to {entry.pw_name} (uid {entry.pw_uid}): {_short(made)}",
             f"ceilings on all of {entry.pw_name}'s containers together (root's, on the group "
             f"above): {_ceiling_text(ceiling)}"]
    if len(made) == 1 and detect().kind == "v2":
        leaf = os.path.join(made[0], LEAF)
        lines.append(f"cgroup v2: {entry.pw_name}'s Jupyter or shell must start inside it; a "
                     f"spawner calls nsmagic.cgroups.delegation.join (docs/jupyterhub.md), or "
                     f"root runs `echo PID > {leaf}/cgroup.procs`.")
    else:
        lines.append(f"{entry.pw_name}'s nsmagic finds it by itself, from any shell or kernel.")
    return "\n".join(lines)
