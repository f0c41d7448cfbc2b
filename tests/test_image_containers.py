"""Containers that stay (ps -a, diff, commit, logs, rm, prune) and the look inside an
image's layers (added, changed, deleted, wasted bytes)."""

from __future__ import annotations

import os
import re

import pytest
from conftest import needs_root
from imagehelp import layered, nsmagic

from nsmagic.images import catalog, containers, inspection

pytestmark = [pytest.mark.kernel, needs_root]
NAME = re.compile(r"^[a-z]+_[a-z]+$")


def kept(store) -> list:
    return containers.records(store)


def test_image_run_stays_and_can_be_looked_at(store, no_leaks):
    done = nsmagic("run", "busybox", "sh", "-c",
                   "echo out; echo err >&2; echo hi > /etc/motd; rm /bin/vi; mkdir /new")
    assert done.returncode == 0, done.stderr
    record, = kept(store)
    assert NAME.match(record.name) and record.data["State"]["ExitCode"] == 0
    table = nsmagic("ps", "-a").stdout.splitlines()
    assert table[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS",
                                "PORTS", "NAMES"]   # Docker's ps -a (network branch's ps)
    assert "Exited (0) " in table[1] and table[1].endswith(record.name)
    assert nsmagic("diff", record.name).stdout.splitlines() == [
        "C /bin", "D /bin/vi", "C /etc", "A /etc/motd", "A /new"]
    logs = nsmagic("logs", record.name)
    assert (logs.stdout, logs.stderr) == ("out\n", "err\n")
    assert nsmagic("commit", record.id[:12], "changed").returncode == 0
    after = nsmagic("run", "--rm", "changed", "sh", "-c", "cat /etc/motd; test -e /bin/vi")
    assert after.stdout == "hi\n" and after.returncode == 1
    assert len(kept(store)) == 1                       # --rm kept nothing
    assert nsmagic("rm", record.name).stdout == f"{record.name}\n"
    assert kept(store) == [] and os.listdir(store.path("containers")) == []


def test_what_stays_and_what_does_not(store, no_leaks):
    nsmagic("run", "--", "true")                       # the host's directories: --rm
    nsmagic("run", "--rm", "busybox", "true")
    assert kept(store) == []
    nsmagic("run", "--name", "named", "--", "true")    # named: a record, no layer
    assert [r.name for r in kept(store)] == ["named"]
    done = nsmagic("run", "--name", "named", "busybox", "true")
    assert done.returncode == 125
    assert "the name named is in use by container" in done.stderr
    assert "kept no writable layer" in nsmagic("diff", "named").stderr
    nsmagic("run", "busybox", "sh", "-c", "exit 3")
    statuses = [r.status() for r in kept(store)]
    assert statuses[0].startswith("Exited (3)") and statuses[1].startswith("Exited (0)")
    done = nsmagic("container", "prune")
    assert done.stdout.splitlines()[-1] == "Deleted 2 container(s)"
    assert "there is no container nope" in nsmagic("rm", "nope").stderr


def test_kept_layer_within_the_storage_limit(store, no_leaks):
    done = nsmagic("run", "--storage-opt", "size=32M", "busybox", "sh", "-c",
                   "dd if=/dev/zero of=/big bs=1M count=64 2>/dev/null; echo done")
    assert done.stdout == "done\n", done.stderr
    record, = kept(store)
    size = os.path.getsize(os.path.join(record.upper, "big"))
    assert 16 << 20 < size <= 32 << 20


def test_the_kept_layer_is_the_containers_as_it_ended(store, tmp_path, no_leaks):
    """The container is hostile to its keeper: a process it left running may not write on
    after the main one exited (Docker stops them all), a sparse file the tmpfs held in no
    blocks stays a hole on the store's disk (not 4 GiB), and many hard links stay links
    (the keeper held an fd for each: 1100 of them ran it out of fds, and no layer was kept)."""
    (tmp_path / "vol").mkdir()
    script = ("(sleep 0.5; echo late > /vol/late) & truncate -s 4G /sparse; mkdir /d; "
              "for i in $(seq 1100); do echo $i > /d/f$i; ln /d/f$i /d/g$i; done")
    done = nsmagic("run", "-v", f"{tmp_path}/vol:/vol", "busybox", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    import time
    time.sleep(1)
    assert not (tmp_path / "vol/late").exists(), "a process outlived its container's end"
    record, = kept(store)
    sparse = os.stat(os.path.join(record.upper, "sparse"))
    assert sparse.st_size == 4 << 30 and sparse.st_blocks * 512 < 1 << 20
    linked = os.stat(os.path.join(record.upper, "d/g1100"))
    assert linked.st_nlink == 2 and linked.st_ino == os.stat(
        os.path.join(record.upper, "d/f1100")).st_ino


def test_a_layer_too_deep_for_paths_is_one_sentence(store, no_leaks):
    """The keeper copies by fds, so a container may keep a tree whose paths are longer than
    the kernel takes; diff and commit, which read it by path, say so in one sentence."""
    script = ("d=$(printf 'a%.0s' $(seq 250)); mkdir /deep; cd /deep; "
              "for i in $(seq 17); do mkdir $d; cd $d; done; echo x > f")
    assert nsmagic("run", "busybox", "sh", "-c", script).returncode == 0
    record, = kept(store)
    for argv in (["diff", record.name], ["commit", record.name, "deep"]):
        done = nsmagic(*argv)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
        assert "a path longer than the kernel takes" in done.stderr, done.stderr


def test_layer_views_and_wasted_bytes(store):
    image = catalog.find(layered(store), store)
    views = inspection.layers(store, image)
    assert [v.created_by for v in views] == [views[0].created_by, "RUN one", "RUN two"]
    two = {e.path: e.kind for e in views[2].entries}
    assert two == {"/data": "C", "/data/a": "D", "/data/b": "C", "/keep": "C",
                   "/keep/new": "A"}
    one = {e.path: e.kind for e in views[1].entries}
    assert one["/data/a"] == "A" and one["/work"] == "A"
    # layer one's /data/a (3 bytes), /data/b (3) and /keep/old (4) are hidden by layer two
    assert [v.wasted for v in views] == [0, 10, 0]


def test_magic_cell_stays_only_when_named(store, ipython, no_leaks):
    ip = ipython
    ip.run_cell_magic("container", "--image busybox --no-plot sh", "echo plain")
    assert kept(store) == []
    ip.run_cell_magic("container", "--image busybox --no-plot --name cell sh",
                      "echo kept > /kept")
    record, = kept(store)
    assert record.name == "cell" and open(os.path.join(record.upper, "kept")).read() == \
        "kept\n"


def test_layer_stack_drawn_and_listed(store, no_leaks):
    from nsmagic.images import draw
    name = layered(store)
    image = catalog.find(name, store)
    fig = draw.layer_stack(store, image)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[2] == "1: RUN one" and texts[-1].startswith("thin writable layer")
    assert len(fig.axes[0].patches) == 4                  # 3 layers and the writable one
    table = nsmagic("image", "layers", name).stdout.splitlines()
    assert table[0].split() == ["LAYER", "SIZE", "WASTED", "ENTRIES", "CREATED", "BY"]
    assert table[2].split()[:3] == ["1", "10B", "10B"]
    one = nsmagic("image", "layers", name, "2").stdout
    assert "1 added, 3 changed, 1 deleted" in one and "D   /data/a" in one
