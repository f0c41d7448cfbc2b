"""Docker's default seccomp profile: compiled to BPF by the caller, loaded by PID 1.

Two halves on two sides of the process boundary:

- compile_filter(caps, arch) runs in the caller (notebook kernel or CLI). It builds the
  filter with libseccomp (ctypes on libseccomp.so.2) from profile.py's rules and returns the
  raw BPF program, an array of struct sock_filter (8 bytes each). It is cached per option
  set, so a notebook pays for it once, off every run's path, and kept in a private runtime
  directory for later processes (filtercache.py: each CLI run is one). It runs here and not
  in PID 1
  because PID 1 works inside a root that may have no libseccomp (busybox, scratch, an
  image), and because compiling costs milliseconds that a run should not pay each time.
- load(program) runs in PID 1 (or the workload's child) just before the workload starts. It
  needs only ctypes and libc's syscall(): seccomp(SECCOMP_SET_MODE_FILTER), with prctl
  (PR_SET_SECCOMP) on kernels older than 3.17.

The kernel takes a filter from a process that has no_new_privs set or CAP_SYS_ADMIN in its
user namespace. nsmagic's order in PID 1: capabilities dropped (bounding, inheritable,
ambient), ids set (setgroups, setgid, setuid), PR_SET_NO_NEW_PRIVS, load(), then spawn the
workload. As late as possible, so that setup's own calls are not filtered; after the
privileges are dropped, so that capset and setuid need not be allowed for the workload.
(runc and crun do the same when no_new_privs is asked for; without it, Docker's default,
they load the filter before dropping capabilities, while CAP_SYS_ADMIN still allows it.)
The filter holds for the calling thread and everything it starts from then on; PID 1 itself
lives with it fine (its wait, kill, select and posix_spawn are allowed: glibc's posix_spawn
tries clone3, gets ENOSYS from the filter and falls back to clone).

`--security-opt seccomp=unconfined` means: call neither.
"""

from __future__ import annotations

import ctypes
import functools
import os
import time

from ..errors import NsmagicError, SetupError, SpecError

# --- loader side: stdlib only -------------------------------------------------------------

# `uname -m` -> libseccomp's architecture name.
MACHINES: dict[str, str] = {
    "x86_64": "x86_64", "amd64": "x86_64",
    "aarch64": "aarch64", "arm64": "aarch64",
    "i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86", "x86": "x86",
    "armv6l": "arm", "armv7l": "arm", "armv8l": "arm", "arm": "arm",
    "riscv64": "riscv64", "loongarch64": "loongarch64",
    "ppc64le": "ppc64le", "s390x": "s390x",
}

# libseccomp's architecture name -> (seccomp, prctl) syscall numbers. Checked against
# libseccomp's own tables by the tests.
LOADER_SYSCALLS: dict[str, tuple[int, int]] = {
    "x86_64": (317, 157),
    "aarch64": (277, 167),      # the generic table, as riscv64 and loongarch64
    "riscv64": (277, 167),
    "loongarch64": (277, 167),
    "x86": (354, 172),
    "arm": (383, 172),
    "ppc64le": (358, 171),
    "s390x": (348, 172),
}

SECCOMP_SET_MODE_FILTER = 1
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
BPF_INSTRUCTION_SIZE = 8   # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k
BPF_MAXINSNS = 4096        # the kernel's limit for one program


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def native_arch() -> str:
    """This machine's architecture in libseccomp's spelling; SetupError if nsmagic does not
    know it."""
    machine = os.uname().machine
    try:
        return MACHINES[machine]
    except KeyError:
        raise SetupError(f"nsmagic knows no seccomp calls for this machine ({machine}); run "
                         f"with --security-opt seccomp=unconfined.") from None


def loader_syscalls(arch: str) -> tuple[int, int]:
    """(seccomp, prctl) syscall numbers on `arch` (libseccomp's name)."""
    try:
        return LOADER_SYSCALLS[arch]
    except KeyError:
        raise SetupError(f"nsmagic knows no seccomp calls for the {arch} architecture; run "
                         f"with --security-opt seccomp=unconfined.") from None


def load(program: bytes) -> None:
    """Install the BPF `program` (compile_filter's bytes) in the calling thread, for good.

    Call it with no_new_privs set or CAP_SYS_ADMIN held, in a single-threaded process (the
    filter reaches threads started after it, not those already running), just before the
    workload is spawned. Raises SetupError with the reason in one sentence."""
    count, rest = divmod(len(program), BPF_INSTRUCTION_SIZE)
    if rest or not 0 < count <= BPF_MAXINSNS:
        raise SetupError(f"the seccomp filter is malformed ({len(program)} bytes); it should "
                         f"be 1 to {BPF_MAXINSNS} instructions of {BPF_INSTRUCTION_SIZE} bytes.")
    nr_seccomp, nr_prctl = loader_syscalls(native_arch())
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(count, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(nr_seccomp), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                       ctypes.c_long(0), ctypes.byref(prog))
    err = ctypes.get_errno() if ret < 0 else 0
    if err == 38:   # ENOSYS: a kernel before 3.17 has only the prctl
        ret = libc.syscall(ctypes.c_long(nr_prctl), ctypes.c_long(PR_SET_SECCOMP),
                           ctypes.c_long(SECCOMP_MODE_FILTER), ctypes.byref(prog),
                           ctypes.c_long(0), ctypes.c_long(0))
        err = ctypes.get_errno() if ret < 0 else 0
    if err:
        cause = OSError(err, os.strerror(err))
        if err == 13:   # EACCES
            raise SetupError("can't load the seccomp filter: this process has neither "
                             "no_new_privs set nor CAP_SYS_ADMIN; set PR_SET_NO_NEW_PRIVS "
                             "before loading it.") from cause
        raise SetupError(f"can't load the seccomp filter: {os.strerror(err).lower()}; run "
                         f"with --security-opt seccomp=unconfined to go without it.") from cause


# --- compiler side: the caller, with libseccomp --------------------------------------------

SCMP_ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO = 0x00050000
_CMP = {"NE": 1, "LT": 2, "LE": 3, "EQ": 4, "GE": 5, "GT": 6, "MASKED_EQ": 7}
_NR_SCMP_ERROR = -1
SCMP_FLTATR_CTL_OPTIMIZE = 8


def _act_errno(number: int) -> int:
    return _ACT_ERRNO | (number & 0xFFFF)


class _ArgCmp(ctypes.Structure):   # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


@functools.lru_cache(maxsize=None)
def _libseccomp() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as err:
        raise NsmagicError("can't build the seccomp filter: libseccomp is missing; install "
                           "the libseccomp2 package (apt-get install libseccomp2) or run "
                           "with --security-opt seccomp=unconfined.") from err
    ctx, u32, c_int = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
    signatures = {
        "seccomp_init": (ctx, [u32]),
        "seccomp_release": (None, [ctx]),
        "seccomp_arch_resolve_name": (u32, [ctypes.c_char_p]),
        "seccomp_arch_native": (u32, []),
        "seccomp_arch_add": (c_int, [ctx, u32]),
        "seccomp_arch_remove": (c_int, [ctx, u32]),
        "seccomp_syscall_resolve_name": (c_int, [ctypes.c_char_p]),
        "seccomp_syscall_resolve_name_arch": (c_int, [u32, ctypes.c_char_p]),
        "seccomp_syscall_resolve_num_arch": (ctypes.c_void_p, [u32, c_int]),
        "seccomp_version": (ctypes.c_void_p, []),
        "seccomp_rule_add_array": (c_int, [ctx, u32, c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]),
        "seccomp_attr_set": (c_int, [ctx, c_int, u32]),
        "seccomp_export_bpf": (c_int, [ctx, c_int]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def resolve_arch(arch: str | None) -> str:
    """`arch` (a `uname -m` or libseccomp name; None: this machine's) as libseccomp's name;
    SpecError for one neither nsmagic nor this libseccomp knows."""
    if arch is None:
        return native_arch()
    name = MACHINES.get(arch, arch)
    if _libseccomp().seccomp_arch_resolve_name(name.encode()) == 0:
        raise SpecError(f"unknown machine architecture {arch!r} for the seccomp filter: use "
                        f"one libseccomp knows, such as x86_64 or aarch64.")
    return name


def _kernel() -> tuple[int, int]:
    """(major, minor) of the running kernel, for the rules' min_kernel."""
    parts = os.uname().release.split(".")
    digits = ["".join(ch for ch in p[:3] if ch.isdigit()) or "0" for p in parts[:2]]
    return int(digits[0]), int(digits[1]) if len(digits) > 1 else 0


def unknown_syscalls(arch: str | None = None) -> list[str]:
    """Names in Docker's profile this libseccomp cannot resolve (newer than it): the
    compiler skips them, as Docker's runtimes do, so they fail with the default EPERM."""
    from . import profile
    lib = _libseccomp()
    token = lib.seccomp_arch_resolve_name(resolve_arch(arch).encode())
    names = {n for rule in profile.RULES for n in rule.names}
    return sorted(n for n in names
                  if lib.seccomp_syscall_resolve_name_arch(token, n.encode()) == _NR_SCMP_ERROR
                  and lib.seccomp_syscall_resolve_name(n.encode()) == _NR_SCMP_ERROR)


def version() -> str:
    """This libseccomp's version, "2.5.4"."""
    fields = ctypes.cast(_libseccomp().seccomp_version(), ctypes.POINTER(ctypes.c_uint * 3))
    return ".".join(str(n) for n in fields.contents)


def refusals(caps: frozenset[str], arch: str | None = None) -> tuple[list[str], list[str]]:
    """Of the calls this libseccomp knows on `arch` (None: this machine), those the filter for
    `caps` refuses whatever their arguments, and those it allows only with some (clone
    without namespace flags, socket but AF_VSOCK, ...). Native calls only: a filter for
    x86_64 also covers the x86 and x32 ABIs."""
    from . import profile
    from .capabilities import parse_all
    lib, name = _libseccomp(), resolve_arch(arch)
    token = lib.seccomp_arch_resolve_name(name.encode())
    libc = ctypes.CDLL(None)
    libc.free.argtypes = [ctypes.c_void_p]
    known = set()
    for number in range(1024):   # every table's native numbers are below 1024
        text = lib.seccomp_syscall_resolve_num_arch(token, number)
        if text:
            known.add(ctypes.string_at(text).decode())
            libc.free(text)
    allowed, by_argument = set(), set()
    for rule in profile.select(parse_all(caps), name, _kernel()):
        if rule.action == profile.ALLOW:
            (by_argument if rule.conds else allowed).update(rule.names)
    by_argument -= allowed
    return sorted(known - allowed - by_argument), sorted(known & by_argument)


_PROGRAMS: dict[tuple[frozenset[str], str | None], bytes] = {}
_COSTS: dict[tuple[frozenset[str], str, tuple[int, int]], float] = {}   # seconds per compile


def compile_filter(caps: frozenset[str], arch: str | None = None) -> bytes:
    """Docker's default profile for a run keeping capabilities `caps` (any spelling
    capabilities.parse takes), as the BPF program for `arch` (None: this machine). The same
    bytes object comes back for the same options: a second call is one dict lookup."""
    key = (frozenset(caps), arch)
    program = _PROGRAMS.get(key)
    if program is None:
        program = _PROGRAMS[key] = _program(*_filter_key(caps, arch))
    return program


def _filter_key(caps, arch) -> tuple[frozenset[str], str, tuple[int, int]]:
    from .capabilities import parse_all
    return parse_all(caps), resolve_arch(arch), _kernel()


@functools.lru_cache(maxsize=32)
def _program(caps: frozenset[str], arch: str, kernel: tuple[int, int]) -> bytes:
    """The filter kept by an earlier process (each CLI run is one, see filtercache), or
    compiled now and kept."""
    from . import filtercache
    from .capabilities import mask
    kept = filtercache.name(mask(caps), arch, kernel, version())
    program = filtercache.read(kept)
    if program is None:
        began = time.perf_counter()
        program = _compile(caps, arch, kernel)
        _COSTS[(caps, arch, kernel)] = time.perf_counter() - began
        filtercache.write(kept, program)
    return program


def compile_cost(caps: frozenset[str], arch: str | None = None) -> float | None:
    """The seconds compiling this filter took in this process (None: not compiled here, or
    read back from an earlier process's). Later calls for it cost a dict lookup."""
    return _COSTS.get(_filter_key(caps, arch))


def is_compiled(caps: frozenset[str], arch: str | None = None) -> bool:
    """Whether compile_filter(caps, arch) would come from the cache (for --profile)."""
    return (frozenset(caps), arch) in _PROGRAMS


def time_compile(caps: frozenset[str], arch: str | None = None) -> float:
    """The seconds one compile of this filter takes here, every cache passed by (info)."""
    began = time.perf_counter()
    _compile.__wrapped__(*_filter_key(caps, arch))
    return time.perf_counter() - began


@functools.lru_cache(maxsize=32)
def _compile(caps: frozenset[str], arch: str, kernel: tuple[int, int]) -> bytes:
    from . import profile
    lib = _libseccomp()
    default = _act_errno(profile.DEFAULT_ERRNO)
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise SetupError("can't build the seccomp filter: seccomp_init failed.")
    try:
        # A binary tree of syscall numbers instead of a list (libseccomp >= 2.5): the same
        # decisions, a program ~25% longer, but the kernel attaches it in half the time
        # (each run pays that) and a call depending on arguments walks fewer instructions.
        # An older libseccomp refuses the attribute and builds the list.
        lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)
        _add_arches(lib, ctx, profile.arches(arch))
        for rule in profile.select(caps, arch, kernel):
            action = SCMP_ACT_ALLOW if rule.action == profile.ALLOW else _act_errno(rule.errno)
            if action == default:
                continue   # libseccomp refuses a rule that repeats the default
            conds = (_ArgCmp * max(len(rule.conds), 1))(
                *[_ArgCmp(c.arg, _CMP[c.op], c.a, c.b) for c in rule.conds])
            for name in rule.names:
                number = lib.seccomp_syscall_resolve_name(name.encode())
                if number == _NR_SCMP_ERROR:
                    continue   # newer than this libseccomp: skipped, as Docker does
                rc = lib.seccomp_rule_add_array(ctx, action, number, len(rule.conds), conds)
                if rc < 0:
                    raise SetupError(f"can't add the seccomp rule for {name} ({arch}): "
                                     f"{os.strerror(-rc).lower()}.")
        return _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


def _add_arches(lib: ctypes.CDLL, ctx: int, arches: tuple[str, ...]) -> None:
    """Make the filter cover exactly `arches`. seccomp_init starts with the native one; it
    goes first when foreign (libseccomp refuses to mix byte orders in one filter)."""
    tokens = [lib.seccomp_arch_resolve_name(a.encode()) for a in arches]
    native = lib.seccomp_arch_native()
    if native not in tokens:
        rc = lib.seccomp_arch_remove(ctx, native)
        if rc < 0:
            raise SetupError(f"can't build a foreign seccomp filter for {arches[0]}: "
                             f"{os.strerror(-rc).lower()}.")
    for name, token in zip(arches, tokens):
        rc = lib.seccomp_arch_add(ctx, token)
        if rc < 0 and rc != -17:   # EEXIST: the native one
            raise SetupError(f"can't add the {name} architecture to the seccomp filter: "
                             f"{os.strerror(-rc).lower()}.")


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    fd = os.memfd_create("nsmagic-seccomp", os.MFD_CLOEXEC)
    try:
        rc = lib.seccomp_export_bpf(ctx, fd)
        if rc < 0:
            raise SetupError(f"can't export the seccomp filter: {os.strerror(-rc).lower()}.")
        size = os.fstat(fd).st_size
        program = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    if len(program) != size or size % BPF_INSTRUCTION_SIZE:
        raise SetupError(f"libseccomp exported a malformed seccomp filter ({size} bytes).")
    return program
