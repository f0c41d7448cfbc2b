"""What every run's PID 1 does before its workload starts, beyond what test_escape.py tries as
an attacker: the seccomp filter's way from the options to the kernel (--security-opt, the
run's config, --profile, info), the session keyring, the capabilities PID 1 and the workload
hold, and PID 1's command line. The escape tests check the outcome through every face; these
check the pieces one at a time."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, needs_root, run_spec

from nsmagic import config
from nsmagic import kept as kept_files
from nsmagic.errors import SetupError, SpecError
from nsmagic.security import capabilities, filtercache, seccomp
from nsmagic.spec import Spec

# Docker's default set less MKNOD: the workload's CapPrm and CapEff (Docker's is 0xa80425fb).
WORKLOAD_CAPS = 0xA80425FB & ~(1 << 27)


# --- options -------------------------------------------------------------------------------

@pytest.mark.core
@pytest.mark.parametrize("options,on", [
    ("", True),
    ("--security-opt seccomp=unconfined", False),
    ("--security-opt seccomp:unconfined", False),             # Docker's older spelling
    ("--security-opt no-new-privileges", True),
    ("--security-opt no-new-privileges=true --security-opt seccomp=unconfined", False),
    ("--security-opt seccomp=unconfined --security-opt seccomp=builtin", True),
])
def test_security_opt_turns_the_filter_off_only_when_asked(options, on):
    assert Spec.from_argv(options).seccomp is on


@pytest.mark.core
@pytest.mark.parametrize("value,words", [
    ("apparmor=unconfined", ["'apparmor=unconfined'", "not known", "seccomp=unconfined"]),
    ("seccomp=/etc/profile.json", ["profiles from files", "seccomp=unconfined"]),
    ("no-new-privileges=false", ["always sets no_new_privs", "leave it out"]),
    ("label=disable", ["not known"]),
])
def test_security_opt_values_nsmagic_lacks_are_one_sentence(value, words):
    with pytest.raises(SpecError) as info:
        Spec.from_argv(["--security-opt", value])
    message = str(info.value)
    assert "\n" not in message and message.endswith(".")
    for word in words:
        assert word in message, message


@pytest.mark.core
def test_the_filter_is_part_of_the_container_a_spare_is_made_for():
    """Two cells that differ in --security-opt must not share a container made ahead."""
    plain, loose = Spec.from_argv(""), Spec.from_argv("--security-opt seccomp=unconfined")
    assert plain.container_part() != loose.container_part()


# --- the run's config ----------------------------------------------------------------------

def _run_config(**changes) -> config.RunConfig:
    """A RunConfig as the runner builds it for `-- true`, with `changes`."""
    from nsmagic import cgroups
    from nsmagic.runtime.runconfig import run_config
    made = run_config(Spec.from_argv(["--", "true"]), "h", False, None, cgroups.detect())
    return dataclasses.replace(made, **changes)


@pytest.mark.core
def test_the_filter_crosses_to_pid_1_byte_for_byte():
    program = seccomp.compile_filter(capabilities.DOCKER_DEFAULT - {"CAP_MKNOD"})
    sent = _run_config()
    assert sent.seccomp == program            # what every run's PID 1 is sent by default
    assert config.decode(config.RunConfig, config.encode(sent)) == sent
    none = _run_config(seccomp=None)
    assert config.decode(config.RunConfig, config.encode(none)).seccomp is None


@pytest.mark.core
@pytest.mark.parametrize("garbled", ["AAAA!", "AAA", 12, ["AAAA"]])
def test_a_garbled_filter_is_refused_on_arrival(garbled):
    wire = json.loads(config.encode(_run_config(seccomp=bytes(8))))
    wire["seccomp"] = garbled
    with pytest.raises(SetupError, match="malformed RunConfig.seccomp"):
        config.decode(config.RunConfig, json.dumps(wire).encode())


@pytest.mark.core
def test_a_filter_of_the_wrong_size_is_refused_on_arrival():
    for size in (7, 8 * 4097):
        with pytest.raises(SetupError, match="seccomp filter sent is malformed"):
            _run_config(seccomp=bytes(size))


@pytest.mark.core
def test_one_capability_table():
    from nsmagic.inside import linux, workload
    assert not hasattr(linux, "CAPABILITIES")
    assert capabilities.mask(workload.KEEP_CAPABILITIES) == WORKLOAD_CAPS


# --- the filter kept between processes (each CLI run is one) ------------------------------

@pytest.fixture
def kept(tmp_path, monkeypatch):
    """A private directory standing in for /run/nsmagic."""
    where = tmp_path / "nsmagic"
    where.mkdir(mode=0o700)
    monkeypatch.setattr(kept_files, "directory", lambda: str(where))
    return where


@pytest.mark.core
def test_a_filter_compiled_once_is_read_back_by_the_next_process(kept, monkeypatch):
    caps = capabilities.DOCKER_DEFAULT - {"CAP_MKNOD"}
    for fresh_process in range(2):
        monkeypatch.setattr(seccomp, "_PROGRAMS", {})
        monkeypatch.setattr(seccomp, "_COSTS", {})
        seccomp._program.cache_clear()
        program = seccomp.compile_filter(caps)
        assert (seccomp.compile_cost(caps) is None) == bool(fresh_process)
    assert program == seccomp._compile.__wrapped__(caps, seccomp.native_arch(),
                                                   seccomp._kernel())
    (only,) = os.listdir(kept)
    assert only.startswith(f"seccomp-{seccomp.native_arch()}-") and only.endswith(".bpf")
    assert f"-libseccomp{seccomp.version()}-caps{capabilities.mask(caps):x}-" in only
    assert os.stat(kept / only).st_mode & 0o777 == 0o600


@pytest.mark.core
def test_a_kept_filter_names_everything_it_depends_on():
    names = {filtercache.name(0xA00425FB, "x86_64", (6, 1), "2.5.4"),
             filtercache.name(0xA80425FB, "x86_64", (6, 1), "2.5.4"),
             filtercache.name(0xA00425FB, "aarch64", (6, 1), "2.5.4"),
             filtercache.name(0xA00425FB, "x86_64", (4, 4), "2.5.4"),
             filtercache.name(0xA00425FB, "x86_64", (6, 1), "2.6.0")}
    assert len(names) == 5


@pytest.mark.core
@pytest.mark.parametrize("spoil", ["group-writable", "symlink", "short", "empty",
                                   "open directory"])
def test_a_kept_filter_that_is_not_to_be_trusted_is_not_used(kept, spoil):
    filtercache.write("f.bpf", bytes(16))
    assert filtercache.read("f.bpf") == bytes(16)
    path = kept / "f.bpf"
    if spoil == "group-writable":
        path.chmod(0o620)
    elif spoil == "symlink":
        path.rename(kept / "g.bpf")
        path.symlink_to(kept / "g.bpf")
    elif spoil == "short":
        path.write_bytes(bytes(15))
    elif spoil == "empty":
        path.write_bytes(b"")
    else:
        kept.chmod(0o755)
    assert filtercache.read("f.bpf") is None


@pytest.mark.core
def test_no_filter_is_kept_without_a_private_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(filtercache.os, "geteuid", lambda: 12345)   # not root
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))            # not this user's
    assert kept_files.directory() is None
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert kept_files.directory() is None


# --- in a run ------------------------------------------------------------------------------

STATUS = ("grep -E '^(Cap(Inh|Prm|Eff)|NoNewPrivs|Seccomp):' /proc/self/status /proc/1/status"
          " | tr '\\t' ' '")


def _status(out: str) -> dict[str, dict[str, str]]:
    """{"self": {"CapEff": "00000000a00425fb", ...}, "1": {...}} from STATUS's lines."""
    seen: dict[str, dict[str, str]] = {"self": {}, "1": {}}
    for line in out.splitlines():
        path, _, rest = line.partition(":")
        key, _, value = rest.partition(":")
        seen[path.split("/")[2]][key] = value.strip()
    return seen


@pytest.mark.kernel
@needs_root
@pytest.mark.usefixtures("no_leaks")
@pytest.mark.parametrize("user", [None, "1000"])
def test_the_workload_starts_with_dockers_set_and_pid_1_with_none(user):
    got = run_spec(["--user", user] * bool(user) + ["--", "sh", "-c", STATUS])
    assert got.result.exit_code == 0, got
    seen = _status(got.out)
    workload = WORKLOAD_CAPS if user is None else 0   # a non-root workload: none, as Docker
    assert int(seen["self"]["CapEff"], 16) == int(seen["self"]["CapPrm"], 16) == workload
    assert int(seen["self"]["CapInh"], 16) == 0   # Docker since CVE-2022-24769
    for key in ("CapInh", "CapPrm", "CapEff"):
        assert int(seen["1"][key], 16) == 0, seen
    assert seen["self"]["Seccomp"] == seen["1"]["Seccomp"] == "2", seen   # filter mode
    assert seen["self"]["NoNewPrivs"] == "1", seen


@pytest.mark.kernel
@needs_root
@pytest.mark.usefixtures("no_leaks")
def test_unconfined_seccomp_loads_no_filter_and_says_so(capsys):
    got = run_spec(["--security-opt", "seccomp=unconfined", "--", "sh", "-c", STATUS])
    assert got.result.exit_code == 0, got
    assert _status(got.out)["self"]["Seccomp"] == "0", got
    banner = capsys.readouterr().err
    assert "seccomp filter OFF" in banner and "seccomp=unconfined" in banner, banner


@pytest.mark.kernel
@needs_root
@pytest.mark.usefixtures("no_leaks")
def test_profile_shows_the_load_each_run_and_the_compile_once(monkeypatch):
    monkeypatch.setattr(seccomp, "_PROGRAMS", {})   # as in a process that compiled none yet,
    monkeypatch.setattr(kept_files, "directory", lambda: None)   # on a host that kept none
    seccomp._program.cache_clear()
    first = run_spec(["--profile", "--", "true"]).result.profile
    second = run_spec(["--profile", "--", "true"]).result.profile
    steps = [[step for step, _ in marks] for marks in (first, second)]
    assert "seccomp filter compiled" in steps[0] and "seccomp filter compiled" not in steps[1]
    assert all("seccomp filter loaded" in s for s in steps), steps
    loaded = steps[1].index("seccomp filter loaded")
    assert steps[1][loaded + 1] == "workload spawned", steps   # last before the workload


# A caller in a session keyring of its own with a canary key; the container, without the
# filter, looks for the canary and at its session keyring's serial number.
KEYRING_HOST = r"""
import ctypes, io, json, platform, sys
sys.path.insert(0, sys.argv[1])
from nsmagic.core import run
from nsmagic.spec import Spec
KEYCTL, ADD_KEY = {"x86_64": (250, 248), "aarch64": (219, 217)}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
L = ctypes.c_long
assert libc.syscall(L(KEYCTL), L(1), None) > 0                     # a new session keyring
assert libc.syscall(L(ADD_KEY), b"user", b"hardening-canary", b"x", L(1), L(-3)) > 0
mine = libc.syscall(L(KEYCTL), L(0), L(-3), L(0))                  # its serial
cell = '''
import ctypes, platform
KEYCTL = {"x86_64": 250, "aarch64": 219}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
L = ctypes.c_long
print(libc.syscall(L(KEYCTL), L(0), L(-3), L(0)))
print(libc.syscall(L(KEYCTL), L(10), L(-3), b"user", b"hardening-canary", L(0)))
'''
out = io.StringIO()
result = run(Spec.from_argv(["--security-opt", "seccomp=unconfined"], script=cell), out=out)
print(json.dumps({"code": result.exit_code, "mine": mine, "out": out.getvalue().split()}))
"""


@pytest.mark.kernel
@needs_root
def test_each_run_has_a_session_keyring_of_its_own_even_without_the_filter():
    if os.uname().machine not in ("x86_64", "aarch64"):
        pytest.skip(f"no keyctl numbers in this test for {os.uname().machine}")
    done = subprocess.run([sys.executable, "-c", KEYRING_HOST, REPO], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout.splitlines()[-1])
    assert said["code"] == 0, said
    theirs, found = (int(n) for n in said["out"])
    assert theirs > 0 and theirs != said["mine"], said   # a keyring, not the caller's
    assert found < 0, f"the container found the caller's key: {said}"


@pytest.mark.kernel
@needs_root
def test_info_shows_the_filter():
    done = subprocess.run([sys.executable, "-m", "nsmagic", "info", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    facts = json.loads(done.stdout)["seccomp"]
    assert facts["filter"] == "on", facts
    assert {"keyctl", "add_key", "unshare", "mount", "clone3"} <= set(facts["refused"]), facts
    assert {"read", "write", "execve"}.isdisjoint(facts["refused"])
    assert facts["by_argument"] == ["clone", "personality", "socket"], facts
    assert facts["instructions"] > 100 and isinstance(facts["load_ms"], float), facts
    text = subprocess.run([sys.executable, "-m", "nsmagic", "info"], cwd=REPO,
                          capture_output=True, text=True, timeout=60).stdout
    assert "Seccomp filter:    on, Docker's default profile" in text, text
    assert f"refuses          {len(facts['refused'])} calls" in text, text


@pytest.mark.kernel
@needs_root
def test_a_run_without_libseccomp_fails_with_the_sentence_unless_unconfined():
    lib = os.path.realpath("/lib/x86_64-linux-gnu/libseccomp.so.2")
    if not os.path.exists(lib):
        pytest.skip("this test hides Debian's x86_64 libseccomp.so.2, not present here")
    # A private mount namespace where the library is an empty file: dlopen fails.
    script = ('mount --bind /dev/null "$1" && shift && "$@" -- true; echo "rc=$?"; '
              '"$@" --security-opt seccomp=unconfined -- true; echo "rc=$?"')
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, "-", lib, sys.executable,
                           "-m", "nsmagic", "run"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split() == ["rc=125", "rc=0"], done
    first, banner = done.stderr.splitlines()
    assert first == ("nsmagic: can't build the seccomp filter: libseccomp is missing; install "
                     "the libseccomp2 package (apt-get install libseccomp2) or run with "
                     "--security-opt seccomp=unconfined."), done
    assert banner.startswith("nsmagic: seccomp filter OFF"), done
