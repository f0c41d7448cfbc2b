"""Local Unix users made by a test (a class's students) and removed after, and commands run
as them the way a spawner starts a student's server: as root, moved into the student's
delegated cgroup (`nsmagic.cgroups.delegation.join`), then dropped to the student's ids.
Stdlib and nsmagic only."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile

PREFIX = "nsmagic-stu"   # what the tests name their users: a leftover one is easy to spot


def make_users(count: int, home_root: str | None = None) -> list[pwd.struct_passwd]:
    """`count` fresh system users (no login shell, no password), each with a home of their
    own under home_root (a temporary directory if None). Users left by a killed run (a
    test's or bench/class.py's: any nsmagic-stu* with no process left) are removed first."""
    for entry in pwd.getpwall():
        if entry.pw_name.startswith(PREFIX) and not processes_of(entry.pw_uid):
            remove_user(entry.pw_name)
    home_root = home_root or tempfile.mkdtemp(prefix="nsmagic-homes-")
    os.chmod(home_root, 0o755)
    made = []
    try:
        for i in range(1, count + 1):
            name = f"{PREFIX}{i}"
            remove_user(name)
            home = os.path.join(home_root, name)
            subprocess.run(["useradd", "--system", "--user-group", "--create-home",
                            "--home-dir", home, "--shell", "/usr/sbin/nologin", name],
                           check=True, capture_output=True)
            made.append(pwd.getpwnam(name))
    except BaseException:
        for entry in made:
            remove_user(entry.pw_name)
        raise
    return made


def processes_of(uid: int) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                found.append(int(pid))
        except OSError:
            pass
    return found


def remove_user(name: str) -> None:
    """The user, their group and their home, and their delegated cgroups (with --kill:
    whatever they left running)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return
    from nsmagic.cgroups import delegation
    try:
        delegation.remove(name, kill=True)   # what runs in their cgroups goes with them
    except Exception:  # noqa: BLE001 - removing a user must not stop at their cgroups
        pass
    subprocess.run(["userdel", name], capture_output=True)
    home = entry.pw_dir
    if home.startswith(("/tmp/", tempfile.gettempdir() + "/")) and os.path.isdir(home):
        shutil.rmtree(home, ignore_errors=True)
        parent = os.path.dirname(home)
        if os.path.basename(parent).startswith("nsmagic-homes-"):
            try:
                os.rmdir(parent)   # the last student's home was the last thing in it
            except OSError:
                pass


def become(entry: pwd.struct_passwd, join: bool):
    """A preexec_fn: (join) into the student's delegated cgroup while still root, then the
    student's ids, as a spawner does."""
    def preexec():
        if join:
            from nsmagic.cgroups import delegation
            delegation.join(entry.pw_uid)
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    return preexec


def env_of(entry: pwd.struct_passwd, **extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": entry.pw_dir, "USER": entry.pw_name,
            "LOGNAME": entry.pw_name, **extra}
