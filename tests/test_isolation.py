"""What a container sees: its own process table, host name, network, mounts and root, and
Docker's defaults for /proc, /sys, /dev, capabilities and file descriptors."""

import os

import pytest
from conftest import needs_root

pytestmark = [pytest.mark.kernel, needs_root, pytest.mark.usefixtures("no_leaks")]


def test_pid_1_and_a_private_process_table(sh):
    got = sh("", "echo $$; ps -eo pid,comm")
    assert got.result.exit_code == 0, got
    lines = got.out.split("\n")
    assert lines[0] == "2"     # PID 1 is the init; the workload comes next
    table = [line.split() for line in lines[2:] if line.strip()]
    assert table[0] == ["1", "nsmagic-init"]
    assert len(table) <= 4, got.out   # init, sh, ps: nothing of the host


def test_python_cell_sees_its_own_pid_table(py):
    got = py("", "import os; print(os.getpid()); "
                 "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
    assert got.out.splitlines()[0] == "2", got
    assert got.out.splitlines()[1] == "[1, 2]", got


def test_hostname_is_isolated(sh):
    host = os.uname().nodename
    got = sh("--hostname teaching-box", "hostname; cat /etc/hostname")
    assert got.out.split() == ["teaching-box", "teaching-box"], got
    assert os.uname().nodename == host


def test_default_hostname_is_the_run_id(sh):
    got = sh("", "hostname")
    assert got.out.strip() == got.result.id


def test_network_none_has_only_lo_up(sh):
    got = sh("", "cat /proc/net/dev | tail -n +3 | cut -d: -f1; cat /sys/class/net/lo/operstate")
    names = got.out.split()
    assert names[:-1] == ["lo"], got
    assert names[-1] in ("unknown", "up")


def test_network_host_shares_the_host_devices(sh):
    got = sh("--network host", "ls /sys/class/net")
    assert set(got.out.split()) == set(os.listdir("/sys/class/net"))


def test_writes_to_etc_and_usr_never_reach_the_host(sh):
    got = sh("", "echo container > /etc/nsmagic-test-file && echo x > /usr/nsmagic-test-file "
                 "&& rm -rf /usr/bin/env && cat /etc/nsmagic-test-file && ls /usr/bin/env")
    assert got.out.startswith("container"), got
    assert "No such file" in got.err
    assert not os.path.exists("/etc/nsmagic-test-file")
    assert not os.path.exists("/usr/nsmagic-test-file")
    assert os.path.exists("/usr/bin/env")


def test_a_second_run_starts_clean(sh):
    sh("", "echo once > /etc/nsmagic-clean")
    got = sh("", "cat /etc/nsmagic-clean")
    assert got.result.exit_code != 0 and "No such file" in got.err


def test_user_data_is_not_in_the_default_root(sh, tmp_path):
    (tmp_path / "secret").write_text("x")
    got = sh("", f"ls /root /home; ls {tmp_path} 2>&1; ls /work 2>&1 || true")
    assert "secret" not in got.out
    assert got.result.exit_code == 0


def test_no_host_mounts_at_any_time(sh):
    """The overlay lives in the child's mount namespace only."""
    got = sh("", "cat /proc/self/mountinfo; sleep 0.3")
    assert "overlay" in got.out
    with open("/proc/self/mountinfo") as f:
        assert "/tmp/root" not in f.read()


def test_volumes_read_write_and_read_only(sh, tmp_path):
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "data").write_text("readable")
    got = sh(f"-v {rw}:/out -v {ro}:/in:ro", "cat /in/data; echo made > /out/file; "
                                              "touch /in/nope 2>&1 || echo refused")
    assert "readable" in got.out and "refused" in got.out, got
    assert (rw / "file").read_text() == "made\n"
    assert not (ro / "nope").exists()


def test_read_only_root(sh):
    got = sh("--read-only", "touch /etc/x 2>&1 || echo refused")
    assert "refused" in got.out


def test_workdir_env_and_user(sh):
    got = sh("-w /srv/app -e GREETING=hello --user 1000:1000", "pwd; echo $GREETING; id -u; id -g")
    assert got.out.split() == ["/srv/app", "hello", "1000", "1000"], got


def test_custom_rootfs(sh, busybox_root):
    got = sh(f"--rootfs {busybox_root}", "cat /etc/motd; ls /bin | wc -l; echo w > /etc/motd")
    assert got.out.startswith("busybox image"), got
    with open(os.path.join(busybox_root, "etc", "motd")) as f:
        assert f.read() == "busybox image\n"


def test_python_cell_needs_a_command_on_a_custom_root(py, busybox_root):
    got = py(f"--rootfs {busybox_root}", "print(1)")
    assert got.result.exit_code == 127
    assert "give a command the root has" in got.result.error


# --- Docker's defaults: /proc, /sys, /dev, capabilities, file descriptors

@pytest.mark.parametrize("path", ["/proc/keys", "/proc/timer_list", "/proc/kcore",
                                  "/proc/sched_debug", "/proc/latency_stats"])
def test_proc_files_masked(sh, path):
    if not os.path.exists(path):
        pytest.skip(f"this kernel has no {path} to mask")
    got = sh("", f"wc -c < {path}")
    assert got.out.strip() == "0", got


def test_proc_sys_read_only(sh):
    got = sh("", "echo x > /proc/sys/kernel/domainname 2>/dev/null || echo ro-sys; "
                 "cat /proc/sys/kernel/ostype")
    assert got.out.split() == ["ro-sys", "Linux"], got


def test_sys_and_cgroupfs_read_only_so_release_agent_is_closed(sh):
    """CVE-2022-0492: a writable cgroup v1 release_agent is a way out."""
    got = sh("", "touch /sys/x 2>/dev/null || echo ro-sys; "
                 "for f in /sys/fs/cgroup/*/release_agent; do "
                 "echo /x > $f 2>/dev/null && echo WRITABLE; done; "
                 "mkdir /sys/fs/cgroup/memory/x 2>/dev/null && echo MKDIR; echo done")
    assert "ro-sys" in got.out and "WRITABLE" not in got.out and "MKDIR" not in got.out, got


def test_minimal_dev_and_no_mknod(sh):
    got = sh("", "ls /dev | tr '\\n' ' '; mknod /tmp/sda b 8 0 2>&1 || echo refused; "
                 "echo ok > /dev/null && echo null-works")
    listing = set(got.out.split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm"} <= listing
    assert not any(name.startswith(("sd", "vd", "nvme", "mem", "kmsg")) for name in listing)
    assert "refused" in got.out and "null-works" in got.out


def test_capabilities_reduced_and_no_new_privs(sh):
    got = sh("", "grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status")
    fields = dict(line.split(":\t") for line in got.out.splitlines())
    bounding = int(fields["CapBnd"], 16)
    assert fields["NoNewPrivs"].strip() == "1"
    SYS_ADMIN, SYS_PTRACE, SYS_MODULE, MKNOD, NET_ADMIN = 21, 19, 16, 27, 12
    for cap in (SYS_ADMIN, SYS_PTRACE, SYS_MODULE, MKNOD, NET_ADMIN):
        assert not bounding & (1 << cap), f"capability {cap} kept: {fields}"
    assert bounding & (1 << 0)   # CAP_CHOWN stays, as in Docker


def test_only_three_file_descriptors_reach_the_workload(py):
    got = py("", "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))")
    # the listing itself opens one directory fd
    assert got.out.strip() in ("[0, 1, 2, 3]",), got


def test_init_is_not_dumpable_so_its_exe_is_closed(sh):
    """CVE-2019-5736: the workload must not reach PID 1's host binary."""
    got = sh("", "cat /proc/1/exe > /dev/null 2>&1 && echo READABLE || echo closed")
    assert "closed" in got.out, got


def test_workdir_is_inside_the_new_root(py):
    got = py("-w /tmp", "import os; print(os.getcwd()); print(os.path.exists('/tmp/root'))")
    assert got.out.split() == ["/tmp", "False"], got
