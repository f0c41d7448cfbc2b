"""A Spec turned into what PID 1 is sent (config.RunConfig): its root plan, its cgroup's
files and mounts, its argv and environment, its seccomp filter."""

from __future__ import annotations

import sys

from .. import cgroups
from ..cell import BOOTSTRAP
from ..config import RunConfig
from ..inside.workload import KEEP_CAPABILITIES
from ..rootfs.plan import MATPLOTLIB_CACHE
from ..rootfs.plan import plan as plan_root
from ..security import seccomp
from ..spec import Spec

BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8", "TERM": "xterm"}


def run_config(spec: Spec, hostname: str, rootless: bool, cgroup: cgroups.Cgroup | None,
               layout: cgroups.Layout, image=None) -> RunConfig:
    """`image` is what the spec's image gives the run (images.runimage.ImageRun), or None
    for the host's directories or --rootfs."""
    plan = plan_root(spec, rootless, image.layers if image else None)
    if image is not None:
        env = dict(image.env, HOSTNAME=hostname)
        env.setdefault("HOME", "/root" if not image.user or image.user[0] == 0 else "/")
        argv, workdir, user = image.argv, image.workdir, image.user
    else:
        env = dict(BASE_ENV, HOSTNAME=hostname, PYTHONUNBUFFERED="1")
        if any(layer.target == MATPLOTLIB_CACHE for layer in plan.layers):
            env["MPLCONFIGDIR"] = MATPLOTLIB_CACHE
        env.update(dict(spec.env))
        argv = spec.command or python_argv(spec)
        workdir, user = spec.workdir or "/", spec.user
    return RunConfig(
        hostname=hostname,
        network=spec.network,
        rootless=rootless,
        plan=plan,
        cgroup_namespace=cgroup is not None,
        cgroup_mounts=cgroup.mounts_inside() if cgroup else (),
        argv=tuple(argv),
        env=tuple(env.items()),
        workdir=workdir,
        user=user,
        python_cell=spec.is_python_cell,
        custom_root=spec.rootfs is not None or image is not None,
        unconfined=spec.unconfined,
        profile=spec.profile,
        seccomp=seccomp_filter(spec)[0],
    )


def python_argv(spec: Spec) -> tuple[str, ...]:
    """A Python cell's interpreter (the runner's own): through IPython, the cell's host
    program read from stdin (nsmagic.cell); else plain Python reading the script."""
    if spec.ipython:
        return (sys.executable, "-c", BOOTSTRAP)
    return (sys.executable, "-u", "-")


def seccomp_filter(spec: Spec) -> tuple[bytes | None, float | None]:
    """The BPF program a run's PID 1 loads (None: no filter), and the seconds compiling it
    took when this call compiled it (None when it came from this process's cache or an
    earlier process's, see security/filtercache.py). --unconfined runs get none: they have
    no namespaces to keep either."""
    if spec.unconfined or not spec.seccomp:
        return None, None
    cached = seccomp.is_compiled(KEEP_CAPABILITIES)
    program = seccomp.compile_filter(KEEP_CAPABILITIES)
    return program, None if cached else seccomp.compile_cost(KEEP_CAPABILITIES)
