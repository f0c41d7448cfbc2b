"""Docker's default seccomp profile, as data (no prose or code of Docker's is copied).

Taken from moby/moby master at commit b985e2313a8676e18072b442911fc8f64f17d440 (2026-08-23),
which vendors github.com/moby/profiles/seccomp v0.2.3: the facts of its default.json (default
action, architecture map, rules) in nsmagic's own shape. How Docker applies them, also kept
here (`select`): a rule's `arches` and `not_arches` are matched against the *native*
architecture only (in Docker's spelling, "amd64"), its `caps` must all be in the run's
capability set, any of its `not_caps` there drops the rule, and `min_kernel` is compared with
the running kernel. Syscall names libseccomp does not know are skipped by the compiler.

Differences from the Docker 20.10 that Debian 12 ships, worth knowing when comparing probes:
name_to_handle_at is allowed (moby 2023, commit b335e3d), process_vm_readv/writev and ptrace
are allowed on kernels >= 4.8, and io_uring_* are refused.

Stdlib only; imported by the caller when it compiles a filter, never in PID 1.
"""

from __future__ import annotations

from dataclasses import dataclass

# defaultAction ERRNO with defaultErrnoRet 1: every call no rule allows fails with EPERM.
DEFAULT_ERRNO = 1

# A rule's action: ALLOW, or ERRNO with the errno the call then returns.
ALLOW, ERRNO = "ALLOW", "ERRNO"

# Native architecture (libseccomp's name) -> the other ABIs a process of that machine can
# make calls in, which the filter must cover too (the profile's archMap). A native not listed
# (x86, arm, ppc64le, ...) gets a filter for itself only, as in Docker.
ARCH_MAP: dict[str, tuple[str, ...]] = {
    "x86_64": ("x86", "x32"),
    "aarch64": ("arm",),
    "mips64": ("mips", "mips64n32"),
    "mips64n32": ("mips", "mips64"),
    "mipsel64": ("mipsel", "mipsel64n32"),
    "mipsel64n32": ("mipsel", "mipsel64"),
    "s390x": ("s390",),
    "riscv64": (),
    "loongarch64": (),
}

# libseccomp's architecture name -> Docker's (Go's) name, the one the rules' arches use.
DOCKER_ARCH: dict[str, str] = {
    "x86": "x86", "x86_64": "amd64", "x32": "x32", "arm": "arm", "aarch64": "arm64",
    "mips": "mips", "mipsel": "mipsle", "mips64": "mips64", "mips64n32": "mips64n32",
    "mipsel64": "mipsel64", "mipsel64n32": "mips3l64n32", "ppc": "ppc", "ppc64": "ppc64",
    "ppc64le": "ppc64le", "s390": "s390", "s390x": "s390x", "riscv64": "riscv64",
    "loongarch64": "loongarch64",
}


@dataclass(frozen=True)
class Cond:
    """A condition on one argument, as libseccomp's struct scmp_arg_cmp: `op` is one of EQ,
    LT, GT, MASKED_EQ; for MASKED_EQ `a` is the mask and `b` the value (arg & a) must equal,
    otherwise the argument is compared with `a`."""
    arg: int
    op: str
    a: int
    b: int = 0


@dataclass(frozen=True)
class Rule:
    names: tuple[str, ...]
    action: str = ALLOW
    errno: int | None = None              # with ERRNO
    conds: tuple[Cond, ...] = ()          # all must hold
    caps: tuple[str, ...] = ()            # only when the run has all of these
    not_caps: tuple[str, ...] = ()        # not when the run has any of these
    arches: tuple[str, ...] = ()          # only on these natives (Docker's names)
    not_arches: tuple[str, ...] = ()      # not on these natives
    min_kernel: tuple[int, int] | None = None


# Namespace flags clone may not carry without CAP_SYS_ADMIN: CLONE_NEWNS 0x20000, and
# CLONE_NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET (0x02000000 .. 0x40000000).
CLONE_NAMESPACE_FLAGS = 0x7E020000
assert CLONE_NAMESPACE_FLAGS == 2114060288

AF_VSOCK = 40

ALWAYS = (
    "_llseek", "_newselect", "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk",
    "cachestat", "capget", "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime",
    "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime",
    "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range",
    "connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait",
    "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group",
    "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark",
    "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl",
    "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv",
    "futex_wake", "futimesat", "get_robust_list", "get_thread_area", "getcpu", "getcwd",
    "getdents", "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid",
    "getgid32", "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp",
    "getpid", "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid",
    "getresuid32", "getrlimit", "getrusage", "getsid", "getsockname", "getsockopt", "gettid",
    "gettimeofday", "getuid", "getuid32", "getxattr", "getxattrat", "inotify_add_watch",
    "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "io_destroy",
    "io_getevents", "io_pgetevents", "io_pgetevents_time64", "io_setup", "io_submit", "ioctl",
    "ioprio_get", "ioprio_set", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen",
    "listmount", "listxattr", "listxattrat", "llistxattr", "lremovexattr", "lseek",
    "lsetxattr", "lstat", "lstat64", "madvise", "map_shadow_stack", "membarrier",
    "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock",
    "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
    "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64",
    "mq_unlink", "mremap", "mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock",
    "munlockall", "munmap", "name_to_handle_at", "nanosleep", "newfstatat", "open", "openat",
    "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64",
    "preadv", "preadv2", "prlimit64", "process_mrelease", "pselect6", "pselect6_time64",
    "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv",
    "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages",
    "removexattr", "removexattrat", "rename", "renameat", "renameat2", "restart_syscall",
    "riscv_hwprobe", "rmdir", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
    "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "seccomp", "select", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto",
    "set_robust_list", "set_thread_area", "set_tid_address", "setfsgid", "setfsgid32",
    "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer",
    "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32",
    "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit", "setsid", "setsockopt",
    "setuid", "setuid32", "setxattr", "setxattrat", "shmat", "shmctl", "shmdt", "shmget",
    "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn",
    "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64", "statmount",
    "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee",
    "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime",
    "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate",
    "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "uretprobe", "utime",
    "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid",
    "waitpid", "write", "writev"
)

RULES: tuple[Rule, ...] = (
    Rule(ALWAYS),
    Rule(("process_vm_readv", "process_vm_writev", "ptrace"), min_kernel=(4, 8)),
    # socket: every address family but AF_VSOCK (40); 38 and 40 are compared apart.
    Rule(("socket",), conds=(Cond(0, "LT", 38),)),
    Rule(("socket",), conds=(Cond(0, "EQ", 39),)),
    Rule(("socket",), conds=(Cond(0, "GT", AF_VSOCK),)),
    # personality: only PER_LINUX (0), PER_LINUX32 (8), UNAME26 (0x20000), UNAME26|PER_LINUX32
    # and 0xffffffff (which queries the current persona).
    *(Rule(("personality",), conds=(Cond(0, "EQ", v),))
      for v in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)),
    Rule(("sync_file_range2", "swapcontext"), arches=("ppc64le",)),
    Rule(("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
          "cacheflush", "set_tls"), arches=("arm", "arm64")),
    Rule(("arch_prctl",), arches=("amd64", "x32")),
    Rule(("modify_ldt",), arches=("amd64", "x32", "x86")),
    Rule(("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
         arches=("s390", "s390x")),
    Rule(("riscv_flush_icache",), arches=("riscv64",)),
    Rule(("open_by_handle_at",), caps=("CAP_DAC_READ_SEARCH",)),
    Rule(("bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
          "lookup_dcookie", "lsm_get_self_attr", "lsm_list_modules", "lsm_set_self_attr",
          "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open", "quotactl",
          "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount",
          "umount2", "unshare"), caps=("CAP_SYS_ADMIN",)),
    # Without CAP_SYS_ADMIN, clone without namespace flags (fork, threads, vfork); the flags
    # are the first argument, the second on s390.
    Rule(("clone",), conds=(Cond(0, "MASKED_EQ", CLONE_NAMESPACE_FLAGS, 0),),
         not_caps=("CAP_SYS_ADMIN",), not_arches=("s390", "s390x")),
    Rule(("clone",), conds=(Cond(1, "MASKED_EQ", CLONE_NAMESPACE_FLAGS, 0),),
         not_caps=("CAP_SYS_ADMIN",), arches=("s390", "s390x")),
    # clone3 passes its flags in memory, out of a filter's sight: ENOSYS, so that libc falls
    # back to clone, whose flags the rule above sees.
    Rule(("clone3",), action=ERRNO, errno=38, not_caps=("CAP_SYS_ADMIN",)),
    Rule(("reboot",), caps=("CAP_SYS_BOOT",)),
    Rule(("chroot",), caps=("CAP_SYS_CHROOT",)),
    Rule(("delete_module", "init_module", "finit_module"), caps=("CAP_SYS_MODULE",)),
    Rule(("acct",), caps=("CAP_SYS_PACCT",)),
    Rule(("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
          "ptrace"), caps=("CAP_SYS_PTRACE",)),
    Rule(("iopl", "ioperm"), caps=("CAP_SYS_RAWIO",)),
    Rule(("settimeofday", "stime", "clock_settime", "clock_settime64"), caps=("CAP_SYS_TIME",)),
    Rule(("vhangup",), caps=("CAP_SYS_TTY_CONFIG",)),
    Rule(("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
         caps=("CAP_SYS_NICE",)),
    Rule(("syslog",), caps=("CAP_SYSLOG",)),
    Rule(("bpf",), caps=("CAP_BPF",)),
    Rule(("perf_event_open",), caps=("CAP_PERFMON",)),
)


def select(caps: frozenset[str], native: str, kernel: tuple[int, int]) -> list[Rule]:
    """The rules Docker would hand its runtime for a run keeping `caps` (kernel names) on a
    `native` machine (libseccomp's name, e.g. "x86_64") running `kernel` (major, minor)."""
    arch = DOCKER_ARCH.get(native, native)
    chosen = []
    for rule in RULES:
        if arch in rule.not_arches or any(c in caps for c in rule.not_caps):
            continue
        if rule.arches and arch not in rule.arches:
            continue
        if not all(c in caps for c in rule.caps):
            continue
        if rule.min_kernel and kernel < rule.min_kernel:
            continue
        chosen.append(rule)
    return chosen


def arches(native: str) -> tuple[str, ...]:
    """The architectures (libseccomp's names) a filter for `native` covers, native first."""
    return (native, *ARCH_MAP.get(native, ()))
