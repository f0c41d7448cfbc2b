"""Run a command as an unprivileged user in a process where namespaces are refused, as on
Binder: `python3 blocked.py UID -- COMMAND [ARG...]` (started as root).

It drops to UID (and the same GID, no supplementary groups), sets no_new_privs and installs a
seccomp filter, inherited by every descendant, that answers unshare(), setns() and clone() with
any CLONE_NEW* flag with EPERM, and clone3() with ENOSYS (its flags sit in memory a filter cannot
read; libc then falls back to clone(), which the filter can check). This is what Docker's default
seccomp profile does for a container without CAP_SYS_ADMIN, which is how Binder and most
Kubernetes pods run notebooks.

Why seccomp and not a user namespace with user.max_user_namespaces=0: the filter refuses every
namespace with EPERM, from any process, exactly as the profile those hosts use; a zero
max_user_namespaces would refuse only the user namespace (with ENOSPC) and needs the caller to be
root in a user namespace of its own, which changes what nsmagic sees (euid 0)."""

import ctypes
import os
import struct
import sys

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
AUDIT_ARCH_X86_64 = 0xC000003E
NR = {"clone": 56, "unshare": 272, "setns": 308, "clone3": 435}
X32_BIT = 0x40000000
CLONE_NEW_ANY = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
                 | 0x40000000 | 0x00000080)   # ns, cgroup, uts, ipc, user, pid, net, time
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
EPERM, ENOSYS = 1, 38
LD_W_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06


def program() -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k); jumps are resolved from labels."""
    code = [
        ("ld", 4),                              # seccomp_data.arch
        ("jeq", AUDIT_ARCH_X86_64, None, "allow"),
        ("ld", 0),                              # seccomp_data.nr
        ("jge", X32_BIT, "eperm", None),        # the x32 ABI: refused outright
        ("jeq", NR["unshare"], "eperm", None),
        ("jeq", NR["setns"], "eperm", None),
        ("jeq", NR["clone3"], "enosys", None),
        ("jeq", NR["clone"], None, "allow"),
        ("ld", 16),                             # seccomp_data.args[0], low 32 bits: the flags
        ("jset", CLONE_NEW_ANY, "eperm", "allow"),
        ("label", "allow"), ("ret", RET_ALLOW),
        ("label", "eperm"), ("ret", RET_ERRNO | EPERM),
        ("label", "enosys"), ("ret", RET_ERRNO | ENOSYS),
    ]
    labels, index = {}, 0
    for item in code:
        if item[0] == "label":
            labels[item[1]] = index
        else:
            index += 1
    out = []
    for item in code:
        if item[0] == "label":
            continue
        here = len(out)
        if item[0] == "ld":
            out.append((LD_W_ABS, 0, 0, item[1]))
        elif item[0] == "ret":
            out.append((RET, 0, 0, item[1]))
        else:
            op = {"jeq": JEQ, "jge": JGE, "jset": JSET}[item[0]]
            jt = 0 if item[2] is None else labels[item[2]] - here - 1
            jf = 0 if item[3] is None else labels[item[3]] - here - 1
            out.append((op, jt, jf, item[1]))
    return out


def install_filter() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    insns = program()
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
    prog = struct.pack("HxxxxxxQ", len(insns), ctypes.addressof(buf))   # struct sock_fprog
    prog_buf = ctypes.create_string_buffer(prog)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog_buf), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def main(argv: list[str]) -> None:
    if os.uname().machine != "x86_64":
        sys.exit("blocked.py: the filter is written for x86_64")
    uid = int(argv[0])
    command = argv[2:] if argv[1] == "--" else argv[1:]
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    install_filter()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
