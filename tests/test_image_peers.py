"""Images across tools, both ways, with the real ones (Debian's docker.io, skopeo, umoci):
each test is skipped, with the reason, when its tool cannot start here."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import peers
import pytest
from conftest import needs_root
from imagehelp import layered, nsmagic

from nsmagic.images import catalog

pytestmark = [pytest.mark.kernel, needs_root]


@pytest.fixture(scope="module")
def docker():
    try:
        with peers.docker_daemon() as argv:
            yield argv
    except peers.PeerUnavailable as why:
        pytest.skip(str(why))


def tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed: apt-get install {name} "
                    "(tests/install-deps installs it)")
    return path


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, **kw)


def test_docker_save_then_nsmagic_load_and_run(store, docker, tmp_path):
    image = peers.busybox_image(docker)
    archive = str(tmp_path / "docker.tar")
    assert run([*docker, "save", "-o", archive, image]).returncode == 0
    theirs = run(peers.run_argv(docker, image, "sh", "-c", "ls /bin | wc -l; cat /etc/hostname"
                                " | wc -c"))
    done = nsmagic("load", "-i", archive)
    assert done.stdout == f"Loaded image: {image}:latest\n", done.stderr
    ours = nsmagic("run", image, "sh", "-c", "ls /bin | wc -l; cat /etc/hostname | wc -c")
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout


def test_nsmagic_save_then_docker_load_and_run(store, docker, tmp_path):
    archive = str(tmp_path / "ours.tar")
    assert nsmagic("save", "-o", archive, "hello-world").returncode == 0
    loaded = run([*docker, "load", "-i", archive])
    assert loaded.stdout.strip() == "Loaded image: hello-world:latest", loaded.stderr
    ids = run([*docker, "image", "inspect", "--format", "{{.Id}}", "hello-world"]).stdout
    assert ids.strip() == catalog.find("hello-world", store).id
    theirs = run(peers.run_argv(docker, "hello-world"))
    assert theirs.returncode == 0, theirs.stderr
    assert theirs.stdout == nsmagic("run", "hello-world").stdout
    run([*docker, "rmi", "hello-world"])


def test_skopeo_both_ways(store, tmp_path):
    skopeo = tool("skopeo")
    ours = str(tmp_path / "ours.tar")
    assert nsmagic("save", "-o", ours, "busybox").returncode == 0
    as_docker = tmp_path / "as-docker.tar"
    copied = run([skopeo, "copy", f"oci-archive:{ours}", f"docker-archive:{as_docker}:sk/box:1"])
    assert copied.returncode == 0, copied.stderr
    as_oci = tmp_path / "as-oci.tar"
    copied = run([skopeo, "copy", f"docker-archive:{ours}", f"oci-archive:{as_oci}:sk/oci:2"])
    assert copied.returncode == 0, copied.stderr
    assert nsmagic("load", "-i", str(as_docker)).stdout == "Loaded image: sk/box:1\n"
    assert nsmagic("load", "-i", str(as_oci)).stdout == "Loaded image: sk/oci:2\n"
    for name in ("sk/box:1", "sk/oci:2"):   # the same image, whichever way it went
        assert catalog.find(name, store).id == catalog.find("busybox", store).id
        assert nsmagic("run", name, "echo", "ok").stdout == "ok\n"


def test_umoci_unpacks_the_same_tree(store, tmp_path):
    """umoci applies the layers (whiteouts, opaque dirs) into one tree; nsmagic stacks them
    as overlay lower layers: what a container sees must be the same."""
    umoci = tool("umoci")
    name = layered(store)
    archive = tmp_path / "layered.tar"
    assert nsmagic("save", "-o", str(archive), name).returncode == 0
    layout = tmp_path / "layout"
    layout.mkdir()
    assert run(["tar", "-C", str(layout), "-xf", str(archive)]).returncode == 0
    unpacked = run([umoci, "unpack", "--image", f"{layout}:latest", str(tmp_path / "bundle")])
    assert unpacked.returncode == 0, unpacked.stderr
    theirs = tree(str(tmp_path / "bundle/rootfs"))
    ours = merged_tree(store, name, tmp_path)
    assert ours == theirs


def tree(root: str) -> dict:
    """path -> (type, mode, uid, gid, link or content) for everything under root."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            path = os.path.join(dirpath, entry)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    what = f.read()
            else:
                what = None
            found[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), st.st_mode & 0o7777,
                                                  st.st_uid, st.st_gid, what)
    return found


def merged_tree(store, name: str, tmp_path) -> dict:
    """The image's layers as overlay shows them: mounted read-only in a mount namespace
    of a child (nothing in this process's view), walked there."""
    image = catalog.find(name, store)
    lower = ":".join(store.layer_tree(d, b) for d, b in reversed(list(zip(image.diff_ids,
                                                                            image.layers))))
    mnt = tmp_path / "merged"
    mnt.mkdir()
    script = (f"import sys, json; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
              "from test_image_peers import tree; "
              f"print(repr(tree({str(mnt)!r})))")
    done = run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                f"mount -t overlay -o ro,lowerdir={lower} overlay {mnt} && "
                f"exec {os.sys.executable} -c \"{script}\""])
    assert done.returncode == 0, done.stderr
    import ast
    return ast.literal_eval(done.stdout)
