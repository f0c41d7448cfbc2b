"""Device nodes: what keeps a node inside from opening a host device. On v1 the devices
cgroup holds Docker's allow-list; on v2 nsmagic attaches no device program, and this file
also checks why none is needed (what `nsmagic info` says under "Devices"): no node can be
made inside, and every mount but /dev's own nodes and devpts is nodev."""

from __future__ import annotations

import errno
import os

import pytest
from conftest import needs_root, run_spec

from nsmagic import cgroups
from nsmagic.cgroups.v1 import DEVICE_RULES
from nsmagic.inside.kernelfs import DEVICES

pytestmark = [pytest.mark.kernel, needs_root, pytest.mark.usefixtures("no_leaks")]

layout = cgroups.detect()
v1_devices = pytest.mark.skipif(layout.kind == "v2" or "devices" not in layout.v1_mounts,
                                reason="no v1 devices controller on this host (pure v2 needs "
                                       "none: see the test below)")


def _a_block_device() -> str:
    for name in sorted(os.listdir("/sys/block")):
        if os.path.exists(f"/dev/{name}"):
            return f"/dev/{name}"
    pytest.skip("no block device node under /dev here")


@v1_devices
def test_the_allow_list_is_dockers_and_is_shown_inside():
    got = run_spec(["--", "cat", "/sys/fs/cgroup/devices/devices.list"])
    assert got.result.exit_code == 0, got
    assert got.out.splitlines() == list(DEVICE_RULES)


@v1_devices
def test_a_group_member_opens_the_listed_devices_and_no_other():
    """A process joined the way PID 1 joins ("0" into each tasks file) opens /dev/null and
    /dev/zero, and is refused a block device and /dev/mem, which the kernel would
    otherwise let root open."""
    refused = [_a_block_device()] + (["/dev/mem"] if os.path.exists("/dev/mem") else [])
    cg = cgroups.open_cgroup("d" + os.urandom(3).hex(), cgroups.Limits())
    cg.create()
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            outcome = []
            for path in cg.join_files():
                with open(path, "w") as f:
                    f.write("0")
            for node in ("/dev/null", "/dev/zero", *refused):
                try:
                    os.close(os.open(node, os.O_RDONLY))
                    outcome.append(f"{node}:opened")
                except OSError as err:
                    outcome.append(f"{node}:{errno.errorcode.get(err.errno, err.errno)}")
            os.write(w, " ".join(outcome).encode())
            os._exit(0)
        os.close(w)
        said = os.read(r, 4096).decode().split()
        os.waitpid(pid, 0)
        os.close(r)
    finally:
        cg.destroy()
    assert said[:2] == ["/dev/null:opened", "/dev/zero:opened"], said
    assert [s.split(":")[1] for s in said[2:]] == ["EPERM"] * len(refused), said


def test_no_device_node_can_be_made_and_only_devs_own_nodes_are_on_dev_mounts():
    """The reason a v2 run needs no device program, checked on any layout: mknod is refused
    (CAP_MKNOD is dropped), and every mount is nodev but /dev's tmpfs (which holds only the
    nodes PID 1 made there), its nodes bound elsewhere (over masked /proc files) and devpts."""
    got = run_spec(["--", "sh", "-c",
                    "mknod /tmp/n b 7 0 2>/dev/null && echo MADE; cat /proc/self/mountinfo"])
    assert got.result.exit_code == 0 and "MADE" not in got.out, got
    mounts = [line.split() for line in got.out.splitlines() if line[:1].isdigit()]
    dev = next(fields[2] for fields in mounts if fields[4] == "/dev")
    devices_allowed = []
    for fields in mounts:
        point, options, fstype = fields[4], fields[5].split(","), fields[fields.index("-") + 1]
        if "nodev" in options or fields[2] == dev or (point, fstype) == ("/dev/pts", "devpts"):
            continue
        devices_allowed.append(f"{point} ({fstype})")
    assert not devices_allowed, f"mounts that let device nodes open: {devices_allowed}"
    # /dev's own nodes: exactly the harmless ones PID 1 made
    listed = run_spec(["--", "sh", "-c", "stat -c '%n|%F|%t|%T' /dev/*"]).out.splitlines()
    nodes = {(name[5:], int(major, 16), int(minor, 16)) for name, kind, major, minor in
             (line.split("|") for line in listed) if "special" in kind}
    assert nodes == set(DEVICES), listed


RESTRICTED_CALLER = r"""
import os, sys
sys.path.insert(0, sys.argv[2])
with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as f:
    f.write("0")
from nsmagic import cgroups
cg = cgroups.open_cgroup("r" + os.urandom(3).hex(), cgroups.Limits())
cg.create()
try:
    print(open(os.path.join(cg.dirs["devices"], "devices.list")).read())
finally:
    cg.destroy()
"""


@v1_devices
def test_a_caller_whose_own_group_lacks_a_listed_device_still_runs(tmp_path):
    """nsmagic inside a container whose devices group has no tun: the run's group cannot be
    granted it (the kernel refuses), so it stays denied and the rest of the list holds."""
    import subprocess
    import sys

    from conftest import REPO
    caller = os.path.join(layout.v1_mounts["devices"], f"nsmagic-test-{os.urandom(3).hex()}")
    os.mkdir(caller)
    try:
        with open(os.path.join(caller, "devices.deny"), "w") as f:
            f.write("c 10:200 rwm")
        done = subprocess.run([sys.executable, "-c", RESTRICTED_CALLER, caller, REPO],
                              capture_output=True, text=True, timeout=60)
    finally:
        os.rmdir(caller)
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("\n")
    assert "c 10:200 rwm" not in listed and "c 1:3 rwm" in listed, done.stdout


def test_info_says_which_guard_holds():
    from nsmagic.info import gather, report
    facts = gather()
    expected = ("no device program is needed" if layout.kind == "v2" else
                "Docker's allow-list" if "devices" in layout.v1_mounts else "no devices cgroup")
    assert expected in facts["devices"], facts["devices"]
    assert "Devices:\n  " + facts["devices"] in report(facts)
