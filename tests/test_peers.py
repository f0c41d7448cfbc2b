"""Docker and Podman as peers (tests/peers.py): each starts here without a network or a
download, runs a busybox container, and leaves nothing behind."""

from __future__ import annotations

import shutil
import subprocess

import peers
import pytest
from conftest import needs_root

pytestmark = [pytest.mark.kernel, needs_root]

PEERS = {"docker": (peers.docker_daemon, "dockerd"), "podman": (peers.podman_argv, "podman")}


@pytest.mark.parametrize("tool", sorted(PEERS))
def test_peer_runs_a_busybox_container_and_leaves_nothing(tool):
    start, program = PEERS[tool]
    if not shutil.which(program):
        pytest.skip(f"{program} is not installed (tests/install-deps installs it)")
    before = peers.snapshot()
    with start() as argv:
        image = peers.busybox_image(argv)
        probe = peers.run_argv(argv, image, "sh", "-c", "echo $$; ls /sys/class/net", limits=True)
        ran = subprocess.run(probe, capture_output=True, text=True, timeout=120)
    assert (ran.returncode, ran.stdout.split()) == (0, ["1", "lo"]), ran.stderr
    assert peers.leftovers(before) == []
