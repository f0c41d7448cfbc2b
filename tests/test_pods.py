"""nsmagic inside what a Kubernetes pod gives (tests/pods.py: runc with the OCI config
containerd's CRI plugin would write for a Zero-to-JupyterHub user pod), under each setting a
pod spec changes. docs/kubernetes.md cites these tests, one line each.

What must hold everywhere: nothing prints a traceback; where a feature is refused, nsmagic
says why in one sentence naming the setting that would allow it, and the notebook magic
(when_unavailable = "explain") explains instead of failing."""

import os
import shutil
import subprocess
import tempfile

import pytest
from conftest import REPO
from pods import SETTINGS, Pods, probe, why_no_pods

pytestmark = [pytest.mark.pods, pytest.mark.skipif(why_no_pods() is not None,
                                                    reason=why_no_pods() or "")]
BY_NAME = {s.name: s for s in SETTINGS}


@pytest.fixture(scope="module")
def package():
    """A copy of the checkout outside /tmp and /run (the pod's own tmpfs), any user can read."""
    where = tempfile.mkdtemp(prefix="nsmagic-checkout-", dir="/var/tmp")
    skip = shutil.ignore_patterns("__pycache__", "output")
    shutil.copytree(os.path.join(REPO, "nsmagic"), os.path.join(where, "nsmagic"), ignore=skip)
    shutil.copytree(os.path.join(REPO, "tests"), os.path.join(where, "tests"), ignore=skip)
    subprocess.run(["chmod", "-R", "a+rX", where], check=True)
    yield where
    shutil.rmtree(where)


@pytest.fixture(scope="module")
def found(package, nobody_python):
    """The probe's answers under every setting, one pod each, run by a Python that the pod's
    user can execute (this venv's may sit under /root)."""
    pods = Pods()
    try:
        yield {s.name: probe(pods, s, package, nobody_python) for s in SETTINGS}
    finally:
        pods.close()
    import glob
    assert not os.path.exists(pods.dir)
    assert not glob.glob(f"/sys/fs/cgroup/*/nsmagic-pods-{os.getpid()}-*")   # nor the pods'
    assert not glob.glob(f"/sys/fs/cgroup/nsmagic-pods-{os.getpid()}-*")     # groups


def _sentence(answer: dict) -> str:
    assert not answer.get("traceback"), answer
    return answer["err"].strip()


def test_every_pod_ran_the_probe_and_nothing_printed_a_traceback(found):
    for name, f in found.items():
        assert f["pod_rc"] == 0 and f["uid"] == 1000, (name, f.get("pod_stderr"))
        for part in ("namespaces", "limits"):
            assert not f[part]["traceback"], (name, part, f[part])
        assert not f["magic"]["traceback"] and f["magic"]["ok"], (name, f["magic"])


@pytest.mark.parametrize("name", ["unconfined", "userns"])
def test_a_masked_proc_refuses_namespaces_and_says_procmount(found, name):
    """procMount: Default (masked /proc paths): the kernel mounts no fresh /proc beside it,
    with or without hostUsers: false."""
    f = found[name]
    assert f["mode"] == "unavailable"
    said = _sentence(f["namespaces"])
    assert f["namespaces"]["rc"] == 125 and "procMount: Unmasked" in said
    assert "procMount: Unmasked" in f["magic"]["out"]       # the cell explains, in one line


@pytest.mark.parametrize("name", ["runtime-default", "userns-unmasked-runtime-default"])
def test_runtime_default_seccomp_refuses_namespaces_and_says_so(found, name):
    """seccompProfile: RuntimeDefault refuses clone/unshare with namespace flags to a process
    without CAP_SYS_ADMIN, whatever else the pod allows."""
    f = found[name]
    assert f["mode"] == "unavailable"
    said = _sentence(f["namespaces"])
    assert "seccomp filter on this process refuses it" in said and "RuntimeDefault" in said
    assert "cannot run on this host" in f["magic"]["out"]


def test_userns_with_unmasked_proc_runs_containers_without_limits(found):
    """hostUsers: false + procMount: Unmasked + seccomp Unconfined: namespaces and overlay
    work; the cgroup file system is read-only, so --strict limits are refused in a sentence
    and a cell runs with a banner (no live plot: no group to sample)."""
    f = found["userns-unmasked"]
    assert f["mode"] == "rootless-no-limits" and f["overlay"] is None
    assert f["namespaces"]["rc"] == 0 and f["namespaces"]["out"].strip() == "2"
    said = _sentence(f["limits"])
    assert f["limits"]["rc"] == 125 and "read-only" in said and "delegated cgroup" in said
    assert "writable, delegated cgroup" in " ".join(f["missing"])
    assert "inside 42" in f["magic"]["out"] and f["plot"]["frames"] == 0


def test_a_delegated_cgroup_in_the_pod_gives_limits_and_the_live_plot(found):
    """... and a writable cgroup given to the pod's user: every limit, the OOM kill, the
    live plot's samples and frames."""
    f = found["userns-unmasked-delegated"]
    assert f["mode"] == "rootless" and f["namespaces"]["rc"] == 0
    assert f["limits"]["rc"] == 137, f["limits"]                  # OOM-killed at --mem 48M
    assert f["plot"]["frames"] >= 2 and f["plot"]["error"] is None
    assert "inside 42" in f["magic"]["out"] and "peak" in f["magic"]["out"]


def test_the_runtime_default_profile_is_dockers(found):
    """The RuntimeDefault the pods get is nsmagic's copy of Docker's default profile as an
    OCI seccomp section (containerd's RuntimeDefault is maintained from the same list)."""
    from pods import seccomp_json
    section = seccomp_json()
    assert section["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = {n for rule in section["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW"
               for n in rule["names"]}
    assert {"read", "clone", "mkdir"} <= allowed
    assert not {"unshare", "setns", "mount", "bpf", "keyctl"} & allowed
    clone = next(r for r in section["syscalls"] if r["names"] == ["clone"])
    assert clone["args"] == [{"index": 0, "value": 0x7E020000, "valueTwo": 0,
                              "op": "SCMP_CMP_MASKED_EQ"}]   # no namespace flag
    assert BY_NAME["runtime-default"].seccomp
