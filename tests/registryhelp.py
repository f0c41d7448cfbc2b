"""The reference registry (Debian's docker-registry) started on loopback for a test, open, with
htpasswd auth, or with bearer tokens from a token server of the test's own (Docker Hub's and
most registries' scheme), in a scratch directory; stopped and removed at exit."""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

USER, PASSWORD = "student", "s3cret-pass"


class RegistryUnavailable(Exception):
    """str() says why in one sentence (for a skip)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, address: str, data: Path, auth: str | None, tokens=None):
        self.address, self.data, self.auth = address, data, auth
        self.tokens: TokenServer | None = tokens

    def blobs(self) -> list[Path]:
        """The registry's stored blobs (to corrupt one)."""
        return sorted(self.data.glob("**/blobs/sha256/*/*/data"))


@contextlib.contextmanager
def registry(auth: str | None = None):
    """Yield a Server (address "127.0.0.1:PORT", plain HTTP on loopback) while it runs.
    auth: None (open), "htpasswd" (basic auth) or "bearer" (tokens; USER may pull and push,
    anyone else nothing)."""
    program = shutil.which("docker-registry")
    if not program:
        raise RegistryUnavailable("docker-registry is not installed: apt-get install "
                                  "docker-registry (tests/install-deps installs it).")
    scratch = Path(tempfile.mkdtemp(prefix="nsmagic-registry-"))
    port = _free_port()
    config = [f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
              f"    rootdirectory: {scratch}/data\n  delete:\n    enabled: true\n"
              f"http:\n  addr: 127.0.0.1:{port}\n  secret: nsmagic-test\n"]
    tokens = None
    if auth == "bearer":
        tokens = TokenServer(scratch)
        config.append(f"auth:\n  token:\n    realm: {tokens.realm}\n    service: {SERVICE}\n"
                      f"    issuer: {ISSUER}\n    rootcertbundle: {tokens.cert}\n")
    elif auth == "htpasswd":
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
        yield Server(f"127.0.0.1:{port}", scratch / "data", auth, tokens)
    finally:
        if tokens:
            tokens.stop()
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



SERVICE, ISSUER = "nsmagic-test-registry", "nsmagic-test-tokens"


class TokenServer:
    """A token server as the distribution spec describes one: GET /token?service=&scope=
    answers a JWT (RS256, its certificate in the x5c header, which the registry checks
    against its rootcertbundle) granting what was asked to USER with PASSWORD, nothing to
    an anonymous client, and 401 to wrong credentials. Serves on loopback in a thread."""

    def __init__(self, scratch: Path):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .sign(self.key, hashes.SHA256()))
        self.cert = scratch / "tokens.pem"
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.issued: list[dict] = []      # the claims of every token given out
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):   # noqa: N802 - http.server's name
                query = urllib.parse.urlparse(self.path)
                status, body = server.answer(urllib.parse.parse_qs(query.query),
                                             self.headers.get("Authorization", ""))
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.http.server_address[1]}/token"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def answer(self, query: dict, authorization: str) -> tuple[int, dict]:
        user = ""
        if authorization.lower().startswith("basic "):
            given = base64.b64decode(authorization[6:]).decode().partition(":")
            if (given[0], given[2]) != (USER, PASSWORD):
                return 401, {"errors": [{"code": "UNAUTHORIZED",
                                         "message": "wrong user name or password"}]}
            user = USER
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name,
                           "actions": actions.split(",") if user else []})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user, "aud": query.get("service", [""])[0],
                  "exp": now + 300, "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex,
                  "access": access}
        self.issued.append(claims)
        token = self._sign({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}, claims)
        return 200, {"token": token, "access_token": token, "expires_in": 300}

    def _sign(self, header: dict, claims: dict) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def part(raw: bytes) -> str:
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        signed = part(json.dumps(header).encode()) + "." + part(json.dumps(claims).encode())
        signature = self.key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signed + "." + part(signature)

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()
