"""Images in the store, and runs on them: built-ins, layers stacked as overlay lower layers
(whiteouts and opaque directories applied), and the config (Entrypoint, Cmd, Env,
WorkingDir, User) applied as Docker applies it."""

from __future__ import annotations

import os

import pytest
from conftest import needs_root
from imagehelp import layered, nsmagic

from nsmagic.errors import NsmagicError
from nsmagic.images import builtin, catalog, compose
from nsmagic.images.store import Store

# --- store and built-ins (core)


@pytest.mark.core
def test_store_is_an_oci_layout_only_its_owner_enters(store):
    assert os.stat(store.root).st_mode & 0o777 == 0o700
    image = catalog.find("hello-world", store)
    assert open(store.path("oci-layout")).read().count("1.0.0") == 1
    entry, = store.entries()
    assert entry.digest == image.manifest_digest
    assert entry.annotations["org.opencontainers.image.ref.name"] == "latest"
    assert entry.annotations["io.nsmagic.image.name"] == "hello-world:latest"


@pytest.mark.core
def test_hello_world_is_reproducible(store, tmp_path):
    first = catalog.find("hello-world", store).id
    other = Store(str(tmp_path / "other")).ensure()
    assert catalog.find("hello-world:latest", other).id == first
    assert catalog.find(first[7:19], store).id == first    # a short id finds it


@pytest.mark.core
def test_hello_elf_for_both_architectures():
    for machine, e_machine in (("x86_64", 62), ("aarch64", 183)):
        elf = builtin.hello_elf(machine)
        assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == e_machine
        assert builtin.HELLO.strip().encode() in elf


@pytest.mark.core
@pytest.mark.parametrize("name,said", [
    ("nope", "there is no image nope:latest on this machine"),
    ("Bad Name", "is not a valid image name"),
    ("scratch", "scratch is the empty image"),
    ("busybox:1.0", "there is no image busybox:1.0"),
])
def test_image_errors_are_one_sentence(store, name, said):
    with pytest.raises(NsmagicError, match=said):
        catalog.find(name, store)


@pytest.mark.core
def test_layer_unpacked_once_and_shared(store):
    image = catalog.find("busybox", store)
    tree = store.layer_tree(image.diff_ids[0], image.layers[0])
    inode = os.stat(tree).st_ino
    copy = compose.write_image(store, "copy", [], {"Cmd": ["sh"]}, base_image=image)
    assert copy.diff_ids == image.diff_ids
    assert os.stat(store.layer_tree(copy.diff_ids[0], copy.layers[0])).st_ino == inode
    assert len(os.listdir(store.path("layers"))) == 1


@pytest.mark.core
def test_corrupt_layer_refused_by_diff_id(store):
    good = compose.tar_of([("f", "file", 0o644, b"good")])
    bad = compose.tar_of([("f", "file", 0o644, b"evil")])
    layer = compose.layer_from_bytes(store, bad, "x")
    forged = compose.NewLayer(layer.blob, "sha256:" + __import__("hashlib").sha256(
        good).hexdigest(), "x")
    image = compose.write_image(store, "forged", [forged], {"Cmd": ["/f"]})
    with pytest.raises(NsmagicError, match="does not match its diff_id"):
        store.layer_tree(image.diff_ids[0], image.layers[0])
    assert os.listdir(store.path("layers")) == [] and os.listdir(store.path("tmp")) == []


# --- runs on images (kernel)


@needs_root
@pytest.mark.kernel
def test_hello_world_cli(store, no_leaks):
    done = nsmagic("run", "hello-world")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Hello from nsmagic!")
    assert "write and exit" in done.stdout


@needs_root
@pytest.mark.kernel
def test_layers_stacked_with_whiteouts(store, no_leaks):
    name = layered(store)
    done = nsmagic("run", "-u", "0", "--entrypoint", "", name, "sh", "-c",
                   "cat /data/b; ls /data; ls /keep; test -e /data/a || echo a-gone; "
                   "echo w > /data/w; cat /data/w")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["b2", "b", "new", "a-gone", "w"]
    lower = store.layer_tree(catalog.find(name, store).diff_ids[1])
    assert open(os.path.join(lower, "data/a")).read() == "a1\n"   # still in its layer
    assert not os.path.exists(os.path.join(lower, "data/w"))        # the run wrote above


@needs_root
@pytest.mark.kernel
@pytest.mark.parametrize("options,command,expected", [
    ((), (), "default from the image in /work 65534"),
    ((), ("echo given $GREETING",), "given from the image 65534"),
    (("-e", "GREETING=from -e", "-w", "/tmp", "-u", "0"), (), "default from -e in /tmp 0"),
])
def test_config_applied_as_docker(store, no_leaks, options, command, expected):
    name = layered(store)
    done = nsmagic("run", *options, name, *command)
    assert done.returncode == 0, done.stderr
    uid = nsmagic("run", *options, "--entrypoint", "/bin/id", name, "-u")
    assert f"{done.stdout.strip()} {uid.stdout.strip()}" == expected


@needs_root
@pytest.mark.kernel
def test_default_image_still_host_and_bad_image_one_line(store, no_leaks):
    assert nsmagic("run", "--", "sh", "-c", "test -d /usr/lib && echo host").stdout == "host\n"
    assert nsmagic("run", "host", "sh", "-c", "echo host").stdout == "host\n"
    done = nsmagic("run", "no-such-image", "true")
    assert done.returncode == 125
    assert done.stderr.strip().splitlines() == [
        "nsmagic: there is no image no-such-image:latest on this machine; `nsmagic images` "
        "lists what there is (hello-world and busybox are made here on first use; load "
        "another with nsmagic load -i FILE)."]


@needs_root
@pytest.mark.kernel
def test_image_python_cell_and_missing_python(store, no_leaks):
    from conftest import run_spec
    got = run_spec(["--image", "busybox"], script="print('hi')")
    assert got.result.exit_code == 127
    assert "python3: not found in the container" in got.result.error
    got = run_spec(["--image", "busybox", "sh"], script="echo from sh; ls /bin/busybox")
    assert got.out == "from sh\n/bin/busybox\n"
