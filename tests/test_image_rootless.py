"""Images as an unprivileged user: a store of the user's own (its files owned by the user,
so the container's root, mapped to the user, can write anywhere in its image), owners of
other ids squashed with a notice, a kept writable layer with its whiteouts, a build."""

import io
import os
import subprocess
import tarfile

import pytest

from nsmagic.images import compose
from nsmagic.images.archive import save
from nsmagic.images.store import Store

pytestmark = [pytest.mark.unprivileged,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to a user")]

NOBODY = 65534
PYTHON = "/usr/bin/python3"


@pytest.fixture
def user_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    for d in [tmp_path, *tmp_path.parents]:
        if str(d) in ("/", "/tmp"):
            break
        os.chmod(d, 0o755)
    return home


def as_user(package, home, *args, stdin=None):
    return subprocess.run([PYTHON, "-m", "nsmagic", *args], input=stdin, capture_output=True,
                          text=True, timeout=120, user=NOBODY, group=NOBODY, extra_groups=[],
                          cwd="/", env={"PYTHONPATH": package, "PATH": "/usr/bin:/bin",
                                        "HOME": str(home)})


def test_store_is_the_users_and_root_inside_writes_anywhere(nobody_checkout, user_home):
    done = as_user(nobody_checkout, user_home, "run", "busybox", "sh", "-c",
                   "id -u; echo added > /bin/new; echo more >> /etc/passwd; rm /bin/vi")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "0\n"
    store = user_home / ".local/share/nsmagic"
    assert os.stat(store).st_uid == NOBODY and os.stat(store).st_mode & 0o777 == 0o700
    layer, = (store / "layers").iterdir()
    assert os.stat(layer / "tree/bin/busybox").st_uid == NOBODY
    name = as_user(nobody_checkout, user_home, "ps", "-a").stdout.splitlines()[1].split()[-1]
    diff = as_user(nobody_checkout, user_home, "diff", name).stdout.splitlines()
    assert diff == ["C /bin", "A /bin/new", "D /bin/vi", "C /etc", "C /etc/passwd"]


def test_other_owners_squashed_with_a_notice(nobody_checkout, user_home, tmp_path):
    root_store = Store(str(tmp_path / "root-store")).ensure()
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        info = tarfile.TarInfo("owned")
        info.uid = info.gid = 1000
        info.size = 3
        t.addfile(info, io.BytesIO(b"hi\n"))
    layer = compose.layer_from_bytes(root_store, tar.getvalue(), "ADD owned")
    compose.write_image(root_store, "owned", [layer], {"Cmd": ["/owned"]})
    archive = tmp_path / "owned.tar"
    with open(archive, "wb") as out:
        save(["owned"], out, root_store)
    os.chmod(archive, 0o644)
    done = as_user(nobody_checkout, user_home, "load", "-i", str(archive))
    assert done.returncode == 0, done.stderr
    assert "1 file owner(s) were squashed to you" in done.stderr


def test_build_as_a_user(nobody_checkout, user_home, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN mkdir /d && echo x > /d/f && "
                                    "rm /bin/vi\nCMD [\"cat\", \"/d/f\"]\n")
    os.chmod(ctx, 0o755)
    os.chmod(ctx / "Dockerfile", 0o644)
    done = as_user(nobody_checkout, user_home, "build", "-t", "mine", str(ctx))
    assert done.returncode == 0, done.stderr
    assert as_user(nobody_checkout, user_home, "run", "--rm", "mine").stdout == "x\n"


def test_host_image_etc_writable_for_a_user(nobody_checkout, user_home):
    """The default root's /etc, for a user, is a copy the user owns: writable inside, the
    host's untouched, the host's secrets (unreadable to the user) not in it."""
    before = open("/etc/hostname").read()
    done = as_user(nobody_checkout, user_home, "run", "--", "sh", "-c",
                   "echo changed > /etc/hostname.test && cat /etc/hostname.test; "
                   "echo x >> /etc/passwd && echo appended; test -e /etc/shadow || echo no-shadow")
    assert done.stdout.split() == ["changed", "appended", "no-shadow"], done.stderr
    assert open("/etc/hostname").read() == before and not os.path.exists("/etc/hostname.test")
    copy, = (user_home / ".local/share/nsmagic/host").iterdir()
    assert os.stat(copy / "passwd").st_uid == NOBODY
