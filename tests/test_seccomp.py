"""Docker's default seccomp profile, compiled with libseccomp and loaded in a real process.

The kernel tests load the filter in a child (no_new_privs, then seccomp()) that then execs a
static probe (tests/seccomp_probe.c): every call Docker's profile refuses must come back
EPERM (clone3: ENOSYS), every ordinary call must still work, and the same probe without a
filter shows the kernel itself would have answered otherwise. No runtime involved.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

import pytest
from conftest import REPO, needs_root

from nsmagic.errors import SetupError, SpecError
from nsmagic.security import capabilities as caps
from nsmagic.security import profile, seccomp

DEFAULT = caps.DOCKER_DEFAULT
WITH_SYS_ADMIN = DEFAULT | {"CAP_SYS_ADMIN"}

AUDIT_ARCH = {"x86_64": 0xC000003E, "x86": 0x40000003, "aarch64": 0xC00000B7,
              "arm": 0x40000028}

# What Docker's profile answers with its default capabilities, as probe names.
REFUSED = {
    "unshare", "clone:newuser", "setns", "mount", "umount2", "umount", "pivot_root",
    "open_tree", "move_mount", "fsopen", "fsmount", "fspick", "fsconfig", "mount_setattr",
    "swapon", "swapoff", "reboot", "init_module", "finit_module", "delete_module",
    "kexec_load", "kexec_file_load", "bpf", "perf_event_open", "keyctl", "add_key",
    "request_key", "userfaultfd", "personality:refused", "open_by_handle_at", "move_pages",
    "migrate_pages", "get_mempolicy", "mbind", "kcmp", "pidfd_getfd", "process_madvise",
    "fanotify_init", "acct", "quotactl", "quotactl_fd", "syslog", "lookup_dcookie", "iopl",
    "ioperm", "vm86", "vm86old", "clock_settime", "settimeofday", "stime", "sethostname",
    "setdomainname", "vhangup", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "socket:vsock", "uselib", "ustat", "sysfs", "lsm_get_self_attr", "lsm_list_modules",
}
ORDINARY = {
    "getpid", "write", "read", "openat", "mmap", "clock_gettime", "fork", "posix_spawn",
    "pthread_create", "socket:inet", "personality:query", "chroot", "process_vm_readv",
}
# Allowed by Docker's profile, newer than some libseccomp: refused where it lacks them.
NEWER = {"mseal", "statmount", "listmount"}


# --- core: names, rules, the compiled program -----------------------------------------------

@pytest.mark.core
def test_capability_numbers_match_the_kernel_headers():
    header = "/usr/include/linux/capability.h"
    if not os.path.exists(header):
        pytest.skip("linux/capability.h is missing: apt-get install linux-libc-dev")
    with open(header) as f:
        defined = dict(re.findall(r"#define\s+(CAP_[A-Z_]+)\s+(\d+)\s*$", f.read(), re.M))
    known = {name: int(n) for name, n in defined.items() if name in caps.NUMBERS}
    assert len(known) >= 38, defined   # the header of this machine's libc knows 0..37 at least
    assert all(caps.NUMBERS[name] == n for name, n in known.items()), known
    assert caps.NAMES[0] == "CAP_CHOWN" and caps.NAMES[40] == "CAP_CHECKPOINT_RESTORE"


@pytest.mark.core
def test_docker_default_set_is_dockers_bounding_mask():
    # A `docker run` container's /proc/1/status shows CapBnd: 00000000a80425fb.
    assert caps.mask(caps.DOCKER_DEFAULT) == 0xA80425FB
    assert caps.numbers(["chown", "CAP_KILL", "SYS_CHROOT"]) == [0, 5, 18]


@pytest.mark.core
def test_parse_takes_each_spelling_and_all():
    assert caps.parse("CAP_NET_ADMIN") == caps.parse("net_admin") == {"CAP_NET_ADMIN"}
    assert caps.parse(" Sys_Time ") == {"CAP_SYS_TIME"}
    assert caps.parse("ALL") == caps.parse("all") == caps.ALL and len(caps.ALL) == 41
    assert caps.names([21, 0]) == {"CAP_SYS_ADMIN", "CAP_CHOWN"}


@pytest.mark.core
@pytest.mark.parametrize("bad", ["CAP_SYS_FOO", "net-admin", ""])
def test_unknown_capability_is_one_sentence(bad):
    with pytest.raises(SpecError) as err:
        caps.parse(bad)
    message = str(err.value)
    assert repr(bad) in message and message.endswith(".") and "\n" not in message


@pytest.mark.core
def test_cap_add_and_drop_as_docker_computes_them():
    assert caps.resolve() == DEFAULT
    assert caps.resolve(add=["net_admin"], drop=["mknod"]) == \
        DEFAULT - {"CAP_MKNOD"} | {"CAP_NET_ADMIN"}
    assert caps.resolve(add=["ALL"], drop=["sys_admin"]) == caps.ALL - {"CAP_SYS_ADMIN"}
    assert caps.resolve(add=["kill"], drop=["ALL"]) == {"CAP_KILL"}
    assert caps.resolve(add=["chown"], drop=["chown"]) == DEFAULT   # an add wins


@pytest.mark.core
def test_rules_follow_capabilities_arch_and_kernel():
    def names(rules):
        return {(n, r.action, r.conds) for r in rules for n in r.names}

    plain = profile.select(DEFAULT, "x86_64", (6, 1))
    admin = profile.select(WITH_SYS_ADMIN, "x86_64", (6, 1))
    masked = profile.Cond(0, "MASKED_EQ", 0x7E020000, 0)
    assert ("clone", "ALLOW", (masked,)) in names(plain)
    assert ("clone3", "ERRNO", ()) in names(plain)
    assert ("clone", "ALLOW", ()) not in names(plain)
    assert ("clone", "ALLOW", ()) in names(admin) and ("clone3", "ALLOW", ()) in names(admin)
    assert ("clone", "ALLOW", (masked,)) not in names(admin)
    assert ("arch_prctl", "ALLOW", ()) in names(plain)
    arm64 = names(profile.select(DEFAULT, "aarch64", (6, 1)))
    assert ("arch_prctl", "ALLOW", ()) not in arm64 and ("set_tls", "ALLOW", ()) in arm64
    s390 = names(profile.select(DEFAULT, "s390x", (6, 1)))
    assert ("clone", "ALLOW", (profile.Cond(1, "MASKED_EQ", 0x7E020000, 0),)) in s390
    old = names(profile.select(DEFAULT, "x86_64", (4, 4)))
    assert ("process_vm_readv", "ALLOW", ()) not in old
    assert ("process_vm_readv", "ALLOW", ()) in names(plain)
    assert profile.arches("x86_64") == ("x86_64", "x86", "x32")
    assert profile.arches("ppc64le") == ("ppc64le",)


def _jeq_constants(program: bytes) -> set[int]:
    """The constants the program's `jeq #k` instructions compare with (BPF_JMP|BPF_JEQ|BPF_K)."""
    out = set()
    for offset in range(0, len(program), 8):
        code, _jt, _jf, k = struct.unpack_from("<HBBI", program, offset)
        if code == 0x15:
            out.add(k)
    return out


@pytest.mark.core
def test_program_is_deterministic_cached_and_depends_on_caps():
    program = seccomp.compile_filter(DEFAULT)
    assert len(program) >= 8 * 100 and len(program) % 8 == 0
    assert len(program) // 8 <= seccomp.BPF_MAXINSNS
    assert seccomp.compile_filter(DEFAULT) is program
    assert seccomp.compile_filter(frozenset(n[4:].lower() for n in DEFAULT)) is program
    fresh = seccomp._compile.__wrapped__(DEFAULT, seccomp.native_arch(), seccomp._kernel())
    assert fresh == program and fresh is not program
    admin = seccomp.compile_filter(WITH_SYS_ADMIN)
    assert admin != program
    # ENOSYS (38) for clone3 is in the default program only: SECCOMP_RET_ERRNO | 38
    assert 0x00050026 in _program_returns(program)
    assert 0x00050026 not in _program_returns(admin)


def _program_returns(program: bytes) -> set[int]:
    return {struct.unpack_from("<HBBI", program, o)[3] for o in range(0, len(program), 8)
            if struct.unpack_from("<HBBI", program, o)[0] == 0x06}   # BPF_RET|BPF_K


@pytest.mark.core
def test_filter_covers_the_arch_map_and_a_foreign_arch():
    if seccomp.native_arch() != "x86_64":
        pytest.skip("checks the x86_64 arch map; this machine is " + os.uname().machine)
    native = _jeq_constants(seccomp.compile_filter(DEFAULT))
    assert {AUDIT_ARCH["x86_64"], AUDIT_ARCH["x86"]} <= native
    arm64 = seccomp.compile_filter(DEFAULT, "aarch64")
    assert seccomp.compile_filter(DEFAULT, "arm64") is arm64
    checked = _jeq_constants(arm64)
    assert {AUDIT_ARCH["aarch64"], AUDIT_ARCH["arm"]} <= checked
    assert AUDIT_ARCH["x86_64"] not in checked and AUDIT_ARCH["x86"] not in checked


@pytest.mark.core
def test_unknown_arch_is_one_sentence():
    with pytest.raises(SpecError, match=r"^unknown machine architecture 'sparc64' .*\.$"):
        seccomp.compile_filter(DEFAULT, "sparc64")


@pytest.mark.core
def test_loader_syscall_numbers_match_libseccomp():
    lib = seccomp._libseccomp()
    checked = []
    for arch, (nr_seccomp, nr_prctl) in seccomp.LOADER_SYSCALLS.items():
        token = lib.seccomp_arch_resolve_name(arch.encode())
        if token == 0:
            continue   # newer than this libseccomp (loongarch64 before 2.6)
        assert lib.seccomp_syscall_resolve_name_arch(token, b"seccomp") == nr_seccomp, arch
        assert lib.seccomp_syscall_resolve_name_arch(token, b"prctl") == nr_prctl, arch
        checked.append(arch)
    assert {"x86_64", "aarch64"} <= set(checked)
    with pytest.raises(SetupError, match="sparc64"):
        seccomp.loader_syscalls("sparc64")


@pytest.mark.core
@pytest.mark.parametrize("program", [b"", b"1234567", b"\0" * 8 * 4097])
def test_load_refuses_a_malformed_program_before_the_kernel(program):
    with pytest.raises(SetupError, match="malformed"):
        seccomp.load(program)


# --- kernel: a real filter in a real process ----------------------------------------------

@pytest.fixture(scope="session")
def probe(tmp_path_factory):
    """tests/seccomp_probe.c, built static once per session."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is missing, and the seccomp tests build their probe with it: "
                    "apt-get install gcc libc6-dev")
    out = tmp_path_factory.mktemp("seccomp") / "seccomp_probe"
    src = os.path.join(REPO, "tests", "seccomp_probe.c")
    built = subprocess.run([gcc, "-static", "-O2", "-Wall", "-o", str(out), src],
                           capture_output=True, text=True)
    if built.returncode != 0:
        pytest.fail(f"building the seccomp probe failed (static libc missing? apt-get install "
                    f"libc6-dev):\n{built.stderr}")
    return str(out)


def _run_probe(probe_path: str, program: bytes | None) -> dict[str, str]:
    """Run the probe, after no_new_privs and the filter when `program` is given."""
    def confine():
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(38, 1, 0, 0, 0) != 0:   # PR_SET_NO_NEW_PRIVS
            os._exit(124)
        seccomp.load(program)

    done = subprocess.run([probe_path], capture_output=True, text=True, timeout=30,
                          preexec_fn=confine if program is not None else None)
    assert done.returncode == 0, done
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


@pytest.fixture(scope="module")
def unconfined(probe):
    return _run_probe(probe, None)



@pytest.mark.kernel
@needs_root
def test_docker_refusals_are_refused(probe, unconfined):
    confined = _run_probe(probe, seccomp.compile_filter(DEFAULT))
    probed = REFUSED & confined.keys()
    assert len(probed) >= 55, sorted(confined)
    wrong = {n: confined[n] for n in probed if confined[n] != "EPERM"}
    assert not wrong, f"expected EPERM, got {wrong}"
    assert confined["clone3"] == "ENOSYS"
    # Without the filter the kernel answers otherwise (as root: bad arguments, not EPERM):
    # the EPERM above is the filter's.
    kernel_eperm = {n: unconfined[n] for n in probed | {"clone3"} if unconfined[n] == "EPERM"}
    assert not kernel_eperm, f"the kernel itself refuses these: {kernel_eperm}"


@pytest.mark.kernel
@needs_root
def test_ordinary_calls_still_work(probe, unconfined):
    confined = _run_probe(probe, seccomp.compile_filter(DEFAULT))
    failed = {n: confined[n] for n in ORDINARY if confined[n] != "OK"}
    assert not failed, f"refused by the filter: {failed}"
    # allowed since moby 2023: the kernel's own answer (a 0-byte handle is too small)
    assert confined["name_to_handle_at"] == unconfined["name_to_handle_at"] == "EOVERFLOW"


@pytest.mark.kernel
@needs_root
def test_sys_admin_lets_namespace_and_mount_calls_reach_the_kernel(probe, unconfined):
    confined = _run_probe(probe, seccomp.compile_filter(WITH_SYS_ADMIN))
    for name in ("unshare", "clone:newuser", "clone3", "setns", "mount", "umount2",
                 "open_tree", "fsopen", "bpf", "perf_event_open", "sethostname", "syslog"):
        assert confined[name] == unconfined[name], name
    for name in ("keyctl", "reboot", "pivot_root", "userfaultfd", "kcmp", "acct"):
        assert confined[name] == "EPERM", name


@pytest.mark.kernel
@needs_root
def test_calls_newer_than_libseccomp_fall_to_the_default(probe, unconfined):
    confined = _run_probe(probe, seccomp.compile_filter(DEFAULT))
    unknown = set(seccomp.unknown_syscalls())
    for name in NEWER:
        expected = "EPERM" if name in unknown else unconfined[name]
        assert confined[name] == expected, (name, sorted(unknown))


LOADER = """
import ctypes, os, sys
from nsmagic.errors import SetupError
from nsmagic.security import seccomp
program = sys.stdin.buffer.read()
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
libc = ctypes.CDLL(None, use_errno=True)
if sys.argv[1] == "nnp":
    libc.prctl(38, 1, 0, 0, 0)
try:
    seccomp.load(program)
except SetupError as err:
    print("SetupError:", err)
    sys.exit(0)
print("unshare", libc.unshare(0x10000000), os.strerror(ctypes.get_errno()))
"""


@pytest.mark.kernel
@needs_root
@pytest.mark.parametrize("mode", ["nnp", "plain"])
def test_load_needs_no_new_privs_once_privileges_are_dropped(mode):
    program = seccomp.compile_filter(DEFAULT)
    done = subprocess.run([sys.executable, "-c", LOADER, mode], input=program, cwd=REPO,
                          capture_output=True, timeout=30)
    out = done.stdout.decode().strip()
    assert done.returncode == 0, done
    if mode == "nnp":
        assert out == "unshare -1 Operation not permitted", out
    else:
        assert out.startswith("SetupError: can't load the seccomp filter: this process has "
                              "neither no_new_privs"), out


@pytest.mark.kernel
@needs_root
def test_missing_libseccomp_says_what_to_install():
    lib = os.path.realpath("/lib/x86_64-linux-gnu/libseccomp.so.2")
    if not os.path.exists(lib):
        pytest.skip("this test hides Debian's x86_64 libseccomp.so.2, not present here")
    script = ("from nsmagic.security import seccomp, capabilities as c\n"
              "try:\n    seccomp.compile_filter(c.DOCKER_DEFAULT)\n"
              "except Exception as err:\n    print(type(err).__name__, err)\n")
    # A private mount namespace where the library is an empty file: dlopen fails.
    done = subprocess.run(["unshare", "-m", "sh", "-c",
                           'mount --bind /dev/null "$1" && exec "$2" -c "$3"', "-",
                           lib, sys.executable, script],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == (
        "NsmagicError can't build the seccomp filter: libseccomp is missing; install the "
        "libseccomp2 package (apt-get install libseccomp2) or run with --security-opt "
        "seccomp=unconfined."), done


# --- the same probe inside nsmagic's own containers ---------------------------------------

def _probe_in_a_container(probe_path: str, face: str, tmp_path, request) -> dict[str, str]:
    """The static probe, run by nsmagic (as root or as `nobody`, through the API or the CLI)
    from a read-only volume: its answer per call."""
    # not under pytest's tmp_path: /tmp/pytest-of-root is root's alone, and nobody reads this
    where = tempfile.mkdtemp(prefix="nsmagic-probe-vol-", dir="/var/tmp")
    request.addfinalizer(lambda: shutil.rmtree(where, ignore_errors=True))
    shutil.copy(probe_path, os.path.join(where, "seccomp_probe"))
    os.chmod(where, 0o755)
    args = ["-v", f"{where}:/probe:ro", "--", "/probe/seccomp_probe"]
    if face == "api":
        from conftest import run_spec
        got = run_spec(args)
        out, code = got.out, got.result.exit_code
    else:
        if face == "cli":
            argv, how = [sys.executable], {"cwd": REPO}
        else:
            checkout = request.getfixturevalue("nobody_checkout")
            argv = ["/usr/bin/python3"]
            how = dict(user=65534, group=65534, extra_groups=[], cwd="/",
                       env={"PYTHONPATH": checkout, "PATH": "/usr/bin:/bin", "HOME": "/"})
        done = subprocess.run([*argv, "-m", "nsmagic", "run", *args], capture_output=True,
                              text=True, timeout=60, **how)
        out, code = done.stdout + done.stderr, done.returncode
    assert code == 0, out
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


@needs_root
@pytest.mark.parametrize("face", [pytest.param("api", marks=pytest.mark.kernel),
                                  pytest.param("cli", marks=pytest.mark.kernel),
                                  pytest.param("rootless-cli",
                                               marks=pytest.mark.unprivileged)])
def test_every_call_dockers_profile_refuses_is_refused_in_nsmagic(probe, unconfined, face,
                                                                  tmp_path, request):
    """The issue's proof: the probe in a real nsmagic container answers EPERM for every call
    Docker's default profile refuses (ENOSYS for clone3), and ordinary calls work."""
    inside = _probe_in_a_container(probe, face, tmp_path, request)
    probed = REFUSED & inside.keys()
    assert len(probed) >= 55, sorted(inside)
    wrong = {n: inside[n] for n in probed if inside[n] != "EPERM"}
    assert not wrong, f"expected EPERM inside nsmagic, got {wrong}"
    assert inside["clone3"] == "ENOSYS"
    failed = {n: inside[n] for n in ORDINARY if inside[n] != "OK"}
    assert not failed, f"refused inside nsmagic: {failed}"
