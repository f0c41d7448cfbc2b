"""The reference registry (Debian's docker-registry) started on loopback for a test, with or
without htpasswd auth, in a scratch directory; stopped (by its pid) and removed at exit."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER, PASSWORD = "student", "s3cret-pass"


class RegistryUnavailable(Exception):
    """str() says why in one sentence (for a skip)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, address: str, data: Path):
        self.address, self.data = address, data

    def blobs(self) -> list[Path]:
        """The registry's stored blobs (to corrupt one)."""
        return sorted(self.data.glob("**/blobs/sha256/*/*/data"))


@contextlib.contextmanager
def registry(auth: bool = False):
    """Yield a Server (address "127.0.0.1:PORT", plain HTTP on loopback) while it runs."""
    program = shutil.which("docker-registry")
    if not program:
        raise RegistryUnavailable("docker-registry is not installed: apt-get install "
                                  "docker-registry (tests/install-deps installs it).")
    scratch = Path(tempfile.mkdtemp(prefix="nsmagic-registry-"))
    port = _free_port()
    config = [f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
              f"    rootdirectory: {scratch}/data\n  delete:\n    enabled: true\n"
              f"http:\n  addr: 127.0.0.1:{port}\n  secret: nsmagic-test\n"]
    if auth:
        if not shutil.which("htpasswd"):
            raise RegistryUnavailable("htpasswd is not installed: apt-get install "
                                      "apache2-utils.")
        users = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True,
                               text=True, check=True).stdout
        (scratch / "htpasswd").write_text(users)
        config.append(f"auth:\n  htpasswd:\n    realm: nsmagic-test\n"
                      f"    path: {scratch}/htpasswd\n")
    (scratch / "config.yml").write_text("".join(config))
    log = open(scratch / "registry.log", "wb")
    proc = subprocess.Popen([program, "serve", str(scratch / "config.yml")],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        _wait(port, proc, scratch)
        yield Server(f"127.0.0.1:{port}", scratch / "data")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _wait(port: int, proc: subprocess.Popen, scratch: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RegistryUnavailable("docker-registry exited at start: " + (
                scratch / "registry.log").read_text()[-300:])
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RegistryUnavailable("docker-registry did not listen within 15 s.")

