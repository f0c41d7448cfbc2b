"""A class on one server, for real: JupyterHub (PyPI) with configurable-http-proxy (npm),
DummyAuthenticator with a password, the local-process spawner and nsmagic's pre-spawn hook
(docs/jupyterhub.md's setup), two students made by the test. Each logs in through the Hub's
REST API, starts a server and runs `%%container --mem 64M --strict` through the kernel's
websocket: the limit holds for both; each sees only their own containers; neither can signal,
inspect or enter the other's."""

import os
import pwd

import pytest
from hubclient import Hub, why_no_hub
from students import make_users, processes_of, remove_user

from nsmagic.cgroups import delegation, detect

pytestmark = [pytest.mark.hub, pytest.mark.skipif(why_no_hub() is not None,
                                                   reason=why_no_hub() or "")]

OOM_CELL = "%%container --mem 64M --strict\nx = [bytearray(1 << 20) for _ in range(100)]"
# A container left running in a thread of the kernel, for the other student to try to reach.
BACKGROUND = """
import threading
threading.Thread(target=get_ipython().run_cell_magic, daemon=True,
                 args=("container", "--no-plot --no-raise-error",
                       "import time; time.sleep(60)")).start()
"""
MY_CONTAINER_PID = """
import time
from nsmagic.ps import running
for _ in range(100):
    groups = running()
    if groups and groups[0].pids():
        break
    time.sleep(0.1)
print(max(groups[0].pids()), groups[0].directories()[0])
"""
REACH = """
import os, signal
pid, group = {pid}, {group!r}
for what, attempt in (("signal", lambda: os.kill(pid, signal.SIGTERM)),
                      ("inspect", lambda: open(f"/proc/{{pid}}/environ").read()),
                      ("enter", lambda: os.open(f"/proc/{{pid}}/ns/mnt", os.O_RDONLY)),
                      ("read its cgroup", lambda: os.listdir(group))):
    try:
        attempt()
        print(what, "ALLOWED")
    except OSError as err:
        print(what, "refused")
"""


@pytest.fixture(scope="module")
def classroom(nobody_checkout, nobody_python):
    students = make_users(2)
    names = [s.pw_name for s in students]
    hub = None
    try:
        hub = Hub(names, nobody_checkout, nobody_python)
        tokens = {name: hub.log_in(name) for name in names}
        for name in names:
            hub.start_server(name, tokens[name])
        kernels = {name: hub.kernel(name, tokens[name]) for name in names}
        yield hub, kernels
        for k in kernels.values():
            k.close()
        for name in names:
            hub.stop_server(name)
    finally:
        if hub:
            hub.stop()
        for name in names:
            remove_user(name)
    for entry in students:
        assert not processes_of(entry.pw_uid), "a student's process outlived the Hub"
    assert not _users_dirs(), "a student's cgroups outlived the Hub and the users"


def _users_dirs():
    layout = detect()
    return [m for m in delegation.hierarchies(layout)
            if os.path.exists(os.path.join(m, "nsmagic-users"))]


def test_the_hook_delegated_a_subtree_and_started_the_server_in_it(classroom):
    hub, kernels = classroom
    for name in kernels:
        uid = pwd.getpwnam(name).pw_uid
        leaves = delegation.leaves(uid)
        server_pids = {int(p) for leaf in leaves
                       for p in open(f"{leaf}/cgroup.procs").read().split()}
        assert any(os.stat(f"/proc/{p}").st_uid == uid for p in server_pids), hub.tail()


def test_the_memory_limit_holds_for_both_students(classroom):
    hub, kernels = classroom
    for name, kernel in kernels.items():
        assert kernel.execute("%load_ext nsmagic")["status"] == "ok"
        got = kernel.execute(OOM_CELL)
        assert got["status"] == "error", (name, got)
        assert "ContainerError" in got["error"] and "137 (OOM killed)" in got["error"], got
        assert "NOT enforced" not in got["stderr"]
        check = kernel.execute("r = _container\n"
                               "print(r.oom_killed, r.limits_enforced, r.memory_peak <= 64 << 20)")
        assert check["stdout"].split() == ["True", "True", "True"], (name, check)


def test_each_sees_only_their_own_and_cannot_reach_the_others(classroom):
    hub, kernels = classroom
    names = sorted(kernels)
    where = {}
    for name in names:
        kernels[name].execute("%load_ext nsmagic")
        assert kernels[name].execute(BACKGROUND)["status"] == "ok"
        out = kernels[name].execute(MY_CONTAINER_PID)["stdout"].split()
        assert len(out) == 2, (name, out)
        where[name] = (int(out[0]), out[1])
    for name, other in ((names[0], names[1]), (names[1], names[0])):
        listing = kernels[name].execute("%container ps")["stdout"]
        own_pid, other_pid = where[name][0], where[other][0]
        run_id = lambda who: os.path.basename(where[who][1]).split("-")[-1]  # noqa: E731
        assert run_id(name) in listing and run_id(other) not in listing, listing
        stats = kernels[name].execute("%container stats --seconds 0.5")["stdout"]
        assert os.path.basename(where[other][1]) not in stats, stats
        pid, group = where[other]
        reach = kernels[name].execute(REACH.format(pid=pid, group=group))["stdout"]
        assert reach.split("\n")[:4] == ["signal refused", "inspect refused", "enter refused",
                                         "read its cgroup refused"], reach
        assert os.path.exists(f"/proc/{other_pid}") and os.path.exists(f"/proc/{own_pid}")
