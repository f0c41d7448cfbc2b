"""A network namespace the tests make to stand for the world behind the host: no test sends
traffic anywhere else. Shared by the bridged and the rootless (pasta) tests."""

import subprocess

import pytest

OUTSIDE = "nsmagic-test-out"
OUTSIDE_HOST, OUTSIDE_PEER = "198.51.100.1", "198.51.100.2"   # TEST-NET-2


@pytest.fixture
def outside_world():
    """A network namespace behind the host (its own veth to the host, 198.51.100.0/24), with
    a TCP server that answers each connection with the address it came from."""
    steps = [["ip", "netns", "add", OUTSIDE],
             ["ip", "link", "add", "nsmtout0", "type", "veth", "peer", "name", "eth0",
              "netns", OUTSIDE],
             ["ip", "addr", "add", f"{OUTSIDE_HOST}/24", "dev", "nsmtout0"],
             ["ip", "link", "set", "nsmtout0", "up"],
             ["ip", "-n", OUTSIDE, "addr", "add", f"{OUTSIDE_PEER}/24", "dev", "eth0"],
             ["ip", "-n", OUTSIDE, "link", "set", "eth0", "up"]]
    server = None
    try:
        for argv in steps:
            subprocess.run(argv, check=True, capture_output=True)
        code = ("import socket\ns = socket.socket(); s.bind(('0.0.0.0', 9000)); s.listen()\n"
                "print('up', flush=True)\nwhile True:\n    c, a = s.accept()\n"
                "    c.sendall(a[0].encode()); c.close()")
        server = subprocess.Popen(["ip", "netns", "exec", OUTSIDE, "/usr/bin/python3", "-c",
                                   code], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline() == "up\n"
        yield OUTSIDE_PEER
    finally:
        if server:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", "nsmtout0"], capture_output=True)
        subprocess.run(["ip", "netns", "del", OUTSIDE], capture_output=True)
