"""The root's hardening beyond the escape tests: the storage limit's option, volume options,
the host's secrets and the option that shows them, the per-mount fallback where the kernel
has no mount_setattr, and the identity files of a root without /etc."""

import errno
import os
import subprocess
import sys

import pytest
from conftest import REPO, needs_root

from nsmagic.errors import SpecError
from nsmagic.spec import DEFAULT_STORAGE, Spec


@pytest.mark.core
def test_storage_opt_takes_a_size_and_nothing_else():
    assert Spec.from_argv("-- true").storage == DEFAULT_STORAGE
    assert Spec.from_argv("--storage-opt size=64M -- true").storage == 64 << 20
    with pytest.raises(SpecError, match="the one storage option is size=SIZE"):
        Spec.from_argv("--storage-opt dm.basesize=1G -- true")
    with pytest.raises(SpecError, match="too small"):
        Spec.from_argv("--storage-opt size=1k -- true")


@pytest.mark.core
def test_volume_options(tmp_path):
    v = Spec.from_argv(f"-v {tmp_path}:/data:ro,dev,suid -- true").volumes[0]
    assert (v.read_only, v.dev, v.suid) == (True, True, True)
    v = Spec.from_argv(f"-v {tmp_path}:/data -- true").volumes[0]
    assert (v.read_only, v.dev, v.suid) == (False, False, False)
    with pytest.raises(SpecError, match="both ro and rw"):
        Spec.from_argv(f"-v {tmp_path}:/data:ro,rw -- true")
    with pytest.raises(SpecError, match="OPTIONS from ro, rw, dev, suid"):
        Spec.from_argv(f"-v {tmp_path}:/data:exec -- true")


def _options(sh, args: str, point: str) -> set[str]:
    got = sh(args, "cat /proc/self/mountinfo")
    for line in got.out.splitlines():
        fields = line.split()
        if fields[4] == point:
            return set(fields[5].split(","))
    raise AssertionError(f"{point} is not mounted: {got}")


@pytest.mark.kernel
@needs_root
def test_a_volume_asked_for_dev_and_suid_keeps_them(sh, tmp_path):
    assert {"nodev", "nosuid"} <= _options(sh, f"-v {tmp_path}:/v", "/v")
    assert not {"nodev", "nosuid"} & _options(sh, f"-v {tmp_path}:/v:dev,suid", "/v")


@pytest.mark.kernel
@needs_root
def test_host_secrets_hidden_unless_asked(sh):
    if not os.path.exists("/etc/shadow"):
        pytest.skip("this host has no /etc/shadow")
    assert sh("", "test -e /etc/shadow && echo THERE; true").out == ""
    assert sh("--host-secrets", "test -r /etc/shadow && echo THERE").out == "THERE\n"


@pytest.mark.kernel
@needs_root
def test_info_names_the_hidden_paths():
    from nsmagic.info import gather, report
    from nsmagic.rootfs.secrets import scan
    info = gather()
    assert info["hidden"] == list(scan())
    if info["hidden"]:
        assert f"{len(info['hidden'])} paths hidden" in report(info)


@pytest.mark.kernel
@needs_root
def test_a_root_without_etc_gets_one_for_its_identity_files(sh, busybox_root, tmp_path):
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", busybox_root, str(root)], check=True)
    subprocess.run(["rm", "-rf", str(root / "etc")], check=True)
    got = sh(f"--rootfs {root} -h bare", "cat /etc/hostname")
    assert got.out == "bare\n" and not (root / "etc").exists(), got


REMOUNT_CHILD = r"""
import os, sys
from nsmagic.inside import linux
from nsmagic.inside.root import remount_tree
top, sub = sys.argv[1], sys.argv[1] + "/sub"
linux.unshare(linux.CLONE_NEWNS)
linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
linux.mount("tmpfs", top, "tmpfs", 0, "size=1m")
os.mkdir(sub)
linux.mount("tmpfs", sub, "tmpfs", 0, "size=1m")
remount_tree(top, linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV)
for where in (top, sub):
    try:
        open(where + "/probe", "w")
        print("WROTE", where)
    except OSError as err:
        print(os.strerror(err.errno))
"""


@pytest.mark.kernel
@needs_root
def test_the_fallback_without_mount_setattr_remounts_every_submount(tmp_path):
    """Kernels before 5.12 have no mount_setattr: each mount under a read-only volume is
    remounted read-only one by one (here run for real, in a mount namespace of its own)."""
    done = subprocess.run([sys.executable, "-c", REMOUNT_CHILD, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert done.stdout.splitlines() == [os.strerror(errno.EROFS)] * 2, done


@pytest.mark.core
def test_the_secrets_list_is_kept_for_the_next_process_until_a_directory_changes(
        tmp_path, monkeypatch):
    """A cold `nsmagic run` reads the list the last process kept (no 6 ms scan of /etc),
    unless a directory it walked changed since: a new secret file is always seen."""
    from nsmagic import kept
    from nsmagic.rootfs import secrets
    etc, private = tmp_path / "etc", tmp_path / "run"
    (etc / "ssl" / "private").mkdir(parents=True)
    (etc / "ssl" / "private").chmod(0o700)
    (etc / "shadow").write_text("x")
    (etc / "shadow").chmod(0o640)
    (etc / "hosts").write_text("x")
    private.mkdir(mode=0o700)
    monkeypatch.setattr(secrets, "SCANNED", (str(etc),))
    monkeypatch.setattr(kept, "directory", lambda: str(private))

    def fresh_process():
        monkeypatch.setattr(secrets, "_cached", None)
        return secrets.hidden()

    first = fresh_process()
    assert first == (str(etc / "shadow"), str(etc / "ssl" / "private"))
    scans = []
    monkeypatch.setattr(secrets, "_walk", lambda real=secrets._walk: scans.append(1) or real())
    assert fresh_process() == first and scans == []          # read back, no scan
    (etc / "gshadow").write_text("x")
    (etc / "gshadow").chmod(0o600)
    assert str(etc / "gshadow") in fresh_process() and scans == [1]
