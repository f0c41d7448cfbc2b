"""Block I/O: Docker's --device-{read,write}-{bps,iops} and --blkio-weight as the kernel's
throttles (v1 blkio, v2 io.max/io.weight), and the bytes a run read and wrote, in its Usage,
its result and its plot. The kernel tests write with O_DIRECT to an ext4 on a loop device
made for the test, mounted as a volume (buffered writes reach the disk later, from the
flusher, which v1 does not charge to the run)."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
from conftest import needs_root, run_spec

from nsmagic import cgroups
from nsmagic.cgroups import Usage
from nsmagic.cgroups.v1 import CgroupV1
from nsmagic.cgroups.v2 import CgroupV2
from nsmagic.monitor import MiB, Series
from nsmagic.result import rows
from nsmagic.spec import Spec

layout = cgroups.detect()

# --- core: the counters' formats, the rows, the plot


@pytest.mark.core
def test_v1_service_bytes_are_summed_over_devices(tmp_path):
    (tmp_path / "blkio.throttle.io_service_bytes_recursive").write_text(
        "7:0 Read 4096\n7:0 Write 1048576\n7:0 Sync 1052672\n7:0 Total 1052672\n"
        "8:0 Read 8192\n8:0 Write 0\nTotal 1060864\n")
    usage = CgroupV1.attach("nsmagic-1-x", {"blkio": str(tmp_path)}).usage()
    assert (usage.io_read_bytes, usage.io_write_bytes) == (12288, 1048576)


@pytest.mark.core
def test_v1_falls_back_to_the_flat_counter_on_old_kernels(tmp_path):
    (tmp_path / "blkio.throttle.io_service_bytes").write_text("7:0 Read 10\n7:0 Write 20\n")
    cg = CgroupV1.attach("nsmagic-1-x", {"blkio": str(tmp_path)})
    assert (cg.usage().io_read_bytes, cg.usage().io_write_bytes) == (10, 20)


@pytest.mark.core
def test_v2_io_stat_is_summed_over_devices(tmp_path):
    (tmp_path / "io.stat").write_text(
        "7:0 rbytes=4096 wbytes=2097152 rios=1 wios=32 dbytes=0 dios=0\n"
        "254:0 rbytes=100 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n")
    usage = CgroupV2.attach("nsmagic-1-x", str(tmp_path), layout).usage()
    assert (usage.io_read_bytes, usage.io_write_bytes) == (4196, 2097152)


@pytest.mark.core
def test_the_series_turns_bytes_into_rates():
    s = Series(start=0.0)
    s.add(Usage(time=1.0))
    s.add(Usage(time=1.5, io_write_bytes=MiB, io_read_bytes=MiB // 2))
    assert s.io_write[1:] == pytest.approx([2.0]) and s.io_read[1:] == pytest.approx([1.0])
    assert s.io_seen and s.current()["io_write"] == pytest.approx(2.0)


@pytest.mark.core
def test_the_result_has_a_disk_row_only_when_there_was_io_or_a_limit():
    from nsmagic.result import Result, io_limits
    quiet = Result("x", "n", exit_code=0, io_read_bytes=0, io_write_bytes=0)
    assert "disk I/O" not in [row.label for row in rows(quiet)]
    busy = Result("x", "n", exit_code=0, io_read_bytes=0, io_write_bytes=3 * MiB,
                  io_limits=("write 1.0 MiB/s on /dev/loop3",))
    row = next(row for row in rows(busy) if row.label == "disk I/O")
    assert row.value == "read 0 B, written 3.0 MiB (write 1.0 MiB/s on /dev/loop3)"
    assert "disk read 0 B, written 3.0 MiB" in busy.summary()
    assert io_limits(Spec(blkio_weight=300)) == ("weight 300",)


@pytest.mark.core
def test_the_io_panel_appears_with_the_first_io_and_frames_stay_cheap():
    from nsmagic.display import Plot
    plot = Plot(memory_limit=200 * MiB)
    s, costs = Series(start=0.0), []
    for i in range(1, 81):
        s.add(Usage(time=i * 0.25, memory_current=10 * MiB,
                    io_write_bytes=max(0, i - 40) * MiB // 4))
        begin = time.perf_counter()
        png = plot.render(s)
        costs.append(time.perf_counter() - begin)
        assert (plot.ax_io is not None) == s.io_seen, i
    assert png.startswith(b"\x89PNG") and plot.full_draws <= 5
    costs.sort()
    assert costs[len(costs) // 2] < 0.03, f"median frame {costs[len(costs) // 2] * 1e3:.1f} ms"


@pytest.mark.core
def test_a_run_with_io_limits_has_the_panel_from_the_start():
    from nsmagic.display import Plot
    plot = Plot(io_limits=(None, MiB))
    assert plot.ax_io is not None and plot.ax_io.get_ylim()[1] >= 1.0


# --- kernel: real throttles on a loop device made for the test

def kernel_io(test):
    """Root (loop devices, limits), real kernel, nothing left behind."""
    for mark in (pytest.mark.kernel, needs_root, pytest.mark.usefixtures("no_leaks")):
        test = mark(test)
    return test


def _run(args: list[str], script: str):
    return run_spec([*args, "--", "sh", "-c", script])


@pytest.fixture
def disk():
    """An ext4 on a loop device over a scratch file under /var/tmp (PID 1 covers /tmp):
    (device node, mount point); all of it removed afterwards."""
    if not os.path.exists("/dev/loop-control"):   # a VM guest: the module is in /lib/modules
        subprocess.run(["modprobe", "loop"], capture_output=True)
    scratch = subprocess.run(["mktemp", "-d", "/var/tmp/nsmagic-test-disk-XXXXXX"],
                             capture_output=True, text=True, check=True).stdout.strip()
    backing, mnt = os.path.join(scratch, "fs.img"), os.path.join(scratch, "mnt")
    with open(backing, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", backing], check=True)
    made = subprocess.run(["losetup", "-f", "--show", backing], capture_output=True, text=True)
    if made.returncode != 0:
        subprocess.run(["rm", "-rf", scratch])
        pytest.skip(f"no loop device here: {made.stderr.strip()}")
    node = made.stdout.strip()
    os.mkdir(mnt)
    try:
        subprocess.run(["mount", node, mnt], check=True)
        yield node, mnt
    finally:
        subprocess.run(["umount", mnt], capture_output=True)
        subprocess.run(["losetup", "-d", node], capture_output=True)
        subprocess.run(["rm", "-rf", scratch])


TIMED = "s=$(date +%s%N); {cmd} 2>/dev/null; e=$(date +%s%N); echo ms $(( (e - s) / 1000000 ))"
WRITE = "dd if=/dev/zero of=/data/f bs=64k count={n} oflag=direct"
READ = "dd if=/data/f of=/dev/null bs=64k iflag=direct"


def _ms(got) -> int:
    assert got.result.exit_code == 0, got
    return int(re.search(r"ms (\d+)", got.out).group(1))


def _held(disk, flags: list[str], cmd: str, ideal_ms: int):
    """The run under `flags` takes `ideal_ms` (what the limit allows) within 15 %, plus at
    most what the same command takes unlimited (under emulation dd itself takes seconds)."""
    node, mnt = disk
    free = _ms(_run(["-v", f"{mnt}:/data"], TIMED.format(cmd=cmd)))
    got = _run(["-v", f"{mnt}:/data", *flags], TIMED.format(cmd=cmd))
    assert ideal_ms * 0.85 <= _ms(got) <= ideal_ms * 1.15 + free, (got, f"unlimited: {free} ms")
    return got


@kernel_io
def test_write_bps_holds_a_direct_write_within_15_percent(disk):
    """6 MiB at 2 MiB/s: 3 s (the throttle lets a first slice through at once, so it is a
    little under, never much)."""
    node, _ = disk
    got = _held(disk, ["--device-write-bps", f"{node}:2mb"], WRITE.format(n=96), 3000)
    assert got.result.io_write_bytes >= 6 * MiB, got.result
    assert "write 2.0 MiB/s on " + node in got.result.summary()


@kernel_io
def test_read_bps_and_write_iops_hold(disk):
    node, mnt = disk
    with open(os.path.join(mnt, "f"), "wb") as f:   # on the disk, not dirty in the cache:
        f.write(os.urandom(4 * MiB))                  # a direct read would flush it first
        os.fsync(f.fileno())
    read = _held(disk, ["--device-read-bps", f"{node}:2mb"], READ, 2000)
    assert read.result.io_read_bytes >= 4 * MiB, read.result
    # 40 writes of 64k at 20 a second
    _held(disk, ["--device-write-iops", f"{node}:20"], WRITE.format(n=40), 2000)


@kernel_io
def test_limits_are_in_the_kernels_files_inside(disk):
    node, mnt = disk
    rdev = os.stat(node).st_rdev
    device = f"{os.major(rdev)}:{os.minor(rdev)}"
    got = _run(["--device-write-bps", f"{node}:1mb", "--device-read-iops", f"{node}:300"],
               "cat /sys/fs/cgroup/blkio/blkio.throttle.write_bps_device "
               "/sys/fs/cgroup/blkio/blkio.throttle.read_iops_device 2>/dev/null || "
               "cat /sys/fs/cgroup/io.max")
    assert got.result.exit_code == 0, got
    if layout.kind == "v2":
        line = next(x for x in got.out.splitlines() if x.startswith(device + " "))
        assert "wbps=1048576" in line and "riops=300" in line, got
    else:
        assert got.out.split() == [device, "1048576", device, "300"], got


@kernel_io
def test_blkio_weight_is_written_or_refused_in_one_sentence():
    from nsmagic.errors import NsmagicError
    try:
        got = run_spec(["--blkio-weight", "300", "--", "sh", "-c",
                        "cat /sys/fs/cgroup/blkio/blkio.bfq.weight /sys/fs/cgroup/blkio/"
                        "blkio.weight /sys/fs/cgroup/io.bfq.weight /sys/fs/cgroup/io.weight "
                        "2>/dev/null; true"])
    except NsmagicError as err:      # a kernel without BFQ (nor CFQ, nor iocost)
        assert "--blkio-weight" in str(err) and "\n" not in str(err), err
        return
    assert got.result.exit_code == 0, got
    # BFQ takes 10-1000 as it is; io.weight (1-10000) gets runc's linear map of it
    assert re.search(r"(^|default )300$|default 2930$", got.out.strip(), re.M), got
