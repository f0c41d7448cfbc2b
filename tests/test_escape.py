"""Escape tests: issue 11's classes of weakness, tried as an attacker would, through the public
faces only (the Python API, the CLI, and both as the unprivileged user `nobody`).

Each test asserts the secure behaviour: what Docker's default `docker run` allows and no more
(or what the issue asks beyond it). The reproducers are harmless where they run: canaries are
files this test made under /var/tmp (outside /tmp on purpose: PID 1's setup sees the host's
paths before it pivots, with a scratch tmpfs over /tmp), devices are loop devices made for
the test, cgroups are scratch groups made for the test, and any host value a weakness changes
is put back before the test says so.

Options are Docker's names: `--storage-opt size=64M`, `--device-write-bps DEV:1mb`,
`--security-opt seccomp=unconfined`. Issue 11's optional class 11 (`--userns-remap`, a root
cell as an unprivileged host uid range) is not built, so it has no test here."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import platform
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import pytest
from conftest import REPO, leftovers, needs_root, run_spec

from nsmagic.errors import NsmagicError
from nsmagic.inside.root import mounts_under

pytestmark = [needs_root, pytest.mark.usefixtures("no_leaks")]

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
API, CLI, ROOTLESS_CLI, ROOTLESS_API = "api", "cli", "rootless-cli", "rootless-api"


def faces(*names):
    """Parameters for the faces a test goes through, each with its tier's marker."""
    return [pytest.param(name, id=name, marks=pytest.mark.unprivileged
                         if name.startswith("rootless") else pytest.mark.kernel)
            for name in names]


EVERY_FACE = faces(API, CLI, ROOTLESS_CLI, ROOTLESS_API)
AS_ROOT = faces(API, CLI)


# --- running a container through one face ------------------------------------------------

@dataclass
class Outcome:
    code: int | None
    out: str
    err: str                  # stderr, with nsmagic's own sentence as the CLI prints it
    left: list[str]           # what a runner in another process left behind

    @property
    def lines(self) -> list[str]:
        return self.err.strip().splitlines()


def sh(script: str, *options: str) -> list[str]:
    return [*options, "--", "sh", "-c", script]


# Runs the API as another user: the JSON request on stdin, the outcome as JSON on stdout.
API_AS_USER = r"""
import io, json, sys
from nsmagic.core import run
from nsmagic.errors import NsmagicError
from nsmagic.inside.root import mounts_under
from nsmagic.spec import Spec
request = json.load(sys.stdin)
out, err = io.StringIO(), io.StringIO()
try:
    result = run(Spec.from_argv(request["args"], script=request["cell"]), out=out, err=err)
    code, said = result.exit_code, err.getvalue()
    said += f"nsmagic: {result.error}\n" if result.error else ""
except NsmagicError as error:
    code, said = 125, err.getvalue() + f"nsmagic: {error}\n"
sys.stdout.write(json.dumps({"code": code, "out": out.getvalue(), "err": said}))
"""


def _as_nobody(package: str) -> dict:
    return dict(user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
                env={"PYTHONPATH": package, "PATH": "/usr/bin:/bin", "HOME": "/"})


def _subprocess(argv: list[str], stdin: str, **how) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **how)
    try:
        out, err = proc.communicate(stdin, timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += "\n(test: the runner did not end within 60 s)"
    return proc, out, err


def run_in(face: str, args: list[str], cell: str | None = None,
           package: str | None = None) -> Outcome:
    """One container through one face: `args` are `nsmagic run`'s options (and `-- COMMAND`);
    without a command, `cell` is the Python cell."""
    got = _run_in(face, args, cell, package)
    # What a runner in another process left: its groups and processes. (Host mounts are the
    # no_leaks fixture's to judge: other work on the machine may mount things meanwhile.)
    got.left = [thing for thing in got.left if thing.startswith(("/", "process"))]
    return got


def _run_in(face: str, args: list[str], cell: str | None, package: str | None) -> Outcome:
    if face == API:
        banners = io.StringIO()   # what the API prints on sys.stderr (a warning banner)
        try:
            with contextlib.redirect_stderr(banners):
                got = run_spec(args, script=cell)
        except NsmagicError as error:
            return Outcome(125, "", banners.getvalue() + f"nsmagic: {error}\n", [])
        said = (banners.getvalue() + got.err
                + (f"nsmagic: {got.result.error}\n" if got.result.error else ""))
        return Outcome(got.result.exit_code, got.out, said, [])
    if face == CLI:
        proc, out, err = _subprocess([sys.executable, "-m", "nsmagic", "run", *args],
                                     cell or "", cwd=REPO)
        return Outcome(proc.returncode, out, err, leftovers(proc.pid))
    if face == ROOTLESS_CLI:
        proc, out, err = _subprocess([SYSTEM_PYTHON, "-m", "nsmagic", "run", *args],
                                     cell or "", **_as_nobody(package))
        return Outcome(proc.returncode, out, err, leftovers(proc.pid))
    if face == ROOTLESS_API:
        request = json.dumps({"args": args, "cell": cell})
        proc, out, err = _subprocess([SYSTEM_PYTHON, "-c", API_AS_USER], request,
                                     **_as_nobody(package))
        try:
            said = json.loads(out)
        except ValueError:   # the API itself broke: show all of it
            return Outcome(proc.returncode, out, err, leftovers(proc.pid))
        return Outcome(said["code"], said["out"], err + said["err"], leftovers(proc.pid))
    raise ValueError(face)


@pytest.fixture(scope="session")
def rootless_package():
    """A copy of nsmagic that `nobody` can read (the checkout may sit under root's home)."""
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.fail(f"no {SYSTEM_PYTHON} for the unprivileged user")
    where = tempfile.mkdtemp(prefix="esc-pkg-", dir="/var/tmp")
    os.chmod(where, 0o755)
    shutil.copytree(os.path.join(REPO, "nsmagic"), os.path.join(where, "nsmagic"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a+rX", where], check=True)
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def container(request):
    """container(face, args, cell=None, check_left=True) -> Outcome."""
    def go(face, args, cell=None, check_left=True):
        package = (request.getfixturevalue("rootless_package")
                   if face.startswith("rootless") else None)
        got = run_in(face, list(args), cell, package)
        if check_left:
            assert not got.left, f"the runner left behind: {got.left}"
        return got
    return go


def rootless(face: str) -> bool:
    return face.startswith("rootless")


def one_sentence(got: Outcome, *words: str) -> None:
    """Exit 125 and exactly one line on stderr, nsmagic's, naming `words`; no traceback."""
    assert got.code == 125, got
    assert len(got.lines) == 1 and got.lines[0].startswith("nsmagic: "), got
    for word in words:
        assert word in got.lines[0], got


def ran_or_refused(got: Outcome) -> None:
    """A run that may go on (the setup stayed inside the root) or be refused (one sentence)."""
    if got.code != 0:
        one_sentence(got)


# --- scratch space on the host ------------------------------------------------------------

@pytest.fixture
def scratch():
    """A directory under /var/tmp (outside the /tmp that PID 1 covers), removed afterwards with
    anything the test mounted in it."""
    where = tempfile.mkdtemp(prefix="esc-", dir="/var/tmp")
    os.chmod(where, 0o755)
    yield where
    for point in sorted(mounts_under(where), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    shutil.rmtree(where, ignore_errors=True)


def give_to(owner: int | None, *paths: str) -> None:
    for path in paths:
        if owner is not None:
            subprocess.run(["chown", "-R", "-h", f"{owner}:{owner}", path], check=True)


def snapshot(path: str) -> dict:
    """Everything under `path` (symlinks not followed): what must not change."""
    seen = {}
    for here, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(here, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(full))
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    what = ("file", f.read())
            else:
                what = ("other", stat.S_IFMT(st.st_mode))
            seen[os.path.relpath(full, path)] = (what, st.st_mode, st.st_uid)
    return seen


@pytest.fixture
def image(busybox_root, scratch):
    """image(name, owner=None): a fresh copy of the busybox root to plant things in, owned by
    `owner` (a rootless user runs an image it unpacked itself)."""
    def make(name="image", owner=None):
        where = os.path.join(scratch, name)
        shutil.copytree(busybox_root, where, symlinks=True)
        give_to(owner, where)
        return where
    return make


def owner_for(face: str) -> int | None:
    return NOBODY if rootless(face) else None


# --- 1. setup must not follow an image's or a volume's symlinks into the host -------------

def _link(target: str, form: str) -> str:
    # a relative link climbs out of wherever setup puts the root (".." stops at "/")
    return target if form == "absolute" else "../" * 16 + target.lstrip("/")


@pytest.mark.parametrize("face", EVERY_FACE)
@pytest.mark.parametrize("form", ["absolute", "relative"])
@pytest.mark.parametrize("planted", ["etc/hosts", "etc/hostname", "etc"])
def test_an_images_symlinks_never_steer_setup_into_the_host(container, image, scratch, face,
                                                            form, planted):
    owner = owner_for(face)
    host = os.path.join(scratch, "host")
    os.mkdir(host)
    with open(os.path.join(host, "canary"), "w") as f:
        f.write("canary\n")
    give_to(owner, host)
    root = image(owner=owner)
    victim = os.path.join(root, planted)
    if os.path.isdir(victim):
        shutil.rmtree(victim)
    elif os.path.lexists(victim):
        os.unlink(victim)
    target = host if planted == "etc" else os.path.join(host, "canary")
    os.symlink(_link(target, form), victim)
    give_to(owner, victim)
    before = snapshot(host)
    got = container(face, sh("cat /etc/hostname /etc/hosts; true", "--rootfs", root))
    assert snapshot(host) == before, f"setup wrote through the image's {planted}: {got}"
    ran_or_refused(got)


@pytest.mark.parametrize("face", EVERY_FACE)
@pytest.mark.parametrize("kernel_dir", ["proc", "sys", "dev"])
def test_an_image_whose_proc_sys_or_dev_is_a_symlink_is_refused(container, image, scratch,
                                                                face, kernel_dir):
    owner = owner_for(face)
    host = os.path.join(scratch, "host")
    os.mkdir(host)
    give_to(owner, host)
    root = image(owner=owner)
    os.rmdir(os.path.join(root, kernel_dir))
    os.symlink(host, os.path.join(root, kernel_dir))
    give_to(owner, os.path.join(root, kernel_dir))
    got = container(face, sh("echo RAN", "--rootfs", root))
    assert os.listdir(host) == []
    assert "RAN" not in got.out, got
    one_sentence(got, kernel_dir)
    assert any(word in got.lines[0] for word in ("symlink", "symbolic link", "not a directory",
                                                 "not a plain directory")), got


@pytest.mark.parametrize("face", EVERY_FACE)
def test_a_volume_cannot_steer_a_later_volume_out_of_the_root(container, scratch, face):
    """-v src:/data -v other:/data/link/x, where an earlier run planted src/link -> host dir:
    the second mount's target (and a file volume's) is made and mounted inside the root."""
    owner = owner_for(face)
    src, other, host = (os.path.join(scratch, n) for n in ("src", "other", "host"))
    for d in (src, other, host):
        os.mkdir(d)
    with open(os.path.join(other, "file"), "w") as f:
        f.write("other\n")
    os.symlink(host, os.path.join(src, "link"))
    give_to(owner, src, other, host)
    got = container(face, sh("ls /data/link/x /data/link/file; true", "-v", f"{src}:/data",
                             "-v", f"{other}:/data/link/x",
                             "-v", f"{other}/file:/data/link/file"))
    assert os.listdir(host) == [], f"setup made {os.listdir(host)} in a host dir: {got}"
    ran_or_refused(got)


@pytest.mark.parametrize("face", EVERY_FACE)
def test_a_volume_at_etc_cannot_steer_the_hosts_and_hostname_files(container, image, scratch,
                                                                   face):
    """A volume mounted on /etc whose hosts/hostname are symlinks to host files: nsmagic
    writes neither through them nor anything else into the volume's source."""
    owner = owner_for(face)
    host, vol = os.path.join(scratch, "host"), os.path.join(scratch, "vol")
    os.mkdir(host)
    os.mkdir(vol)
    for name in ("hosts", "hostname"):
        with open(os.path.join(host, name), "w") as f:
            f.write(f"canary {name}\n")
        os.symlink(os.path.join(host, name), os.path.join(vol, name))
    give_to(owner, host, vol)
    root = image(owner=owner)
    host_before, vol_before = snapshot(host), snapshot(vol)
    got = container(face, sh("ls /etc", "--rootfs", root, "-v", f"{vol}:/etc"))
    assert snapshot(host) == host_before, f"wrote through the volume's symlinks: {got}"
    assert snapshot(vol) == vol_before, f"nsmagic changed the volume's source: {got}"
    ran_or_refused(got)


# --- 2. read-only volumes are read-only all the way down; volumes nodev,nosuid -------------

def _mount_options(out: str, under: str) -> dict[str, set[str]]:
    found = {}
    for line in out.splitlines():
        point, _, options = line.partition(" ")
        if point == under or point.startswith(under + "/"):
            found[point] = set(options.split(","))
    return found


@pytest.mark.parametrize("face", EVERY_FACE)
def test_a_read_only_volume_is_read_only_under_its_submounts(container, scratch, face):
    vol = os.path.join(scratch, "vol")
    os.makedirs(os.path.join(vol, "sub"))
    give_to(owner_for(face), vol)
    uid = NOBODY if rootless(face) else 0
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,mode=755,uid={uid}",
                    "esc-submount", os.path.join(vol, "sub")], check=True)
    fresh_pid_1(container, face)
    got = container(face, sh("touch /data/top /data/sub/probe; cat /proc/self/mountinfo",
                             "-v", f"{vol}:/data:ro"))
    assert not os.path.exists(os.path.join(vol, "top"))
    assert not os.path.exists(os.path.join(vol, "sub", "probe")), \
        f"wrote into a submount of a read-only volume: {got}"
    assert "Read-only file system" in got.err
    options = _mount_options(_mountinfo_points(got.out), "/data")
    assert options and all("ro" in o for o in options.values()), options


def fresh_pid_1(container, face: str) -> None:
    """Through the API, the next run's PID 1 may have been cloned before this test mounted
    anything, and it sees the host's mounts as they were then (the host's / is private): one
    run takes that one, so that the next one's PID 1 is cloned after the test's mounts."""
    if face.endswith("api"):
        container(face, sh("true"))
        leftovers()   # (waits for the background work that makes the next PID 1)


def _mountinfo_points(text: str) -> str:
    """'point options' lines from a raw /proc/self/mountinfo."""
    lines = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[0].isdigit():
            lines.append(f"{fields[4]} {fields[5]}")
    return "\n".join(lines)


@pytest.mark.parametrize("face", AS_ROOT)
def test_the_host_root_as_a_read_only_volume_is_read_only_everywhere(container, scratch, face):
    """-v /:/host:ro: every mount under /host is read-only (the host's /proc/sys,
    /sys/fs/cgroup, /dev/shm among them: looked at, never written); a write is tried only
    into a tmpfs this test mounted on the host."""
    sub = os.path.join(scratch, "sub")
    os.mkdir(sub)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "esc-submount", sub], check=True)
    fresh_pid_1(container, face)
    got = container(face, sh(f"touch /host{sub}/probe; cat /proc/self/mountinfo",
                             "-v", "/:/host:ro"))
    assert not os.path.exists(os.path.join(sub, "probe")), got
    options = _mount_options(_mountinfo_points(got.out), "/host")
    writable = sorted(p for p, o in options.items() if "ro" not in o)
    assert options and not writable, f"writable under /host: {writable[:12]}"


@pytest.mark.parametrize("face", EVERY_FACE)
def test_volumes_are_nodev_and_nosuid(container, scratch, face):
    rw, ro = os.path.join(scratch, "rw"), os.path.join(scratch, "ro")
    os.mkdir(rw)
    os.mkdir(ro)
    give_to(owner_for(face), rw, ro)
    got = container(face, sh("cat /proc/self/mountinfo", "-v", f"{rw}:/rw", "-v", f"{ro}:/ro:ro"))
    options = _mount_options(_mountinfo_points(got.out), "/rw")
    options.update(_mount_options(_mountinfo_points(got.out), "/ro"))
    assert set(options) == {"/rw", "/ro"}, got
    for point, opts in options.items():
        assert {"nodev", "nosuid"} <= opts, f"{point} is mounted {sorted(opts)}"


# --- 3. devices -------------------------------------------------------------------------

LOOP_CANARY = b"LOOPCANARY" * 100


@pytest.fixture
def loop_device(scratch):
    """A loop device made for the test over a file of canary bytes: (node, backing file)."""
    backing = os.path.join(scratch, "disk.img")
    with open(backing, "wb") as f:
        f.write(LOOP_CANARY.ljust(1 << 20, b"\0"))
    done = subprocess.run(["losetup", "-f", "--show", backing], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot make a loop device here: {done.stderr.strip()}")
    node = done.stdout.strip()
    yield node, backing
    subprocess.run(["losetup", "-d", node], check=False)


@pytest.mark.parametrize("face", EVERY_FACE)
@pytest.mark.parametrize("where", ["rootfs", "volume"])
def test_a_device_node_in_an_image_or_volume_opens_no_host_device(container, image, scratch,
                                                                  loop_device, face, where):
    node, backing = loop_device
    rdev = os.stat(node).st_rdev
    owner = owner_for(face)
    root = image(owner=owner)
    holder = os.path.join(root, "srv") if where == "rootfs" else os.path.join(scratch, "vol")
    os.makedirs(holder, exist_ok=True)
    planted = os.path.join(holder, "disk")
    os.mknod(planted, 0o666 | stat.S_IFBLK, rdev)
    os.chmod(planted, 0o666)
    give_to(owner, holder)
    inside = "/srv/disk" if where == "rootfs" else "/vol/disk"
    with open(backing, "rb") as f:
        before = f.read()
    args = ["--rootfs", root] + (["-v", f"{holder}:/vol"] if where == "volume" else [])
    got = container(face, sh(f"head -c 20 {inside}; echo; printf OVERWRITTEN > {inside}", *args))
    with open(backing, "rb") as f:
        after = f.read()
    assert after == before, f"the container wrote to the host's {node} through {where}: {got}"
    assert b"LOOPCANARY" not in got.out.encode(), f"read the host's {node}: {got}"


@pytest.mark.parametrize("face", EVERY_FACE)
def test_chmod_of_a_dev_node_inside_leaves_the_hosts_alone(container, face):
    """/dev/full (not /dev/null: if this fails, the host's node is wrong for a moment, and
    /dev/full is the one no other process on the machine is likely to need meanwhile)."""
    before = os.stat("/dev/full")
    try:
        got = container(face, sh("chmod 600 /dev/full; chown 1:1 /dev/full; ls -l /dev/full"))
    finally:
        after = os.stat("/dev/full")
        if (after.st_mode, after.st_uid, after.st_gid) != (before.st_mode, before.st_uid,
                                                            before.st_gid):
            os.chmod("/dev/full", stat.S_IMODE(before.st_mode))
            os.chown("/dev/full", before.st_uid, before.st_gid)
    assert stat.S_IMODE(after.st_mode) == stat.S_IMODE(before.st_mode), \
        f"chmod inside changed the host's /dev/full to {oct(after.st_mode)}: {got}"
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid), got


# --- 4. seccomp: what Docker's default profile refuses -----------------------------------

SYSCALLS = {   # the numbers of the calls probed, per architecture
    "x86_64": dict(keyctl=250, add_key=248, request_key=249, perf_event_open=298,
                   userfaultfd=323, personality=135, name_to_handle_at=303, move_pages=279,
                   open_tree=428, kcmp=312, fanotify_init=300, pidfd_getfd=438,
                   process_vm_readv=310, clone3=435, unshare=272),
    "aarch64": dict(keyctl=219, add_key=217, request_key=218, perf_event_open=241,
                    userfaultfd=282, personality=92, name_to_handle_at=264, move_pages=239,
                    open_tree=428, kcmp=272, fanotify_init=262, pidfd_getfd=438,
                    process_vm_readv=270, clone3=435, unshare=97),
}
# Each call with arguments that succeed, or fail with something other than EPERM, where no
# filter stands in the way. Docker's profile answers EPERM, and ENOSYS for clone3 (libc
# then falls back to clone).
SYSCALL_PROBE = r"""
import ctypes, json, os, platform
NR = %(table)s[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
L = ctypes.c_long
me = os.getpid()
PROBES = {
    "keyctl": lambda: (L(0), L(-3), L(0)),              # KEYCTL_GET_KEYRING_ID, session
    "add_key": lambda: (None, None, None, L(0), L(0)),  # EFAULT past a filter
    "request_key": lambda: (None, None, None, L(0)),
    "perf_event_open": lambda: (None, L(0), L(-1), L(-1), L(0)),
    "userfaultfd": lambda: (L(1),),                     # UFFD_USER_MODE_ONLY
    "personality": lambda: (L(0x0040000),),             # ADDR_NO_RANDOMIZE
    "name_to_handle_at": lambda: (L(-100), b"/", None, None, L(0)),
    "move_pages": lambda: (L(0), L(1), None, None, None, L(0)),
    "open_tree": lambda: (L(-100), b"/", L(0)),
    "kcmp": lambda: (L(me), L(me), L(0), L(0), L(0)),   # KCMP_FILE, fd 0 and fd 0
    "fanotify_init": lambda: (L(0x200), L(0)),          # FAN_REPORT_FID: no capability needed
    "pidfd_getfd": lambda: (L(os.pidfd_open(me)), L(0), L(0)),
    "process_vm_readv": lambda: (L(me), None, L(0), None, L(0), L(0)),
    "clone3": lambda: (None, L(0)),
    "unshare": lambda: (L(0x10000000),),                # CLONE_NEWUSER
}
found = {}
for name, args in PROBES.items():
    pid = os.fork()     # each in a child of its own: a call that works changes the caller
    if pid == 0:
        ctypes.set_errno(0)
        r = libc.syscall(L(NR[name]), *args())
        os._exit(0 if r >= 0 else min(ctypes.get_errno(), 255))
    found[name] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(found))
""" % {"table": repr(SYSCALLS)}


# Debian 12's Docker 20.10 refuses these two (probed on this kind of machine); the profile
# nsmagic follows, moby's since 2023 (see nsmagic/security/profile.py), allows them:
# name_to_handle_at outright, process_vm_readv with ptrace on kernels >= 4.8, as ptrace
# itself. They must reach the kernel, as in test_seccomp.py.
ALLOWED_SINCE_DOCKER_20_10 = ("name_to_handle_at", "process_vm_readv")


@pytest.mark.parametrize("face", EVERY_FACE)
def test_calls_dockers_profile_refuses_are_refused(container, face):
    if platform.machine() not in SYSCALLS:
        pytest.skip(f"no syscall table in this test for {platform.machine()}")
    got = container(face, [], cell=SYSCALL_PROBE)
    assert got.code == 0, got
    errnos = json.loads(got.out.strip().splitlines()[-1])
    expected = {name: 38 if name == "clone3" else 1 for name in errnos    # ENOSYS, EPERM
                if name not in ALLOWED_SINCE_DOCKER_20_10}
    reached = {name: os.strerror(e) if e else "succeeded" for name, e in errnos.items()
               if name in expected and e != expected[name]}
    assert not reached, f"these calls reached the kernel: {reached}"
    refused = [name for name in ALLOWED_SINCE_DOCKER_20_10 if errnos[name] == 1]
    assert not refused, f"Docker's profile allows these, nsmagic refused them: {refused}"


@pytest.mark.parametrize("face", AS_ROOT)
def test_seccomp_unconfined_turns_the_filter_off_loudly(container, face):
    if platform.machine() not in SYSCALLS:
        pytest.skip(f"no syscall table in this test for {platform.machine()}")
    got = container(face, ["--security-opt", "seccomp=unconfined"], cell=SYSCALL_PROBE)
    assert got.code == 0, got
    assert json.loads(got.out.strip().splitlines()[-1])["keyctl"] == 0, got
    assert any("seccomp" in line for line in got.lines), f"no banner said so: {got}"


@pytest.mark.parametrize("face", EVERY_FACE)
def test_no_nested_user_namespace(container, face):
    """A nested user namespace gives a cell every capability over its own mounts and cgroup
    files (see the cgroup tests); Docker's profile refuses it."""
    got = container(face, sh("unshare -U true && echo NESTED || echo refused"))
    assert "refused" in got.out and "NESTED" not in got.out, got


# --- 5. keyrings -----------------------------------------------------------------------

KEY_PROBE = r"""
import ctypes, json, platform
KEYCTL, ADD_KEY = {"x86_64": (250, 248), "aarch64": (219, 217)}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
L = ctypes.c_long
def call(*args):
    r = libc.syscall(*args)
    return r if r >= 0 else -ctypes.get_errno()
said = {}
key = call(L(KEYCTL), L(10), L(-3), b"user", b"%(canary)s", L(0))   # KEYCTL_SEARCH session
if key > 0:
    buf = ctypes.create_string_buffer(256)
    n = call(L(KEYCTL), L(11), L(key), buf, L(256))                 # KEYCTL_READ
    said["read"] = buf.raw[:max(n, 0)].decode(errors="replace")
for ring in (-3, -4, -5):   # session, user, user session
    said[str(ring)] = call(L(ADD_KEY), b"user", b"%(plant)s", b"x", L(1), L(ring))
print(json.dumps(said))
"""

# Runs in a process of its own, in an anonymous session keyring of its own holding a canary
# key; starts the container (API or CLI) and then looks for what the container planted in
# the caller's session, user and user-session keyrings (and removes it).
KEY_HOST = r"""
import ctypes, json, os, platform, subprocess, sys
request = json.load(sys.stdin)
KEYCTL, ADD_KEY = {"x86_64": (250, 248), "aarch64": (219, 217)}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
L = ctypes.c_long
def call(*args):
    r = libc.syscall(*args)
    return r if r >= 0 else -ctypes.get_errno()
assert call(L(KEYCTL), L(1), None) > 0                           # JOIN_SESSION_KEYRING anon
secret = request["secret"].encode()
assert call(L(ADD_KEY), b"user", request["canary"].encode(), secret, L(len(secret)),
            L(-3)) > 0
if request["mode"] == "api":
    import io
    from nsmagic.core import run
    from nsmagic.spec import Spec
    out, err = io.StringIO(), io.StringIO()
    result = run(Spec.from_argv([], script=request["cell"]), out=out, err=err)
    code, out, err = result.exit_code, out.getvalue(), err.getvalue() + str(result.error or "")
else:
    done = subprocess.run([sys.executable, "-m", "nsmagic", "run"], input=request["cell"],
                          capture_output=True, text=True, timeout=60)
    code, out, err = done.returncode, done.stdout, done.stderr
planted = []
for ring in (-3, -4, -5):
    key = call(L(KEYCTL), L(10), L(ring), b"user", request["plant"].encode(), L(0))
    if key > 0:
        planted.append(ring)
        call(L(KEYCTL), L(9), L(key), L(ring))                     # KEYCTL_UNLINK
print(json.dumps({"code": code, "out": out, "err": err, "planted": planted}))
"""


@pytest.mark.parametrize("face", EVERY_FACE)
def test_the_callers_keyrings_are_out_of_reach(face, request):
    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip(f"no keyctl numbers in this test for {platform.machine()}")
    tag = secrets.token_hex(4)
    names = {"canary": f"esc-canary-{tag}", "plant": f"esc-plant-{tag}",
             "secret": f"s3cret-{secrets.token_hex(8)}"}
    cell = KEY_PROBE % names
    msg = json.dumps(dict(names, cell=cell, mode="api" if face.endswith("api") else "cli"))
    if rootless(face):
        package = request.getfixturevalue("rootless_package")
        proc, out, err = _subprocess([SYSTEM_PYTHON, "-c", KEY_HOST], msg, **_as_nobody(package))
    else:
        proc, out, err = _subprocess([sys.executable, "-c", KEY_HOST], msg, cwd=REPO,
                                     env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, (out, err)
    said = json.loads(out.strip().splitlines()[-1])
    assert said["code"] == 0, said
    assert names["secret"] not in said["out"], f"the container read the caller's key: {said}"
    rings = {-3: "session", -4: "user", -5: "user session"}
    assert not said["planted"], ("the container planted a key in the caller's "
                                 + ", ".join(rings[r] for r in said["planted"]) + " keyring")
    assert not leftovers(proc.pid)


# --- 6. cgroups from inside ------------------------------------------------------------

LIMIT_FILES = ("memory.limit_in_bytes", "memory.max", "pids.max", "cpu.cfs_quota_us", "cpu.max")
LIFT_LIMITS = r"""
files="%(files)s"
lift() { for f in "$@"; do [ -f "$f" ] || continue
           { echo max > "$f" || echo -1 > "$f"; } 2>/dev/null && echo "WROTE $f"; done; }
for name in $files; do lift $(find /sys/fs/cgroup -maxdepth 2 -name $name); done
mkdir /sys/fs/cgroup/%(child)s 2>/dev/null && echo "MKDIR /sys/fs/cgroup"
mkdir -p /mnt/cg
unshare -UrmC sh -c '
  for t in memory pids cpu; do mkdir -p /mnt/cg/$t; mount -t cgroup -o $t none /mnt/cg/$t; done
  mkdir -p /mnt/cg/v2; mount -t cgroup2 none /mnt/cg/v2
  for d in /mnt/cg/*; do
    for name in '"$files"'; do [ -f $d/$name ] || continue
      { echo max > $d/$name || echo -1 > $d/$name; } && echo "NESTED-WROTE $d/$name"; done
    mkdir $d/%(child)s && echo "NESTED-MKDIR $d"
  done' 2>/dev/null
echo limits: $(cat $(find /sys/fs/cgroup -maxdepth 2 -name pids.max))
"""


def _remove_groups(found: list[str]) -> None:
    """Host cleanup of groups a run left or made (children first)."""
    for group in found:
        if group.startswith("/sys/fs/cgroup/") and os.path.isdir(group):
            for here, _, _ in sorted(os.walk(group), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(here)


@pytest.mark.parametrize("face", AS_ROOT)
def test_a_run_cannot_lift_its_own_limits_nor_leave_groups_behind(container, face):
    """Its limit files are read-only, also through a nested namespace's own cgroup mount; a
    child group it made anyway goes with the run, and the next start (which sweeps what dead
    runners left) does not wait on it."""
    child = f"esc-child-{secrets.token_hex(4)}"
    script = LIFT_LIMITS % {"files": " ".join(LIMIT_FILES), "child": child}
    try:
        got = container(face, sh(script, "--mem", "64M", "--pids", "50", "--cpus", "0.5"),
                        check_left=False)
        left = [thing for thing in (got.left if face == CLI else leftovers())
                if thing.startswith(("/sys/fs/cgroup/", "process"))]
        started = time.monotonic()
        after = run_in(CLI, sh("true"))
        next_start = time.monotonic() - started
    finally:
        # where the nested mounts' roots are not the run's own group (a hierarchy the run
        # did not join, such as a hybrid host's cgroup2), the child is the host's
        made = glob.glob(f"/sys/fs/cgroup/**/{child}", recursive=True)
        _remove_groups(made + left)
    outside = [path for path in made if "/nsmagic-" not in path]
    assert not outside, f"the run made groups in the host's tree: {outside}"
    assert left == [], f"teardown left the run's groups: {left}; {got}"
    assert after.code == 0 and next_start < 1.5, f"the next run took {next_start:.2f} s"
    assert "WROTE" not in got.out and "MKDIR" not in got.out, got.out
    assert got.out.strip().endswith("limits: 50"), got


def _cgroup_mount_points() -> dict[str, str]:
    found = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype, options = fields[fields.index("-") + 1], fields[-1]
            if fstype == "cgroup2":
                found.setdefault("cgroup2", fields[4])
            elif fstype == "cgroup" and "freezer" in options.split(","):
                found.setdefault("freezer", fields[4])
    return found


HIERARCHIES = {   # how to mount it, its freeze file, frozen and thawed values
    "freezer": ("mount -t cgroup -o freezer none", "freezer.state", "FROZEN", "THAWED"),
    "cgroup2": ("mount -t cgroup2 none", "cgroup.freeze", "1", "0"),
}


@pytest.mark.parametrize("face", EVERY_FACE)
@pytest.mark.parametrize("hierarchy", sorted(HIERARCHIES))
def test_host_cgroups_are_out_of_reach_through_a_nested_mount(container, face, hierarchy):
    """A cgroup hierarchy the run is not in (here: the host's freezer, or the hybrid host's
    cgroup2), mounted from a nested namespace, must not let it change the host's groups: a
    scratch group made for this test is not frozen."""
    point = _cgroup_mount_points().get(hierarchy)
    if point is None:
        pytest.skip(f"no {hierarchy} hierarchy mounted on this host")
    mount, control, frozen, thawed = HIERARCHIES[hierarchy]
    group = os.path.join(point, f"esc-{secrets.token_hex(4)}")
    os.mkdir(group)
    try:
        name = os.path.basename(group)
        got = container(face, sh(
            "mkdir -p /mnt/cg; unshare -UrmC sh -c '"
            f"{mount} /mnt/cg && ls -d /mnt/cg/{name} && echo VISIBLE; "
            f"echo {frozen} > /mnt/cg/{name}/{control} && echo FROZE' 2>&1; true"))
        with open(os.path.join(group, control)) as f:
            state = f.read().strip()
    finally:
        with contextlib.suppress(OSError):
            with open(os.path.join(group, control), "w") as f:
                f.write(thawed)
        time.sleep(0.05)
        os.rmdir(group)
    # Seeing the host's tree is allowed ("not visible or not writable"); changing it is not.
    assert state != frozen and "FROZE" not in got.out, f"froze a host cgroup: {got}"


# --- 7. host secrets in the default root --------------------------------------------------

def _not_world_readable_under_etc() -> list[str]:
    found = []
    for here, dirs, files in os.walk("/etc"):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(here, d))]
        for name in files:
            path = os.path.join(here, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IROTH:
                found.append(path)
    return sorted(found)


SECRETS = ["/etc/shadow", "/etc/gshadow", "/etc/ssh/ssh_host_rsa_key",
           "/etc/ssh/ssh_host_ecdsa_key", "/etc/ssh/ssh_host_ed25519_key", "/etc/ssl/private"]


@pytest.mark.parametrize("face", EVERY_FACE)
@pytest.mark.parametrize("secret", SECRETS)
def test_host_secrets_are_not_readable_in_the_default_root(container, face, secret):
    if not os.path.exists(secret):
        pytest.skip(f"this host has no {secret}")
    # says only whether it could read, never what it read
    got = container(face, sh(f"if [ -d {secret} ]; then ls -A {secret} | grep -q . "
                             f"&& echo LISTED; else cat {secret} > /dev/null && echo READ; fi; "
                             "true"))
    assert got.code == 0, got
    assert "READ" not in got.out and "LISTED" not in got.out, f"{secret} is readable inside"


@pytest.mark.parametrize("face", EVERY_FACE)
def test_no_file_of_the_hosts_etc_that_is_not_world_readable_is_readable(container, face):
    hidden = _not_world_readable_under_etc()
    if not hidden:
        pytest.skip("every file under this host's /etc is world-readable")
    got = container(face, sh('for f in "$@"; do cat "$f" > /dev/null 2>&1 && echo "READ $f"; '
                             "done; true") + ["sh", *hidden])
    assert got.code == 0, got
    readable = [line[5:] for line in got.out.splitlines() if line.startswith("READ ")]
    assert not readable, f"readable inside: {readable}"


# --- 8. storage and disk I/O --------------------------------------------------------------

FILL = ("fallocate -l 2G /tmp/fill && echo TMP-FILLED; rm -f /tmp/fill; "
        "fallocate -l 2G /etc/fill && echo UPPER-FILLED; rm -f /etc/fill; true")


@pytest.mark.parametrize("face", EVERY_FACE)
def test_the_upper_layer_has_a_default_size_limit(container, face):
    """Without --mem, 2 GiB written to /tmp or to the upper layer gets ENOSPC inside rather
    than taking the host's RAM (the upper layer is tmpfs)."""
    got = container(face, sh(FILL))
    assert "FILLED" not in got.out, f"2 GiB fit: {got.out.split()}"
    assert got.err.count("No space left on device") == 2, got


@pytest.mark.parametrize("face", EVERY_FACE)
def test_storage_opt_size_caps_the_upper_layer(container, face):
    got = container(face, sh("dd if=/dev/zero of=/etc/fill bs=1M count=256 2>&1; "
                             "echo filled $(wc -c < /etc/fill)", "--storage-opt", "size=64M"))
    assert got.code == 0, got
    assert "No space left on device" in got.out, got
    size = int(got.out.split("filled")[-1])
    assert 40 << 20 <= size <= 72 << 20, f"wrote {size} bytes under a 64M cap"


@pytest.mark.parametrize("face", AS_ROOT)
def test_device_write_bps_holds_a_direct_write_to_the_limit(container, scratch, face):
    """--device-write-bps DEV:1mb: 3 MiB written with O_DIRECT to a volume on DEV (an ext4
    on a loop device made for the test) takes at least ~2 s."""
    backing, mnt = os.path.join(scratch, "fs.img"), os.path.join(scratch, "mnt")
    with open(backing, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", backing], check=True)
    node = subprocess.run(["losetup", "-f", "--show", backing], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        os.mkdir(mnt)
        subprocess.run(["mount", node, mnt], check=True)
        fresh_pid_1(container, face)
        got = container(face, sh("s=$(date +%s%N); dd if=/dev/zero of=/data/f bs=64k count=48 "
                                 "oflag=direct 2>/dev/null; e=$(date +%s%N); "
                                 "echo ms $(( (e - s) / 1000000 ))",
                                 "-v", f"{mnt}:/data", "--device-write-bps", f"{node}:1mb"))
    finally:
        subprocess.run(["umount", mnt], check=False)
        subprocess.run(["losetup", "-d", node], check=False)
    assert got.code == 0, got
    assert int(got.out.split()[-1]) >= 1800, f"3 MiB at 1 MiB/s took {got.out.strip()}"


# --- 9. PID 1 itself -----------------------------------------------------------------------

@pytest.mark.parametrize("face", EVERY_FACE)
def test_pid_1_shows_no_host_command_line_and_holds_no_capabilities(container, scratch, face):
    secret = f"esc-{secrets.token_hex(6)}"
    vol = os.path.join(scratch, "vol")
    os.mkdir(vol)
    got = container(face, sh("tr '\\0' ' ' < /proc/1/cmdline; echo; "
                             "grep -E '^Cap(Prm|Eff):' /proc/1/status",
                             "-e", f"ESC_SECRET={secret}", "-v", f"{vol}:/data"))
    assert got.code == 0, got
    cmdline, *caps = got.out.splitlines()
    assert secret not in cmdline and vol not in cmdline and "python" not in cmdline, cmdline
    assert cmdline.strip() == "nsmagic-init", cmdline
    held = {line.split(":")[0]: int(line.split()[1], 16) for line in caps}
    assert held == {"CapPrm": 0, "CapEff": 0}, f"PID 1 holds {caps} while the workload runs"


@pytest.mark.kernel
def test_pid_1_of_a_container_made_ahead_shows_no_host_command_line():
    cell = "print(repr(open('/proc/1/cmdline').read()))"
    seen = []
    for _ in range(3):   # the second and third find their container made ahead
        seen.append(run_spec(["-e", "ESC=1"], script=cell))
        leftovers()      # (it waits for the background work between two cells)
    for got in seen:
        assert got.out.strip() in ("'nsmagic-init'", "'nsmagic-init\\x00'"), got


# --- 10. bad input and broken pipes -------------------------------------------------------

def _host_memory() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024


@pytest.mark.parametrize("face", EVERY_FACE)
@pytest.mark.parametrize("flag,value", [
    ("--mem", "1k"), ("--mem", "5M"), ("--mem", f"{2 * _host_memory() >> 20}M"),
    ("--cpus", "0.001"), ("--cpus", str(10 * (os.cpu_count() or 1)))])
def test_limits_out_of_range_are_one_sentence_and_nothing_runs(container, face, flag, value):
    got = container(face, sh("echo RAN", flag, value))
    assert "RAN" not in got.out, got
    one_sentence(got, flag)


@pytest.mark.parametrize("face", EVERY_FACE)
def test_an_environment_larger_than_the_config_channel_goes_through_or_is_one_sentence(
        container, face):
    """4 x 60 kB of -e: under the kernel's exec limits (128 KiB a string, ~2 MiB in all), over
    what one message on the run's socket takes today (~208 KiB)."""
    env = [a for i in range(4) for a in ("-e", f"BIG{i}={'x' * 60000}")]
    got = container(face, sh('echo ${#BIG0} ${#BIG3}', *env))
    if got.code == 125:
        one_sentence(got)
    else:
        assert got.code == 0 and got.out.split() == ["60000", "60000"], got
    again = container(face, sh("echo fine"))
    assert again.code == 0 and again.out == "fine\n", again


@pytest.mark.kernel
def test_an_env_value_beyond_the_kernels_limit_is_one_sentence_and_the_next_run_works():
    got = run_in(API, sh("true", "-e", f"HUGE={'x' * (2 << 20)}"))
    assert got.code in (125, 126), got   # 125 as Docker's CLI says for "argument list too long"
    assert len(got.lines) == 1 and got.lines[0].startswith("nsmagic: "), got
    assert run_in(API, sh("echo fine")).out == "fine\n"


@pytest.mark.parametrize("face", faces(CLI, ROOTLESS_CLI))
def test_a_closed_pipe_ends_the_run_quietly(request, face):
    """`nsmagic run -- yes | head -1`: ends like `cat` would (SIGPIPE or 0), no traceback,
    nothing left behind."""
    if rootless(face):
        package = request.getfixturevalue("rootless_package")
        argv, how = [SYSTEM_PYTHON, "-m", "nsmagic", "run", "--", "yes"], _as_nobody(package)
    else:
        argv, how = [sys.executable, "-m", "nsmagic", "run", "--", "yes"], {"cwd": REPO}
    runner = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, **how)
    head = subprocess.Popen(["head", "-1"], stdin=runner.stdout, stdout=subprocess.PIPE)
    runner.stdout.close()
    first = head.communicate(timeout=30)[0]
    try:
        err = runner.communicate(timeout=10)[1].decode(errors="replace")
    except subprocess.TimeoutExpired:
        runner.kill()
        err = runner.communicate()[1].decode(errors="replace") + "(still running after 10 s)"
    assert first == b"y\n"
    assert runner.returncode in (0, 141, -13) and err == "", (runner.returncode, err)
    assert leftovers(runner.pid) == []


@pytest.mark.kernel
def test_a_closed_output_stream_ends_an_api_run_and_leaves_nothing():
    """The API's analogue: `out` is a pipe whose reader is gone."""
    from nsmagic.core import run
    from nsmagic.spec import Spec
    r, w = os.pipe()
    os.close(r)
    out = os.fdopen(w, "wb", buffering=0)
    started = time.monotonic()
    try:
        run(Spec.from_argv(["--", "yes"]), out=out, err=None)
    except BrokenPipeError:
        pass
    finally:
        out.close()
    assert time.monotonic() - started < 10


# --- the fork server after setup failures --------------------------------------------------

@pytest.mark.kernel
def test_setup_failures_in_a_row_leave_the_fork_server_working(image, scratch):
    """PID 1s that fail their setup at once (an image refused, a working directory that
    cannot be made, in a container made ahead too) each report their own error; the next run
    works."""
    root = image()
    os.rmdir(os.path.join(root, "proc"))
    os.symlink(scratch, os.path.join(root, "proc"))
    failures = []
    for _ in range(3):
        failures.append(run_in(API, sh("true", "--rootfs", root)))
        failures.append(run_in(API, ["-w", "/proc/sys/esc"], cell="print(1)"))
    for got in failures:
        assert got.code == 125 and len(got.lines) == 1, got
        assert "fork server" not in got.err and "Error(" not in got.err, got
    fine = run_in(API, [], cell="print('fine')")
    assert fine.code == 0 and fine.out == "fine\n", fine
