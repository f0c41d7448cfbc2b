"""Option parsing and validation: every value a user can get wrong gets one clear sentence."""

import os

import pytest

from nsmagic.errors import SpecError
from nsmagic.spec import Spec, format_size, parse_size

pytestmark = pytest.mark.core


@pytest.mark.parametrize("text,expected", [
    ("100M", 100 << 20), ("1.5G", 3 << 29), ("512Ki", 512 << 10), ("4096", 4096),
    ("64m", 64 << 20), ("2GiB", 2 << 30), ("1k", 1024),
])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("argv,words", [
    ("--mem banana", ["--mem", "banana", "64M"]),
    ("--mem 0", ["--mem", "zero"]),
    ("--cpus -1", ["--cpus", "below 0.01"]),
    ("--cpus 0.001", ["--cpus", "below 0.01"]),
    ("--cpus nan", ["--cpus", "not a number"]),
    ("--mem 5M", ["--mem", "below 6 MiB", "6M"]),
    ("--mem 1k", ["--mem", "below 6 MiB"]),
    ("--mem 1024T", ["--mem", "more than", "memory this machine has"]),
    ("--pids -3", ["--pids", "at least 1"]),
    ("--blkio-weight 5", ["--blkio-weight", "between 10 and 1000"]),
    ("--blkio-weight 1001", ["--blkio-weight", "between 10 and 1000"]),
    ("--blkio-weight heavy", ["--blkio-weight", "whole number"]),
    ("--device-write-bps /dev/null:1mb", ["--device-write-bps", "/dev/null",
                                          "not a block device"]),
    ("--device-read-bps /no/such/disk:1mb", ["--device-read-bps", "no such file"]),
    ("--device-read-bps /dev/sda", ["--device-read-bps", "DEVICE:RATE"]),
    ("--device-write-iops :100", ["--device-write-iops", "DEVICE:RATE"]),
    ("--cpus x", ["--cpus", "not a number"]),
    ("--cpus 999", ["--cpus", "cores"]),
    ("--pids 0", ["--pids", "at least 1"]),
    ("--pids many", ["--pids", "whole number"]),
    ("--rootfs /no/such/dir", ["--rootfs", "no such directory"]),
    ("-v /no/such/src:/data", ["/no/such/src", "does not exist"]),
    ("-v /tmp:relative", ["must be absolute"]),
    ("-v /tmp", ["SRC:DST"]),
    ("-e 1BAD=x", ["not a variable name"]),
    ("--network bridge2", ["--network", "none, host"]),
    ("--hostname bad_name!", ["--hostname", "not a valid host name"]),
    ("-w relative/dir", ["-w", "absolute"]),
    ("--timeout 0", ["--timeout", "more than 0"]),
    ("--timeout soon", ["--timeout", "soon"]),
    ("--user root", ["--user", "UID[:GID]"]),
    ("--frobnicate", ["unrecognized", "--frobnicate", "--help"]),
])
def test_bad_values_give_one_clear_sentence(argv, words):
    with pytest.raises(SpecError) as info:
        Spec.from_argv(argv)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert "\n" not in message and "Traceback" not in message


def _a_disk() -> str:
    """A whole disk's node (the kernel limits whole disks), or skip."""
    for name in sorted(os.listdir("/sys/block")):
        if os.path.exists(f"/dev/{name}"):
            return f"/dev/{name}"
    pytest.skip("no block device node under /dev on this machine")


@pytest.mark.parametrize("flag,rate,words", [
    ("--device-write-bps", "fast", ["not a size"]),
    ("--device-write-bps", "0", ["zero"]),
    ("--device-write-iops", "many", ["whole number"]),
    ("--device-read-iops", "0", ["at least 1"]),
])
def test_bad_device_rates_give_one_sentence(flag, rate, words):
    disk = _a_disk()
    with pytest.raises(SpecError) as info:
        Spec.from_argv([flag, f"{disk}:{rate}"])
    assert flag in str(info.value) and "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_device_rates_become_one_limit_per_device():
    """Docker's units (kb, mb, gb: powers of 1024) and the device's major:minor."""
    from nsmagic.cgroups import DeviceLimit, Limits
    disk = _a_disk()
    rdev = os.stat(disk).st_rdev
    spec = Spec.from_argv(["--device-write-bps", f"{disk}:1mb", "--device-read-bps",
                           f"{disk}:512kb", "--device-write-iops", f"{disk}:100",
                           "--blkio-weight", "300", "--", "true"])
    assert spec.device_write_bps[0].value == 1 << 20 and spec.device_read_bps[0].value == 512 << 10
    limits = Limits.of(spec)
    assert limits.io == (DeviceLimit(os.major(rdev), os.minor(rdev), read_bps=512 << 10,
                                     write_bps=1 << 20, write_iops=100),)
    assert limits.io_weight == 300 and limits.any


def test_a_partition_is_refused_with_its_disk_named():
    partitions = [p for p in os.listdir("/sys/class/block")
                  if os.path.exists(f"/sys/class/block/{p}/partition") and
                  os.path.exists(f"/dev/{p}")]
    if not partitions:
        pytest.skip("no partition on this machine")
    with pytest.raises(SpecError) as info:
        Spec.from_argv(["--device-read-bps", f"/dev/{partitions[0]}:1mb"])
    assert "partition" in str(info.value) and "give its disk, /dev/" in str(info.value)


def test_limits_in_range_pass():
    from nsmagic.spec import host_memory
    spec = Spec.from_argv(["--mem", "6M", "--cpus", "0.01", "--pids", "1"])
    assert spec.memory == 6 << 20 and spec.cpus == 0.01 and spec.pids == 1
    top = Spec.from_argv(["--mem", str(host_memory()), "--cpus", str(os.cpu_count())])
    assert top.memory == host_memory()


def test_good_options_round_trip(tmp_path):
    spec = Spec.from_argv(f"-m 64M --cpus 0.5 --pids 32 --hostname box -v {tmp_path}:/data:ro "
                          "-e A=1 -w /tmp --read-only --user 1000:100 --timeout 5 -- sh -c 'x'")
    assert spec.memory == 64 << 20 and spec.cpus == 0.5 and spec.pids == 32
    assert spec.hostname == "box" and spec.volumes[0].read_only
    assert spec.volumes[0].target == "/data"
    assert spec.env == (("A", "1"),) and spec.workdir == "/tmp" and spec.read_only
    assert spec.user == (1000, 100) and spec.timeout == 5
    assert spec.command == ("sh", "-c", "x")


def test_env_without_value_passes_the_host_value(monkeypatch):
    monkeypatch.setenv("NSMAGIC_TEST_VALUE", "from-host")
    assert Spec.from_argv("-e NSMAGIC_TEST_VALUE").env == (("NSMAGIC_TEST_VALUE", "from-host"),)


def test_no_command_means_a_python_cell():
    spec = Spec.from_argv("--mem 100M", script="print(1)")
    assert spec.is_python_cell and spec.script == "print(1)"


def test_format_size():
    assert format_size(100 << 20) == "100.0 MiB" and format_size(None) == "-"
    assert format_size(512) == "512 B"


def test_cgroup_layout_parsing(tmp_path):
    """The layout reader on the three layouts' /proc files (the VM tier runs them for real)."""
    from nsmagic.cgroups.layout import detect
    mi = tmp_path / "mountinfo"
    cg = tmp_path / "cgroup"
    mi.write_text("30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    cg.write_text("0::/user.slice/u.scope\n")
    layout = detect(str(mi), str(cg))
    assert layout.kind == "v2" and layout.v2_dir() == "/sys/fs/cgroup/user.slice/u.scope"
    mi.write_text("31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
                  "32 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    cg.write_text("4:memory:/a/b\n0::/\n")
    layout = detect(str(mi), str(cg))
    assert layout.kind == "hybrid" and layout.v1_dir("memory") == "/sys/fs/cgroup/memory/a/b"
    mi.write_text("31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    cg.write_text("4:memory:/\n")
    assert detect(str(mi), str(cg)).kind == "v1"


def test_every_v1_hierarchy_is_found(tmp_path):
    """A run has a group in each (its cgroup namespace is rooted there); mount options that
    name no controller are no hierarchy."""
    from nsmagic.cgroups.layout import detect
    mi, cg = tmp_path / "mountinfo", tmp_path / "cgroup"
    mi.write_text(
        "31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "32 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "33 25 0:29 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,clone_children,cpuset\n"
        "34 25 0:30 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
        "35 25 0:31 / /sys/fs/cgroup/net_cls,net_prio rw - cgroup cgroup rw,net_cls,net_prio\n"
        "36 25 0:32 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n")
    cg.write_text("5:net_cls,net_prio:/\n4:name=systemd:/x\n3:cpuset:/\n2:cpu,cpuacct:/a\n"
                  "1:memory:/b\n0::/x\n")
    layout = detect(str(mi), str(cg))
    assert set(layout.v1_mounts) == {"memory", "cpu", "cpuacct", "cpuset", "name=systemd",
                                     "net_cls", "net_prio"}
    assert layout.v1_dir("cpuacct") == "/sys/fs/cgroup/cpu,cpuacct/a"
    assert layout.v1_dir("name=systemd") == "/sys/fs/cgroup/systemd/x"
    assert layout.kind == "hybrid"


def test_owner_pid_of_group_names():
    from nsmagic.cgroups import owner_pid
    assert owner_pid("nsmagic-123-abcdef") == 123
    assert owner_pid("nsmagic-leaf") is None       # a delegated group's own processes
    assert owner_pid("nsmagic-x") is None
    assert os.getpid() == owner_pid(f"nsmagic-{os.getpid()}-0")
