"""Child side of `info`: try each kernel feature for real, in throw-away child processes, and
print the answers as JSON. Run as `python -I -S`, stdlib only."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

from . import linux

NAMESPACES = {"user": linux.CLONE_NEWUSER, "pid": linux.CLONE_NEWPID, "mount": linux.CLONE_NEWNS,
              "uts": linux.CLONE_NEWUTS, "ipc": linux.CLONE_NEWIPC, "net": linux.CLONE_NEWNET,
              "cgroup": linux.CLONE_NEWCGROUP}


def _in_child(fn) -> str | None:
    """Run fn in a forked child; None if it worked, else the error text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            fn()
            os._exit(0)
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            os.write(w, str(err).encode()[:500])
            os._exit(1)
    os.close(w)
    message = os.read(r, 1000).decode()
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return None if status == 0 else (message or f"exit status {status}")


def _as_user_ns_root() -> None:
    uid, gid = os.geteuid(), os.getegid()
    linux.unshare(linux.CLONE_NEWUSER)
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _overlay(tmp: str, user_ns: bool) -> None:
    if user_ns:
        _as_user_ns_root()
    linux.unshare(linux.CLONE_NEWNS)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    d = {n: os.path.join(tmp, n) for n in ("lower", "upper", "work", "merged")}
    options = f"lowerdir={d['lower']},upperdir={d['upper']},workdir={d['work']}"
    linux.mount("overlay", d["merged"], "overlay", 0, options + (",userxattr" if user_ns else ""))
    with open(os.path.join(d["merged"], "written"), "w") as f:
        f.write("x")
    if os.path.exists(os.path.join(d["lower"], "written")):
        raise OSError("a write reached the lower layer")


def _fresh_proc(tmp: str, user_ns: bool) -> None:
    """What every run's PID 1 does first: a /proc of a new PID namespace, mounted by a process
    in it. Refused beside a /proc with masked paths (a container's default procMount)."""
    if user_ns:
        _as_user_ns_root()
    linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWPID)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    error = _in_child(lambda: linux.mount("proc", tmp, "proc", linux.MS_NOSUID
                                          | linux.MS_NODEV | linux.MS_NOEXEC))
    if error:
        from .kernelfs import MASKED_PROC, masked_proc
        raise OSError(MASKED_PROC.removeprefix("can't mount /proc: ") if masked_proc()
                      else error)


def _seccomp_load_ms(program: bytes) -> float | str:
    """What loading the filter costs each run's PID 1, timed in a child as PID 1 does it
    (after no_new_privs); an error's text where this kernel cannot load it."""
    from ..security import seccomp
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
            began = time.perf_counter()
            seccomp.load(program)
            os.write(w, json.dumps((time.perf_counter() - began) * 1e3).encode())
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            os.write(w, json.dumps(str(err)).encode())
        os._exit(0)
    os.close(w)
    said = os.read(r, 1000)
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(said) if said else "the probe died loading it"


def probe(program: bytes | None = None) -> dict:
    """`program`: a seccomp filter to time the loading of."""
    root = os.geteuid() == 0
    out: dict = {"root": root, "namespaces": {}}
    for name, flag in NAMESPACES.items():
        if root or name == "user":
            out["namespaces"][name] = _in_child(lambda f=flag: linux.unshare(f))
        else:
            out["namespaces"][name] = _in_child(
                lambda f=flag: (_as_user_ns_root(), linux.unshare(f)))
    for key, user_ns in (("overlay", not root), ("overlay_in_user_ns", True)):
        tmp = tempfile.mkdtemp(prefix="nsmagic-probe-")
        try:
            for n in ("lower", "upper", "work", "merged"):
                os.mkdir(os.path.join(tmp, n))
            out[key] = _in_child(lambda t=tmp, u=user_ns: _overlay(t, u))
        finally:
            # overlay leaves its work/work at mode 000: let rmtree in
            if os.path.isdir(os.path.join(tmp, "work", "work")):
                os.chmod(os.path.join(tmp, "work", "work"), 0o700)
            shutil.rmtree(tmp, ignore_errors=True)
    if not any(out["namespaces"].get(n) for n in ("user", "pid", "mount")):
        tmp = tempfile.mkdtemp(prefix="nsmagic-probe-")
        try:
            out["proc"] = _in_child(lambda: _fresh_proc(tmp, not root))
        finally:
            os.rmdir(tmp)
    if program:
        out["seccomp_load_ms"] = _seccomp_load_ms(program)
    return out


if __name__ == "__main__":
    json.dump(probe(), sys.stdout)
