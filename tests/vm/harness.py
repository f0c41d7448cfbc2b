"""Boot a real Linux kernel under qemu (TCG) with a chosen cgroup layout and run one
command in it, with the host's root filesystem as the guest's root.

The guest:
  * kernel: the newest /boot/vmlinuz-* (Debian's linux-image-amd64), booted with
    ``qemu-system-x86_64 -accel tcg`` (KVM is not needed and not used);
  * initramfs: built here, at run time, from busybox-static, ``tests/vm/init`` and
    the kernel's 9p/virtio/overlay modules; cached under ``tests/output/vm/``;
  * root: the host's ``/`` shared read-only over virtio-9p, used as the lower layer of
    an overlay whose upper layer is a tmpfs (so the whole root is writable and every
    write is thrown away), plus fresh /proc /sys /dev /dev/pts /dev/shm /tmp /run;
  * cgroups: one of LAYOUTS, mounted by the guest init before the command starts;
  * the command: runs with cwd and environment given here, as root or as an
    unprivileged uid; its stdout+stderr and exit status come back through a second,
    writable 9p share (the "job" directory, /run/vmjob in the guest).

API: ``boot_and_run(layout, argv, ...) -> VmResult``.

CLI (from the repo root)::

    .venv/bin/python -m tests.vm.harness v2 -- /work/main/.venv/bin/python -c \\
        'print(open("/sys/fs/cgroup/cgroup.controllers").read())'
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import lzma
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
INIT_SCRIPT = HERE / "init"
OUTPUT_DIR = REPO / "tests" / "output" / "vm"

LAYOUTS = ("v2", "v1", "hybrid", "v2-delegated")
DELEGATED_UID = 65534
DELEGATED_NAME = "user-deleg"
# Where things are inside the guest.
GUEST_JOB = "/run/vmjob"
GUEST_OUT = GUEST_JOB + "/out"

DEFAULT_TIMEOUT = float(os.environ.get("NSMAGIC_VM_TIMEOUT", "600"))
MEMORY = os.environ.get("NSMAGIC_VM_MEMORY", "2G")
SMP = os.environ.get("NSMAGIC_VM_SMP", "2")

# Modules the initramfs needs (each with its dependencies from modules.dep), unless
# the kernel has them built in.  Names as in modules.dep (dash or underscore).
WANTED_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio-rng")
# Wanted modules whose absence is fatal (9p root); the others are nice to have.
REQUIRED_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")

KERNEL_ARGS = (
    "console=ttyS0",
    "panic=-1",
    "quiet",
    "loglevel=4",
    "rdinit=/init",
    "mitigations=off",
    "tsc=reliable",
    "random.trust_cpu=on",
)

CMD_START = "===NSMAGIC-VM-CMD-START==="
CMD_EXIT_RE = re.compile(r"===NSMAGIC-VM-CMD-EXIT (\d+)===")
INIT_FAILED = "===NSMAGIC-VM-FAILED==="


class VmSetupError(RuntimeError):
    """The host lacks what is needed to boot the guest (qemu, kernel, modules)."""


@dataclasses.dataclass
class VmResult:
    layout: str
    argv: list[str]
    exit_status: int | None  # None: the command never finished (boot failure, hang)
    output: str  # the command's stdout+stderr
    console_tail: str  # last lines of the serial console (kernel + init)
    console: str = ""
    timed_out: bool = False
    init_error: str | None = None  # what the guest init said when it gave up
    boot_seconds: float | None = None  # guest uptime when the command started
    command_seconds: float | None = None  # guest time the command took
    wall_seconds: float = 0.0  # host time, qemu start to qemu exit
    qemu_returncode: int | None = None
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # $VM_OUT/*

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def describe(self, output_lines: int = 60) -> str:
        """A multi-line account for assertion messages."""
        head = (
            f"VM layout={self.layout} argv={self.argv!r}: exit_status={self.exit_status} "
            f"timed_out={self.timed_out} boot={self.boot_seconds}s "
            f"command={self.command_seconds}s wall={self.wall_seconds:.1f}s "
            f"qemu_rc={self.qemu_returncode}"
        )
        parts = [head]
        if self.init_error:
            parts.append(f"guest init error: {self.init_error}")
        out = self.output.splitlines()
        if out:
            parts.append(f"--- command output (last {output_lines} lines) ---")
            parts.extend(out[-output_lines:])
        parts.append("--- console tail ---")
        parts.append(self.console_tail)
        return "\n".join(parts)


# --------------------------------------------------------------------------- host


def _version_key(s: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)]


def find_kernel() -> tuple[Path, str]:
    """The newest /boot/vmlinuz-* that has its modules in /lib/modules."""
    env = os.environ.get("NSMAGIC_VM_KERNEL")
    if env:
        p = Path(env)
        ver = p.name.removeprefix("vmlinuz-")
        if not p.exists() or not (Path("/lib/modules") / ver / "modules.dep").exists():
            raise VmSetupError(f"NSMAGIC_VM_KERNEL={env}: no such kernel or no /lib/modules/{ver}")
        return p, ver
    cands = []
    for p in Path("/boot").glob("vmlinuz-*"):
        ver = p.name.removeprefix("vmlinuz-")
        if (Path("/lib/modules") / ver / "modules.dep").exists():
            cands.append((ver, p))
    if not cands:
        raise VmSetupError(
            "no /boot/vmlinuz-* with /lib/modules/<version>/modules.dep: "
            "apt-get install linux-image-amd64 (see tests/vm/debian-packages.txt)"
        )
    ver, p = max(cands, key=lambda c: _version_key(c[0]))
    return p, ver


def find_qemu() -> str:
    q = shutil.which("qemu-system-x86_64")
    if not q:
        raise VmSetupError(
            "qemu-system-x86_64 not found: apt-get install qemu-system-x86 "
            "(see tests/vm/debian-packages.txt)"
        )
    return q


def _elf_has_interp(path: Path) -> bool:
    """True if the ELF file asks for a dynamic loader (PT_INTERP)."""
    import struct

    with open(path, "rb") as f:
        hdr = f.read(64)
        if hdr[:4] != b"\x7fELF" or hdr[4] != 2:  # 64-bit only
            return True
        (phoff,) = struct.unpack_from("<Q", hdr, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", hdr, 0x36)
        f.seek(phoff)
        ph = f.read(phentsize * phnum)
    return any(struct.unpack_from("<I", ph, i * phentsize)[0] == 3 for i in range(phnum))


def find_busybox() -> Path:
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(p)
        if path.exists():
            # Must be static: it runs in the initramfs without a libc.
            if _elf_has_interp(path):
                raise VmSetupError(f"{p} is dynamically linked: apt-get install busybox-static")
            return path
    raise VmSetupError("busybox not found: apt-get install busybox-static")


def _read_module(path: Path) -> bytes:
    name = path.name
    if name.endswith(".ko"):
        return path.read_bytes()
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        zstd = shutil.which("zstd")
        if not zstd:
            raise VmSetupError(f"{path} is zstd-compressed and zstd is not installed")
        return subprocess.run([zstd, "-dc", str(path)], check=True, capture_output=True).stdout
    raise VmSetupError(f"unknown module format: {path}")


def _mod_name(relpath: str) -> str:
    base = relpath.rsplit("/", 1)[-1]
    base = base.split(".ko", 1)[0]
    return base.replace("-", "_")


def resolve_modules(kver: str) -> tuple[list[Path], list[str]]:
    """(module files in load order, names that are built in) for WANTED_MODULES."""
    moddir = Path("/lib/modules") / kver
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[_mod_name(mod)] = (mod, rest.split())
    builtin = set()
    bpath = moddir / "modules.builtin"
    if bpath.exists():
        builtin = {_mod_name(w) for w in bpath.read_text().split()}
    order: list[Path] = []
    seen: set[str] = set()
    builtin_hit: list[str] = []

    def visit(name: str, required: bool) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        if name in builtin:
            builtin_hit.append(name)
            return
        if name not in deps:
            if required:
                raise VmSetupError(f"kernel {kver} has no module {name} and it is not built in")
            return
        rel, dlist = deps[name]
        for d in dlist:
            visit(_mod_name(d), True)
        order.append(moddir / rel)

    for m in WANTED_MODULES:
        visit(m, m in REQUIRED_MODULES)
    return order, builtin_hit


class _Cpio:
    """A minimal newc cpio writer (what the kernel's initramfs unpacker reads)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.ino = 1

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        nameb = name.encode() + b"\0"
        fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(nameb),
            0,
        ]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf += hdr + nameb
        self.buf += b"\0" * (-len(self.buf) % 4)
        self.buf += data
        self.buf += b"\0" * (-len(self.buf) % 4)

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._add(name, stat.S_IFDIR | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._add(name, stat.S_IFREG | perm, data)

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._add(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._add("TRAILER!!!", 0)
        self.buf += b"\0" * (-len(self.buf) % 512)
        return bytes(self.buf)


def build_initramfs(kver: str, cache_dir: Path | None = None) -> Path:
    """Build (or reuse) the initramfs for kernel `kver`; returns its path."""
    busybox = find_busybox()
    modules, _builtin = resolve_modules(kver)
    init = INIT_SCRIPT.read_bytes()
    h = hashlib.sha256()
    h.update(init)
    h.update(kver.encode())
    for p in [busybox, *modules]:
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    key = h.hexdigest()[:16]
    cache_dir = Path(cache_dir) if cache_dir else OUTPUT_DIR
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache_dir = Path(tempfile.gettempdir()) / "nsmagic-vm"
        cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"initramfs-{kver}-{key}.cpio"
    if out.exists():
        return out
    c = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "mnt", "tmp", "run", "newroot", "modules"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    c.file("bin/busybox", busybox.read_bytes(), 0o755)
    c.file("init", init, 0o755)
    names = []
    for p in modules:
        name = _mod_name(p.name) + ".ko"
        c.file(f"modules/{name}", _read_module(p))
        names.append(name)
    c.file("modules/order", ("\n".join(names) + "\n").encode())
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(c.finish())
    tmp.replace(out)
    for old in cache_dir.glob("initramfs-*.cpio"):  # earlier builds
        if old != out and time.time() - old.stat().st_mtime > 3600:
            old.unlink(missing_ok=True)
    return out


# --------------------------------------------------------------------------- guest job


# The guest gets fresh tmpfs on these; host paths under them (a checkout in /tmp, say)
# are brought back into the guest as overlays of the host's copy.
GUEST_TMPFS = ("/tmp", "/run", "/dev/shm")


def _hidden_host_paths(paths: Sequence[str | os.PathLike]) -> list[str]:
    out: list[str] = []
    for p in paths:
        p = os.path.realpath(p)
        if any(p == t or p.startswith(t + "/") for t in GUEST_TMPFS) and p not in GUEST_TMPFS:
            if p not in out:
                out.append(p)
    return out


def _job_env(layout: str, uid: int | None, binds: Sequence[str] = ()) -> str:
    vals = {
        "VM_BINDS": " ".join(binds),
        "VM_LAYOUT": layout,
        "VM_UID": str(uid if uid is not None else 0),
        "VM_GID": str(uid if uid is not None else 0),
        "VM_DELEG_NAME": DELEGATED_NAME,
        "VM_CGROUP": "",
    }
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in vals.items())


def _cmd_script(
    layout: str, argv: Sequence[str], cwd: str, uid: int | None, env: Mapping[str, str]
) -> str:
    full_env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root" if not uid else "/tmp",
        "USER": "root" if not uid else "nobody",
        "LOGNAME": "root" if not uid else "nobody",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "PYTHONUNBUFFERED": "1",
        "VM_LAYOUT": layout,
        "NSMAGIC_VM_LAYOUT": layout,
        "VM_JOB": GUEST_JOB,
        "VM_OUT": GUEST_OUT,
    }
    if layout == "v2-delegated":
        full_env["NSMAGIC_VM_DELEGATED_CGROUP"] = f"/sys/fs/cgroup/{DELEGATED_NAME}"
    full_env.update(env)
    words = ["exec", "/run/vm/bin/env", "-i"]
    words += [f"{k}={v}" for k, v in full_env.items()]
    if uid:
        setpriv = "/usr/bin/setpriv" if Path("/usr/bin/setpriv").exists() else "setpriv"
        words += [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    words += list(argv)
    q = shlex.quote
    return (
        f"cd {q(cwd)} || {{ echo 'vm: cannot cd to {cwd}' >&2; exit 125; }}\n"
        + " ".join(q(w) for w in words)
        + "\n"
    )


_ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")


def _tail(text: str, n: int) -> str:
    return "\n".join(_ANSI.sub("", text).splitlines()[-n:])


def _read(p: Path) -> str | None:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return None


def boot_and_run(
    layout: str,
    argv: Sequence[str],
    *,
    user: int | None = None,
    cwd: str | os.PathLike = REPO,
    env: Mapping[str, str] | None = None,
    files: Mapping[str, str | bytes] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    console_lines: int = 60,
    stream: Callable[[str], None] | None = None,
    keep: bool = False,
) -> VmResult:
    """Boot a guest with cgroup `layout` and run `argv` in it.

    user: uid to run as (gid = uid, no supplementary groups); default root, except for
      "v2-delegated" where it defaults to 65534 (the owner of the delegated subtree).
    files: extra files placed in the job dir, /run/vmjob/<name> in the guest.
      The command can write result files into $VM_OUT (/run/vmjob/out), which come
      back in VmResult.files.
    stream: called with each new chunk of the serial console (for a live view).
    Never raises for guest trouble: a guest that does not boot or hangs gives
    exit_status None and the console tail. Raises VmSetupError when the host lacks
    qemu / kernel / busybox.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if user is None and layout == "v2-delegated":
        user = DELEGATED_UID
    qemu = find_qemu()
    kernel, kver = find_kernel()
    initrd = build_initramfs(kver)

    run_dir = Path(tempfile.mkdtemp(prefix=f"nsmagic-vm-{layout}-"))
    job = run_dir / "job"
    out_dir = job / "out"
    out_dir.mkdir(parents=True)
    os.chmod(job, 0o755)
    os.chmod(out_dir, 0o777)
    binds = _hidden_host_paths([REPO, cwd])
    if any(" " in b for b in binds):
        raise VmSetupError(f"paths under {GUEST_TMPFS} with spaces are not supported: {binds}")
    (job / "job.env").write_text(_job_env(layout, user, binds))
    (job / "cmd.sh").write_text(_cmd_script(layout, argv, str(cwd), user, env or {}))
    for name, content in (files or {}).items():
        p = job / name
        if isinstance(content, str):
            p.write_text(content)
        else:
            p.write_bytes(content)
        os.chmod(p, 0o755 if name.endswith(".sh") else 0o644)
    console_path = run_dir / "console.log"

    cmd = [
        qemu,
        "-accel", "tcg,thread=multi",
        "-cpu", "max",
        "-m", MEMORY,
        "-smp", SMP,
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-monitor", "none",
        "-serial", f"file:{console_path}",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", " ".join(KERNEL_ARGS),
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={job},mount_tag=vmjob,security_model=none,multidevs=remap",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    t0 = time.monotonic()
    with open(run_dir / "qemu.log", "wb") as qlog:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog)
    timed_out = False
    pos = 0
    status_seen_at = None
    try:
        while True:
            try:
                proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if stream is not None:
                pos = _stream_console(console_path, pos, stream)
            now = time.monotonic()
            if (job / "status").exists():
                # The command is done; give the guest a moment to reboot (exit qemu).
                status_seen_at = status_seen_at or now
                if now - status_seen_at > 30:
                    break
            if now - t0 > timeout:
                timed_out = True
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.monotonic() - t0
    if stream is not None:
        _stream_console(console_path, pos, stream)

    console = _read(console_path) or ""
    qemu_log = _read(run_dir / "qemu.log") or ""
    status_text = _read(job / "status")
    exit_status = int(status_text.strip()) if status_text and status_text.strip() else None
    if exit_status is None:
        m = CMD_EXIT_RE.search(console)
        if m:
            exit_status = int(m.group(1))
    console_tail = _tail(console, console_lines)
    if qemu_log.strip():
        console_tail += "\n--- qemu stderr ---\n" + _tail(qemu_log, 20)

    def fnum(name: str) -> float | None:
        t = _read(job / name)
        try:
            return float(t) if t else None
        except ValueError:
            return None

    boot_s, end_s = fnum("boot-uptime"), fnum("end-uptime")
    res_files = {}
    for p in sorted(out_dir.rglob("*")):
        if p.is_file():
            res_files[str(p.relative_to(out_dir))] = _read(p) or ""
    result = VmResult(
        layout=layout,
        argv=list(argv),
        exit_status=exit_status,
        output=_read(job / "output") or "",
        console_tail=console_tail,
        console=console,
        timed_out=timed_out,
        init_error=(_read(job / "init-error") or "").strip() or None,
        boot_seconds=boot_s,
        command_seconds=(end_s - boot_s) if boot_s is not None and end_s is not None else None,
        wall_seconds=wall,
        qemu_returncode=proc.returncode,
        files=res_files,
    )
    _save_last(result, run_dir)
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"vm: run directory kept at {run_dir}", file=sys.stderr)
    return result


def _stream_console(path: Path, pos: int, stream: Callable[[str], None]) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            data = f.read()
    except OSError:
        return pos
    if data:
        stream(data.decode(errors="replace"))
    return pos + len(data)


def _save_last(result: VmResult, run_dir: Path) -> None:
    """Keep the last console and output per layout under tests/output/vm (for CI logs)."""
    try:
        OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
        (OUTPUT_DIR / f"last-{result.layout}-console.log").write_text(result.console)
        (OUTPUT_DIR / f"last-{result.layout}-output.log").write_text(result.output)
    except OSError:
        pass


# --------------------------------------------------------------------------- CLI


def main(args: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.vm.harness",
        description="Boot a qemu guest with a cgroup layout and run one command in it.",
    )
    ap.add_argument("layout", choices=LAYOUTS)
    ap.add_argument("--user", type=int, default=None, help="uid to run as")
    ap.add_argument("--cwd", default=str(REPO))
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    ap.add_argument("-q", "--quiet", action="store_true", help="do not stream the console")
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    ap.epilog = "Everything after -- is the command (default: a small shell probe)."
    args = list(sys.argv[1:] if args is None else args)
    cmd_argv: list[str] = []
    if "--" in args:
        i = args.index("--")
        args, cmd_argv = args[:i], args[i + 1 :]
    ns = ap.parse_args(args)
    default_probe = (
        "id; cat /proc/self/cgroup; grep cgroup /proc/self/mountinfo; "
        "cat /sys/fs/cgroup/cgroup.controllers /sys/fs/cgroup/cgroup.subtree_control "
        "2>/dev/null; true"
    )
    argv = cmd_argv or ["/bin/sh", "-c", default_probe]

    def stream(chunk: str) -> None:
        sys.stderr.write(chunk)
        sys.stderr.flush()

    try:
        r = boot_and_run(
            ns.layout,
            argv,
            user=ns.user,
            cwd=ns.cwd,
            timeout=ns.timeout,
            stream=None if ns.quiet else stream,
            keep=ns.keep,
        )
    except VmSetupError as e:
        print(f"vm: {e}", file=sys.stderr)
        return 125
    sys.stdout.write(r.output)
    sys.stdout.flush()
    print(
        f"\nvm: layout={r.layout} exit_status={r.exit_status} boot={r.boot_seconds}s "
        f"command={r.command_seconds}s wall={r.wall_seconds:.1f}s timed_out={r.timed_out}",
        file=sys.stderr,
    )
    if r.exit_status is None:
        if ns.quiet:
            print(r.describe(), file=sys.stderr)
        return 125
    return r.exit_status


if __name__ == "__main__":
    sys.exit(main())
