"""JupyterHub's side of a class: a pre-spawn hook that gives each student a delegated cgroup
subtree under the teacher's ceilings (`nsmagic setup-user`) and starts the student's server
inside it. Runs in the Hub (root); imports nothing of JupyterHub.

    # jupyterhub_config.py
    from nsmagic.hub import setup_user_hook
    c.Spawner.pre_spawn_hook = setup_user_hook(mem="2G", cpus=1, pids=1024)
"""

from __future__ import annotations

import os

from .cgroups import Limits, delegation
from .spec import _parse_cpus, _parse_pids, parse_size


def setup_user_hook(mem: str | None = None, cpus: float | str | None = None,
                    pids: int | str | None = None, join: bool = True):
    """A Spawner.pre_spawn_hook: `nsmagic setup-user NAME` with these ceilings (checked now,
    when the Hub loads its config: a wrong one fails the Hub's start, not each spawn), and,
    with `join`, the student's server started in their leaf group. The ceilings then cover
    the server, its kernels and their containers together; on cgroup v2 the server must
    start there to use the subtree at all."""
    ceiling = Limits(memory=parse_size(mem) if mem else None,
                     cpus=_parse_cpus(None if cpus is None else str(cpus)),
                     pids=_parse_pids(None if pids is None else str(pids)))
    delegation._check_ceiling(ceiling)

    def pre_spawn_hook(spawner) -> None:
        name = spawner.user.name
        for line in delegation.setup_report(name, delegation.setup(name, ceiling),
                                            ceiling).splitlines():
            spawner.log.info("nsmagic: %s", line)
        if join and hasattr(spawner, "make_preexec_fn"):   # a local-process spawner
            _join_before_setuid(spawner, name)

    return pre_spawn_hook


def _join_before_setuid(spawner, name: str) -> None:
    """The local-process spawner drops to the student's ids in its preexec function; join
    first, while the child is still root (only root may move it in on v2). Wrapped on this
    spawner object only, for this start."""
    procs = [f"{leaf}/cgroup.procs" for leaf in delegation.leaves(name)]
    make = type(spawner).make_preexec_fn

    def make_preexec_fn(self_name):
        drop = make(spawner, self_name)

        def preexec():   # in the forked child: as little as can be, paths found before
            for path in procs:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
            drop()
        return preexec

    spawner.make_preexec_fn = make_preexec_fn
