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
    ("--cpus -1", ["--cpus", "more than 0"]),
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


def test_owner_pid_of_group_names():
    from nsmagic.cgroups import owner_pid
    assert owner_pid("nsmagic-123-abcdef") == 123
    assert owner_pid("nsmagic-leaf") is None       # a delegated group's own processes
    assert owner_pid("nsmagic-x") is None
    assert os.getpid() == owner_pid(f"nsmagic-{os.getpid()}-0")
