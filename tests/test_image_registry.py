"""Pull and push against the reference registry (Debian's docker-registry) on loopback,
open, with htpasswd auth and with bearer tokens: build -> push -> rmi -> pull -> run; a
corrupted blob is refused by its digest and leaves no half image."""

from __future__ import annotations

import os

import pytest
import registryhelp
from conftest import needs_root
from imagehelp import nsmagic

from nsmagic.errors import NsmagicError
from nsmagic.images import registry as reg
from nsmagic.images.store import Store

pytestmark = [pytest.mark.kernel, needs_root]

DOCKERFILE = "FROM busybox\nRUN echo pushed and pulled > /proof\nCMD [\"cat\", \"/proof\"]\n"


@pytest.fixture
def config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
def server(request):
    try:
        with registryhelp.registry(auth=getattr(request, "param", None)) as running:
            yield running
    except registryhelp.RegistryUnavailable as why:
        pytest.skip(str(why))


@pytest.mark.parametrize("server", [None, "htpasswd", "bearer"], ids=["open", "htpasswd", "bearer"],
                         indirect=True)
def test_build_push_rmi_pull_run(store, tmp_path, config_home, server, no_leaks):
    auth = server.auth is not None
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx/Dockerfile").write_text(DOCKERFILE)
    name = f"{server.address}/course/proof:1"
    assert nsmagic("build", "-t", name, str(tmp_path / "ctx")).returncode == 0
    if auth:
        refused = nsmagic("push", "--insecure", name)
        assert refused.returncode == 125 and "refused" in refused.stderr
        assert "nsmagic login" in refused.stderr
        login = ["login", server.address, "-u", registryhelp.USER, "--password-stdin",
                 "--insecure"]
        bad = nsmagic(*login, stdin="wrong\n")
        assert bad.returncode == 125 and "refused the credentials" in bad.stderr
        good = nsmagic(*login, stdin=registryhelp.PASSWORD + "\n")
        assert good.stdout == "Login Succeeded\n", good.stderr
        assert os.stat(tmp_path / "config/nsmagic/auth.json").st_mode & 0o777 == 0o600
    pushed = nsmagic("push", "--insecure", name)
    assert pushed.returncode == 0, pushed.stderr
    assert nsmagic("rmi", name, "busybox").returncode == 0
    assert nsmagic("image", "prune").returncode == 0
    assert os.listdir(store.path("layers")) == []        # nothing left to reuse
    pulled = nsmagic("pull", "--insecure", name)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.startswith("Digest: sha256:")
    done = nsmagic("run", "--rm", name)
    assert done.stdout == "pushed and pulled\n", done.stderr
    if server.tokens:   # the registry asked for tokens, and the login's got push and pull
        granted = [set(a["actions"]) for c in server.tokens.issued for a in c["access"]
                   if c["sub"] == registryhelp.USER and a["name"] == "course/proof"]
        assert {"push", "pull"} in granted, server.tokens.issued


def test_corrupt_blob_refused_by_digest(store, tmp_path, config_home, server, no_leaks):
    name = f"{server.address}/corrupt:1"
    nsmagic("tag", "busybox", name)
    assert nsmagic("push", "--insecure", name).returncode == 0
    data = next(p for p in server.blobs() if p.stat().st_size > 1 << 20)
    raw = bytearray(data.read_bytes())
    raw[4096] ^= 0xFF
    data.write_bytes(bytes(raw))
    fresh = Store(str(tmp_path / "fresh")).ensure()
    with open(os.devnull, "w") as quiet, pytest.raises(NsmagicError,
                                                      match="does not match its digest"):
        reg.pull(name, insecure=True, store=fresh, progress=reg.Progress(quiet))
    assert fresh.images() == [] and os.listdir(fresh.path("tmp")) == []
    assert os.listdir(fresh.path("layers")) == []


def test_a_blob_longer_than_its_manifest_says_is_refused(store, tmp_path, config_home,
                                                        server, no_leaks):
    """A registry that sends on past the size the manifest gives (a hostile one could send
    forever) is cut off at that size, not after filling the disk."""
    name = f"{server.address}/long:1"
    nsmagic("tag", "busybox", name)
    assert nsmagic("push", "--insecure", name).returncode == 0
    data = next(p for p in server.blobs() if p.stat().st_size > 1 << 20)
    with open(data, "ab") as f:
        f.write(bytes(8 << 20))
    fresh = Store(str(tmp_path / "fresh")).ensure()
    with open(os.devnull, "w") as quiet, pytest.raises(NsmagicError, match="is longer than"):
        reg.pull(name, insecure=True, store=fresh, progress=reg.Progress(quiet))
    assert fresh.images() == [] and os.listdir(fresh.path("tmp")) == []


def test_errors_are_one_sentence(store, config_home):
    done = nsmagic("pull", "--insecure", "127.0.0.1:1/nothing")
    assert done.returncode == 125 and "cannot reach the registry 127.0.0.1:1" in done.stderr
    done = nsmagic("pull", "--insecure", "registry.example:5000/x")
    assert "only for a registry on this machine's loopback" in done.stderr
    done = nsmagic("push", "busybox")
    assert "give the registry in the name" in done.stderr
