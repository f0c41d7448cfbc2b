"""Bridged networks (issue 14, part 1): an address from the network's subnet on eth0, set up
before the workload starts; a default route through the bridge; outbound NAT to an
"outside" the test makes behind the host; and nothing left after: no veth, no bridge while
unused, no rule, no lease, no namespace held open. Traffic goes only to loopback and to
namespaces the tests made."""

import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, needs_root, run_spec
from leaks import network_leftovers
from outside import OUTSIDE_HOST, OUTSIDE_PEER

from nsmagic.core import settle
from nsmagic.net import ipam, networks

pytestmark = [pytest.mark.kernel, needs_root]


def sh(options: str, script: str):
    return run_spec(f"{options} -- sh -c {_quote(script)}")


def _quote(text: str) -> str:
    import shlex
    return shlex.quote(text)


def test_a_bridged_run_has_its_address_and_route_before_its_first_instruction(no_leaks):
    """The workload's first command already sees eth0 up with its address and the default
    route: PID 1 waited for the runner's word that the helper had set them up."""
    done = sh("--network bridge", "ip -4 -o addr show eth0; ip route; cat /etc/hosts")
    assert done.result.exit_code == 0, done
    network = networks.get("bridge")
    address = done.out.split("inet ")[1].split("/")[0]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(network.subnet)
    assert f"default via {network.gateway} dev eth0" in done.out
    assert f"{address}\t{done.result.name} {done.result.id}" in done.out   # its own name
    assert "state UP" in sh("--network bridge", "ip -o link show eth0").out


def test_two_bridged_containers_reach_each_other_and_the_gateway(no_leaks):
    server = "import http.server as h; h.HTTPServer(('', 8000), h.SimpleHTTPRequestHandler)" \
             ".serve_forever()"
    from nsmagic.core import start
    from nsmagic.spec import Spec
    web = start(Spec.from_argv(["--network", "bridge", "-w", "/etc", "--", "python3", "-c",
                                server]))
    try:
        ip = web.network["ip"]
        done = sh("--network bridge", f"for i in $(seq 50); do wget -q -O - "
                  f"http://{ip}:8000/hostname && exit 0; sleep 0.1; done; exit 1")
        assert done.result.exit_code == 0, done
        assert done.out.strip() == web.hostname   # the server's own /etc/hostname
    finally:
        web.stop()
        web.wait()
        web.close()


def test_outbound_traffic_leaves_as_the_host(outside_world, no_leaks):
    """Masquerade: the outside sees the host's address, never the container's (it has no
    route back to the container's subnet)."""
    client = ("import socket; s = socket.create_connection(('%s', 9000), timeout=5); "
              "print(s.recv(64).decode())" % outside_world)
    done = run_spec(["--network", "bridge", "--", "python3", "-c", client])
    assert done.result.exit_code == 0, done
    assert done.out.strip() == OUTSIDE_HOST


def test_none_reaches_nothing_not_even_the_hosts_loopback(outside_world, no_leaks):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    probe = ("import socket, sys\nfor host in sys.argv[1:]:\n    try:\n"
             "        socket.create_connection((host, %d), timeout=2)\n"
             "        print(host, 'reached')\n    except OSError as e:\n"
             "        print(host, e.errno)" % port)
    try:
        done = run_spec(["--network", "none", "--", "python3", "-c", probe, "127.0.0.1",
                         OUTSIDE_PEER, _host_address()])
    finally:
        listener.close()
    assert done.result.exit_code == 0, done
    assert "reached" not in done.out, done.out
    assert "127.0.0.1 111" in done.out              # its own lo: refused
    assert f"{OUTSIDE_PEER} 101" in done.out        # no route at all: network unreachable


def _host_address() -> str:
    """An address of the host's own (its default route's source), no traffic sent."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                         capture_output=True, text=True).stdout
    return out.split("inet ")[1].split("/")[0] if "inet " in out else "192.0.2.2"


def test_the_runner_never_imports_pyroute2(no_leaks):
    code = ("import sys; sys.path.insert(0, %r); from nsmagic.core import run; "
            "from nsmagic.spec import Spec; "
            "r = run(Spec.from_argv('--network bridge -- true')); "
            "print(r.exit_code, 'pyroute2' in sys.modules)" % REPO)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split() == ["0", "False"], done.stderr


def test_a_sigkilled_runners_network_goes_with_it():
    """The helper watches each PID 1: the runner's death kills PID 1 (PDEATHSIG), and its
    veth, lease, bridge and rules then go without any later run."""
    before = set(network_leftovers(settle=True))
    code = ("import sys; sys.path.insert(0, %r); from nsmagic.core import start; "
            "from nsmagic.spec import Spec; "
            "r = start(Spec.from_argv('--network bridge -p 18099:80 -- sleep 60')); "
            "print(r.network['veth'], flush=True); sys.stdin.read()" % REPO)
    runner = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    veth = runner.stdout.readline().strip()
    assert os.path.exists(f"/sys/class/net/{veth}")
    rules = subprocess.run(["nft", "list", "table", "ip", "nsmagic"], capture_output=True,
                           text=True).stdout
    assert "dport 18099" in rules                  # its DNAT rule is there
    runner.kill()
    runner.wait()
    deadline, left = time.monotonic() + 10, None
    while time.monotonic() < deadline:
        left = set(network_leftovers(settle=True)) - before
        if not left:
            break
        time.sleep(0.1)
    assert not left


# --- IPAM: the lease file


@pytest.fixture
def scratch_network(tmp_path, monkeypatch):
    """A network defined in a scratch store (no device is made for it here)."""
    monkeypatch.setenv("NSMAGIC_STORE", str(tmp_path))
    return networks.create("nsmagic-ipam-test", "10.250.0.0/29")


def _holder(pid: int, run_id: str) -> dict:
    return ipam.holder(run_id, run_id, run_id, pid, "")


@pytest.mark.core
def test_addresses_are_never_handed_out_twice_even_by_racing_processes(scratch_network):
    """Six processes allocate at once from a /29 (five addresses besides the gateway): five
    get distinct addresses, the sixth is told the network is full, in one sentence."""
    code = ("import sys, json; sys.path.insert(0, %r); from nsmagic.net import ipam, "
            "networks\nn = networks.get('nsmagic-ipam-test')\ntry:\n"
            "    with ipam.Leases(n) as l: print(l.allocate(ipam.holder('r', 'r', 'r', "
            "int(sys.argv[1]), '')))\nexcept Exception as e: print('error', e)" % REPO)
    keep = subprocess.Popen(["sleep", "30"])   # a live holder for every lease
    try:
        procs = [subprocess.Popen([sys.executable, "-c", code, str(keep.pid)],
                                  stdout=subprocess.PIPE, text=True, env=os.environ)
                 for _ in range(6)]
        answers = [p.communicate(timeout=30)[0].strip() for p in procs]
        addresses = [a for a in answers if not a.startswith("error")]
        assert len(addresses) == 5 and len(set(addresses)) == 5, answers
        assert scratch_network.gateway not in addresses
        assert [a for a in answers if a.startswith("error")] == [
            "error the network nsmagic-ipam-test (10.250.0.0/29) has no free address left; "
            "stop a container on it, or use a network with a larger subnet."]
    finally:
        keep.kill()
        keep.wait()


@pytest.mark.core
def test_a_dead_holders_lease_is_reclaimed_a_live_ones_is_kept(scratch_network):
    live = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        with ipam.Leases(scratch_network) as leases:
            first = leases.allocate(_holder(live.pid, "live"))
            second = leases.allocate(_holder(dead.pid, "dead"))
        with ipam.Leases(scratch_network) as leases:   # as after a crash: read back
            assert set(leases.live()) == {first} and set(leases.stale()) == {second}
            for _ in range(4):
                leases.allocate(_holder(live.pid, "more"))
            assert second in leases.leases and leases.leases[second]["id"] == "more"
            assert leases.leases[first]["id"] == "live"
    finally:
        live.kill()
        live.wait()


@pytest.mark.core
def test_a_garbled_lease_file_is_one_sentence_not_a_free_for_all(scratch_network):
    with open(os.path.join(scratch_network.directory, "leases.json"), "w") as f:
        f.write("{not json")
    from nsmagic.errors import NsmagicError
    with pytest.raises(NsmagicError, match="lease file .* is garbled"):
        with ipam.Leases(scratch_network):
            pass


def test_hundred_containers_on_one_bridge_start_and_leave_nothing(no_leaks):
    """100 containers started from one runner, all on the bridge at once, each with its own
    address; after they are stopped and removed, no veth, lease, bridge or rule is left."""
    from nsmagic.core import start
    from nsmagic.spec import Spec
    spec = Spec.from_argv(["--network", "bridge", "--", "sleep", "60"])
    runs, t0 = [], time.monotonic()
    try:
        for _ in range(100):
            runs.append(start(spec))
        took = time.monotonic() - t0
        addresses = {r.network["ip"] for r in runs}
        assert len(addresses) == 100
        bridge = networks.get("bridge").bridge
        ports = os.listdir(f"/sys/class/net/{bridge}/brif")
        assert len([p for p in ports if p.startswith("nsm")]) >= 100
    finally:
        for r in runs:
            r.kill_all()
        for r in runs:
            r.wait()
            r.close()
    settle()
    print(f"100 bridged containers started in {took:.2f} s")


def test_threads_attaching_at_once_get_distinct_addresses(no_leaks):
    from nsmagic.core import start
    from nsmagic.spec import Spec
    spec = Spec.from_argv(["--network", "bridge", "--", "sleep", "30"])
    runs, errors = [], []

    def one():
        try:
            runs.append(start(spec))
        except Exception as err:  # noqa: BLE001
            errors.append(err)
    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors
        assert len({r.network["ip"] for r in runs}) == 8
    finally:
        for r in runs:
            r.kill_all()
            r.wait()
            r.close()


def test_leases_are_json_with_their_holder(no_leaks):
    from nsmagic.core import start
    from nsmagic.spec import Spec
    run = start(Spec.from_argv(["--network", "bridge", "--name", "nsmagic-lease-test", "--",
                                "sleep", "30"]))
    try:
        address = run.network["ip"]    # the helper's answer: its lease is written by then
        path = os.path.join(networks.get("bridge").directory, "leases.json")
        with open(path) as f:
            held = json.load(f)["leases"][address]
        assert held["name"] == "nsmagic-lease-test" and held["pid"] == run.pid1.pid
        assert held["veth"] == run.network["veth"]
    finally:
        run.kill_all()
        run.wait()
        run.close()


def test_a_published_port_in_use_is_one_sentence(no_leaks):
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    port = taken.getsockname()[1]
    try:
        done = sh(f"--network bridge -p {port}:80", "echo never")
    finally:
        taken.close()
    assert done.result.exit_code == 125 and done.out == ""
    assert done.result.error == (f"-p {port}:80/tcp: the host's port {port} is in use by "
                                 "another program or container; choose another host port.")


# --- user-defined networks, names, published ports


SERVER = ("import http.server as h, sys; h.HTTPServer(('', 8000), h.SimpleHTTPRequestHandler)"
          ".serve_forever()")
FETCH = ("import sys, time, urllib.request\nfor _ in range(100):\n    try:\n"
         "        print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode().strip())"
         "\n        break\n    except OSError as e:\n        err = e\n        time.sleep(0.05)\n"
         "else:\n    sys.exit(f'unreachable: {err}')")


@pytest.fixture
def user_network():
    name = f"nsmagic-test-{os.getpid()}"
    networks.create(name)
    yield name
    settle()
    networks.remove(name)


def _serve(*options: str, name: str | None = None):
    """A container serving its /etc over HTTP on port 8000 (so /hostname is its name)."""
    from nsmagic.core import start
    from nsmagic.spec import Spec
    argv = [*options, *(["--name", name] if name else []), "-w", "/etc", "--",
            "/usr/bin/python3", "-c", SERVER]
    return start(Spec.from_argv(argv))


def _stop(run) -> None:
    run.kill_all()
    run.wait()
    run.close()


def test_containers_on_a_user_network_reach_each_other_by_name(user_network, no_leaks):
    web = _serve("--network", user_network, "--hostname", "webhost", name="web")
    try:
        done = run_spec(["--network", user_network, "--", "/usr/bin/python3", "-c", FETCH,
                         "http://web:8000/hostname"])
        assert done.result.exit_code == 0, done
        assert done.out.strip() == "webhost"
        by_hostname = run_spec(["--network", user_network, "--", "/usr/bin/python3", "-c",
                                FETCH, "http://webhost:8000/hostname"])
        assert by_hostname.out.strip() == "webhost", by_hostname
    finally:
        _stop(web)


def test_networks_are_kept_apart(user_network, no_leaks):
    """A container on the default bridge cannot reach one on another network (Docker's
    isolation between networks), though both can reach their own."""
    web = _serve("--network", user_network)
    try:
        url = f"http://{web.network['ip']}:8000/hostname"
        probe = ["--", "/usr/bin/python3", "-c", "import socket, sys; socket.create_connection"
                 "((sys.argv[1], 8000), timeout=2)", web.network["ip"]]
        assert run_spec(["--network", "bridge", *probe]).result.exit_code != 0
        assert run_spec(["--network", user_network, "--", "/usr/bin/python3", "-c", FETCH,
                         url]).result.exit_code == 0
    finally:
        _stop(web)


def test_a_published_port_is_reached_from_the_host_and_from_containers(no_leaks):
    """The runner (as a notebook's kernel would) reaches it at 127.0.0.1 and at the host's
    address; another container reaches it through the host's address; the container itself
    through the host's address too (hairpin)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    web = _serve("--network", "bridge", "-p", f"{port}:8000", "--hostname", "published")
    try:
        assert web.network["ports"] == [["", port, 8000, "tcp"]]
        for host in ("127.0.0.1", _host_address()):
            assert _fetch(f"http://{host}:{port}/hostname") == "published"
        other = run_spec(["--network", "bridge", "--", "/usr/bin/python3", "-c", FETCH,
                          f"http://{_host_address()}:{port}/hostname"])
        assert other.out.strip() == "published", other
    finally:
        _stop(web)
    with pytest.raises(OSError):   # gone with its container
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_a_port_published_on_one_address_and_a_port_the_kernel_picks(no_leaks):
    web = _serve("--network", "bridge", "-p", "127.0.0.1::8000", "--hostname", "picked")
    try:
        host_ip, port, _, _ = web.network["ports"][0]
        assert host_ip == "127.0.0.1" and port > 0
        assert _fetch(f"http://127.0.0.1:{port}/hostname") == "picked"
        with pytest.raises(OSError):   # the port is held: no program of the host takes it
            socket.socket().bind(("127.0.0.1", port))
    finally:
        _stop(web)


def _fetch(url: str) -> str:
    import urllib.request
    deadline = time.monotonic() + 10
    while True:
        try:
            return urllib.request.urlopen(url, timeout=2).read().decode().strip()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.core
def test_network_commands_say_one_sentence(tmp_path, monkeypatch):
    from nsmagic.cli import main
    monkeypatch.setenv("NSMAGIC_STORE", str(tmp_path))
    assert main(["network", "create", "--subnet", "10.251.0.0/24", "nsmagic-a"]) == 0
    assert main(["network", "create", "nsmagic-a"]) == 125
    assert main(["network", "create", "--subnet", "10.251.0.0/25", "nsmagic-b"]) == 125
    assert main(["network", "rm", "nosuch"]) == 125
    assert main(["network", "rm", "nsmagic-a"]) == 0
    assert networks.all_networks()[0].name == "bridge"


@pytest.mark.core
@pytest.mark.parametrize("argv, words", [
    ("--network bridge -p 80:8080:80", ["80:8080:80", "IPv4 address"]),
    ("--network bridge -p 70000:80", ["1 to 65535"]),
    ("--network bridge -p 80/sctp", ["tcp or udp"]),
    ("-p 8080:80", ["-p", "--network bridge"]),
    ("--network-rate 1mbit", ["--network-rate", "--network bridge"]),
    ("--network bridge --network-rate fast", ["--network-rate", "size"]),
    ("--network bridge --network-rate 10bit", ["below 1000"]),
    ("--network container:", ["container:NAME"]),
    ("--network nosuchnet", ["nosuchnet", "network create"]),
    ("--network bridge -p 8080:80 -p 8080:81", ["twice"]),
    ("--unconfined --network bridge", ["--unconfined"]),
])
def test_bad_network_options_give_one_sentence(argv, words):
    from nsmagic.errors import SpecError
    from nsmagic.spec import Spec
    with pytest.raises(SpecError) as info:
        Spec.from_argv(argv + " -- true")
    message = str(info.value)
    assert all(w in message for w in words), message
    assert not re.search(r"\. [A-Z]", message) and message.endswith("."), message


@pytest.mark.core
def test_rates_in_bits_and_bytes():
    from nsmagic.net.ports import parse_rate
    assert parse_rate("8mbit") == 1_000_000
    assert parse_rate("1mb") == parse_rate("1M") == 1 << 20


# --- /etc/hosts, /etc/hostname, /etc/resolv.conf for every root


@pytest.mark.parametrize("network", ["none", "bridge"])
@pytest.mark.parametrize("root", ["host", "busybox"])
def test_every_root_gets_its_identity_files(root, network, busybox_root, no_leaks):
    options = ["--network", network, "--hostname", "ident"]
    if root == "busybox":
        options += ["--rootfs", busybox_root]
    done = run_spec([*options, "--", "sh", "-c", "cat /etc/hostname; echo --; cat /etc/hosts;"
                     " echo --; cat /etc/resolv.conf; echo --; hostname"])
    assert done.result.exit_code == 0, done
    hostname, hosts, resolv, live = done.out.split("--\n")
    assert hostname == "ident\n" and live == "ident\n"
    assert "127.0.0.1\tlocalhost" in hosts
    if network == "bridge":   # the network's shared file: its own address under its names
        assert re.search(rf"^10\.123\.\d+\.\d+\t{done.result.name} ident$", hosts, re.M), hosts
    else:
        assert "127.0.1.1\tident" in hosts
    assert not re.search(r"^nameserver (127\.|::1)", resolv, re.M)   # unreachable from here
    with open("/etc/resolv.conf") as f:
        host_servers = [line for line in f if line.startswith("nameserver")
                        and not line.split()[1].startswith("127.")]
    assert all(line in resolv for line in host_servers)


def test_the_shared_hosts_file_is_read_only_inside(user_network, no_leaks):
    done = run_spec(["--network", user_network, "--", "sh", "-c",
                     "echo '10.0.0.1 evil' >> /etc/hosts; echo $?"])
    assert done.out.strip() != "0" and "evil" not in open(
        networks.get(user_network).hosts_file).read()


# --- --network-rate: a token bucket on each end of the veth; traffic in the plot


RECEIVE = """
import socket, time
s = socket.socket(); s.bind(('', 9000)); s.listen(); print('up', flush=True)
c, _ = s.accept(); total, first, skip = 0, None, 0
while True:
    data = c.recv(65536)
    if not data:
        break
    if first is None:
        first, skip = time.monotonic(), len(data)
    total += len(data)
print(total, (total - skip) / (time.monotonic() - first))
c.sendall(b'ok'); c.close()
"""
SEND = """
import socket, sys, time
for _ in range(200):
    try:
        c = socket.create_connection((sys.argv[1], 9000)); break
    except OSError:
        time.sleep(0.05)
c.sendall(b'x' * int(sys.argv[2])); c.shutdown(socket.SHUT_WR)
c.recv(16)   # the receiver has it all: this namespace may go now
"""
RATE, AMOUNT = 1_000_000, 3_000_000    # 8mbit = 1 MB/s; 3 MB take 3 s


@pytest.mark.parametrize("limited", ["receiver", "sender"])
def test_network_rate_holds_traffic_to_the_limit_both_ways(limited, no_leaks):
    """A fixed amount sent between two containers, one of them limited (its way in, or its
    way out): the payload rate is within 10 % of the limit (the limit counts frames, so
    TCP/IP headers take ~4 % of it)."""
    import io

    from nsmagic.core import start
    from nsmagic.runtime.follow import Follower
    from nsmagic.spec import Spec
    rate = ["--network-rate", "8mbit"]
    out = io.BytesIO()
    receiver = start(Spec.from_argv(["--network", "bridge", *rate * (limited == "receiver"),
                                     "--", "python3", "-c", RECEIVE]), out=out, err=out)
    try:
        sent = run_spec(["--network", "bridge", *rate * (limited == "sender"), "--", "python3",
                         "-c", SEND, receiver.network["ip"], str(AMOUNT)])
        assert sent.result.exit_code == 0, sent
        Follower(receiver, out, out).follow()
        receiver.wait()
    finally:
        _stop(receiver)
    lines = out.getvalue().decode().split()
    assert lines[0] == "up" and int(lines[1]) == AMOUNT, lines
    measured = float(lines[2])
    assert abs(measured - RATE) / RATE < 0.10, f"{measured:.0f} B/s against {RATE}"


def test_a_bridged_runs_traffic_is_sampled_and_summed(no_leaks):
    """Received and sent bytes come from the host's end of the veth into every sample, the
    live plot's series and the result."""
    from nsmagic.core import run
    from nsmagic.monitor import Series
    from nsmagic.spec import Spec
    samples = []
    web = _serve("--network", "bridge")
    try:
        fetch = (FETCH + "\nimport time; time.sleep(0.6)").replace("print(", "len(")
        spec = Spec.from_argv(["--network", "bridge", "--network-rate", "4mbit", "--",
                               "python3", "-c", fetch,   # quietly, then a last sample or two
                               f"http://{web.network['ip']}:8000/services"]
                              ).replace(interval=0.1)
        result = run(spec, out=io_sink(), err=io_sink(),
                     on_sample=lambda usage, _run: samples.append(usage))
    finally:
        _stop(web)
    assert result.exit_code == 0
    services = os.path.getsize("/etc/services")
    assert result.net_rx_bytes > services and 0 < result.net_tx_bytes < result.net_rx_bytes
    assert samples[-1].net_rx_bytes > services
    series = Series()
    series.extend(samples)
    assert series.net_seen and max(v for v in series.net_rx if v == v) > 0
    from nsmagic.result import rows
    network = next(row for row in rows(result) if row.label == "network")
    assert "limit 4 Mbit/s each way" in network.value and result.address in network.value


def io_sink():
    import io
    return io.StringIO()


@pytest.mark.core
def test_the_plot_has_a_network_panel_with_a_limit_or_once_there_is_traffic():
    pytest.importorskip("matplotlib")
    from nsmagic.cgroups import Usage
    from nsmagic.display import Plot
    from nsmagic.monitor import MiB, Series
    limited = Plot(net_limit=MiB)
    assert limited.ax_net is not None and limited.ax_net.get_ylim()[1] >= 1.0
    plot, series = Plot(), Series(start=0.0)
    for i in range(4):
        series.add(Usage(time=float(i), net_rx_bytes=i * MiB, net_tx_bytes=i * MiB // 2))
        plot.render(series)
        assert (plot.ax_net is not None) == series.net_seen
    assert series.net_rx[-1] == pytest.approx(1.0) and series.net_tx[-1] == pytest.approx(0.5)
    assert plot.render(series, final=True).startswith(b"\x89PNG")


def test_a_host_whose_forward_policy_is_drop_still_forwards_containers(user_network, no_leaks):
    """Docker sets iptables' FORWARD policy to DROP: containers on one bridge still talk
    (br_netfilter passes bridged frames through FORWARD too), through NSMAGIC-FORWARD, which
    goes with the last bridge."""
    policy = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True,
                            text=True).stdout.splitlines()[0]
    subprocess.run(["iptables", "-P", "FORWARD", "DROP"], check=True)
    try:
        web = _serve("--network", user_network, name="web")
        try:
            done = run_spec(["--network", user_network, "--", "/usr/bin/python3", "-c", FETCH,
                             "http://web:8000/hostname"])
            assert done.result.exit_code == 0, done
        finally:
            _stop(web)
        settle()
    finally:
        subprocess.run(["iptables", "-P", "FORWARD", policy.split()[-1]], check=True)


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_nat_rules_are_set_whole_and_go_whole(backend, monkeypatch):
    """Both backends, through the host's own tools: masquerade for a bridge with a route
    out, DNAT for a published port, networks kept apart; then nothing of nsmagic's left.
    (No traffic: the devices named need not exist for rules to name them.)"""
    from nsmagic.net import nat
    monkeypatch.setenv("NSMAGIC_NAT", backend)
    before = set(nat.present())
    bridges = [nat.Bridge("nsmtest-a", "10.252.0.0/24", True),
               nat.Bridge("nsmtest-b", "10.252.1.0/24", False)]
    try:
        nat.sync(bridges, [nat.Published("", 18123, "tcp", "10.252.0.2", 80)])
        if backend == "nft":
            rules = subprocess.run(["nft", "list", "table", "ip", "nsmagic"],
                                   capture_output=True, text=True).stdout
            assert 'ip saddr 10.252.0.0/24 oifname != "nsmtest-a" masquerade' in rules
            assert "tcp dport 18123 dnat to 10.252.0.2:80" in rules
            assert "10.252.1.0/24" not in rules   # no route out for b: no masquerade
        else:
            rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
            assert "-A NSMAGIC-POSTROUTING -s 10.252.0.0/24 ! -o nsmtest-a -j MASQUERADE" in rules
            assert "--dport 18123 -j DNAT --to-destination 10.252.0.2:80" in rules
            assert "-A NSMAGIC-FORWARD -i nsmtest-a -o nsmtest-b -j DROP" in rules
    finally:
        nat.sync([], [])
    assert set(nat.present()) <= before


def test_a_helper_killed_outright_is_replaced_and_adopts_what_it_left(no_leaks):
    """SIGKILL to nsmagic-netd while a container is attached: the runner's next bridged run
    starts a new helper, which adopts the live lease (and detaches it when that container
    ends) and the network still works for both."""
    import signal

    from nsmagic.core import start
    from nsmagic.net import client
    from nsmagic.spec import Spec
    spec = Spec.from_argv(["--network", "bridge", "--", "sleep", "30"])
    first = start(spec)
    try:
        assert first.network["ip"]
        helper = client.Connection.get().answer(client.Connection.get().send({"op": "ping"}))
        os.kill(helper["pid"], signal.SIGKILL)
        while os.path.exists(f"/proc/{helper['pid']}"):   # gone (a helper killed while it
            time.sleep(0.01)                               # attaches fails that attach)
        second = start(spec)
        try:
            assert second.network["ip"] != first.network["ip"]
            assert os.path.exists(f"/sys/class/net/{first.network['veth']}")   # kept
        finally:
            _stop(second)
    finally:
        _stop(first)


def test_a_starting_helper_forgets_the_sockets_of_killed_ones(tmp_path):
    """A helper SIGKILLed (of another version of the code: the same one rebinds its path)
    leaves its socket in the runtime directory; the next helper to start removes those
    nothing listens on, old ones only (a helper just started binds before it listens)."""
    from nsmagic.net import netd
    made = {}
    for name in ("dead", "young-dead", "live"):
        made[name] = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        made[name].bind(str(tmp_path / f"netd-{name}.sock"))
    made["live"].listen(1)
    made["dead"].close()
    made["young-dead"].close()
    old = time.time() - 3600
    for name in ("dead", "live"):
        os.utime(tmp_path / f"netd-{name}.sock", (old, old))
    netd._forget_dead_helpers(str(tmp_path / "netd-mine.sock"))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["netd-live.sock", "netd-young-dead.sock"], left
    made["live"].close()
