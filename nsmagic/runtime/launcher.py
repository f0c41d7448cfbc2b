"""A run from the runner's side: take a spare (or clone a PID 1), hand it the run, read its
status, stop it, and hand what is left to the teardown."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time

from .. import cgroups, config
from ..errors import CgroupError, NsmagicError, SetupError
from ..inside.init import NETWORK_FAILED, NETWORK_READY, NETWORK_SET_UP_BY_RUNNER
from ..net import modes
from ..spec import Spec
from . import forkserver, stdio, teardown
from .pid1 import Pid1
from .runconfig import run_config, seccomp_filter
from .spares import Spare, SpareKind, Spares, make_spare, ready_spec

# Networks whose veth the runner has made (by the network helper) while PID 1 builds the
# root; PID 1 waits for NETWORK_READY before the workload starts.
RUNNER_SETS_UP = NETWORK_SET_UP_BY_RUNNER

WARM_SPARES = True   # keep one PID 1 ready per kind of run (see Spares)
READY_SPARES = True  # and for the latest Python cell, its whole container (see ready_spec)
EXIT_KILLED = 128 + signal.SIGKILL

_swept = False


def _sweep_once() -> None:
    """Remove what runners killed earlier left behind, once per process."""
    global _swept
    if not _swept:
        _swept = True
        try:
            cgroups.sweep()
        except (OSError, NsmagicError):
            pass


class Run:
    """A live container: its cgroup, its PID 1 and the pipes to it."""

    def __init__(self, spec: Spec, out=None, err=None):
        self.spec = spec
        self.id = os.urandom(6).hex()
        self.name = spec.name or f"nsmagic-{self.id}"
        self.hostname = spec.hostname or self.id
        self.rootless = os.geteuid() != 0
        self.cgroup: cgroups.Cgroup | None = None
        self.limits_enforced = True
        self.pid1: Pid1 | None = None
        self.status_fd: int | None = None
        self.exit_code: int | None = None
        self.reported = False      # PID 1 said how the run ended (and then it exits)
        self.told = False          # the workload said it itself (a Python cell's host)
        self.error: str | None = None
        self.started = self.ended = 0.0
        self._status_buf = b""
        self._wants_stdio = out is not None, err is not None
        self.warning: str | None = None      # a banner: what this run does NOT enforce
        self._warnings: list[str] = []
        self.image = None          # what the spec's image gives the run (runimage.ImageRun)
        self.primed = False        # its interpreter has its cell's host program (ready spare)
        self.marks: list[tuple[str, float]] = []
        self._network = None                # client.Pending: the helper's answer, to come
        self._net: dict | None = None
        self._counters: NetCounters | None = None
        self._pasta = None                  # a rootless run's pasta (net/rootless.py)
        self._pasta_ns: tuple[int, ...] = ()
        self._refill: list[tuple[SpareKind, cgroups.Layout]] = []

    def mark(self, step: str) -> None:
        """--profile: the end of a step, on CLOCK_MONOTONIC (child processes use it too)."""
        if self.spec.profile:
            self.marks.append((step, time.monotonic()))

    # --- start

    def start(self) -> Run:
        """Start the run. A Ctrl-C while it starts is taken once it has started (and then
        stops it as any other): half a start would leave a group with no run to remove it."""
        with interrupts_deferred():
            return self._start()

    def _start(self) -> Run:
        self.mark("start")
        self._filter()
        _sweep_once()
        teardown.install_hooks()
        spec, layout = self.spec, cgroups.detect()
        self.image = _image_for(spec)   # before any container: a missing image says so
        user = self.image.user if self.image else spec.user
        if user and self.rootless and user[0] != 0:
            who = "--user" if spec.user else f"the image {spec.image}'s User"
            raise SetupError(f"{who} needs root: without it only root (uid 0) is mapped into "
                             "the container; run as root, or pass -u 0.")
        mode = modes.parse(spec.network)
        if mode.bridged and self.rootless:   # the host's, not the options' fault: SetupError
            raise SetupError(f"--network {spec.network} needs root (a bridge and NAT rules of "
                             "the host); without root use --network pasta.")
        kind = SpareKind(self.rootless, mode.namespace, spec.unconfined)
        ready = ready_spec(spec) if READY_SPARES and all(self._wants_stdio) else None
        ready_kind = dataclasses.replace(kind, ready=ready) if ready else None
        spare = None
        try:   # a spare taken is handed to PID 1's run or dropped, whatever happens
            # A spare's mount namespace is a copy taken when it was made: a volume or a
            # --rootfs mounted on the host since then would not be in it.
            if not (spec.volumes or spec.rootfs):
                spare = (ready_kind and Spares.take(ready_kind)) or Spares.take(kind)
            if spare is None:
                spare = make_spare(kind, layout)
            self._adopt(spare, [k for k in (ready_kind, kind) if k], layout)
            if spare.kind.ready:   # all is set up and the interpreter waits: let it go
                return self._go(spare)
            self._limit(spare)
            if mode.kind == "pasta":   # while PID 1 is still ours to look into
                from ..net import rootless
                self._pasta_ns = rootless.namespaces(spare.pid1.pid)
            self._send_run(spare, layout, mode)
            if mode.kind in RUNNER_SETS_UP:
                self._set_up_network(spare, mode)
        except BaseException:
            if self.pid1 is None:   # else close() takes PID 1 and its group down
                if spare is not None:
                    spare.drop()
                self.cgroup = None
            raise
        return self

    def _filter(self) -> None:
        """Compile the seccomp filter here, once per option set (a missing libseccomp fails
        the run before anything is made); run_config and spares then find it cached."""
        spec = self.spec
        _, took = seccomp_filter(spec)
        if took is not None:
            self.mark("seccomp filter compiled")
        if spec.unconfined:
            self._warn("running UNCONFINED: no namespaces, no overlay and no seccomp filter, "
                       "so writes reach the host")
        elif not spec.seccomp:
            self._warn("seccomp filter OFF (--security-opt seccomp=unconfined): every system "
                       "call reaches the kernel, nested user namespaces and keyctl included")

    def _warn(self, text: str) -> None:
        self._warnings.append(text)
        self.warning = "; ".join(self._warnings)

    def _adopt(self, spare: Spare, kinds: list[SpareKind], layout: cgroups.Layout) -> None:
        self.mark("ready spare taken" if spare.kind.ready else
                  "spare taken" if spare.was_spare else "PID 1 cloned (runner)")
        self.id, self.cgroup = spare.id, spare.cgroup
        self.name = self.spec.name or f"nsmagic-{self.id}"
        self.hostname = self.spec.hostname or self.id
        if WARM_SPARES and not self.spec.unconfined and not forkserver.in_process():
            self._refill = [(k, layout) for k in kinds]

    def _limit(self, spare: Spare) -> None:
        """The run's limits on its group; where there is no group, a banner (rootless) or
        an error (--strict, or root, who should have one)."""
        spec = self.spec
        limits = cgroups.Limits.of(spec)
        if self.cgroup and limits.any:
            self.cgroup.limits = limits
            self.cgroup.apply()
        if spare.cgroup_error and limits.any:
            if spec.strict or not self.rootless:
                raise spare.cgroup_error
            self.limits_enforced = False
            self._warn(f"limits NOT enforced: {spare.cgroup_error} "
                       "(--strict makes this an error)")
        if self.image is not None:
            for notice in self.image.notices:
                self._warn(notice)

    def _go(self, spare: Spare) -> Run:
        """A ready spare: its PID 1 hears "go" (from then on it is this run's, not a spare);
        the cell then goes to the interpreter's stdin like any other run's script."""
        self.started = time.monotonic()
        try:
            spare.control.send(b"go")
        except OSError:
            raise SetupError("the container made ahead for this cell died before it ran; "
                             "run the cell again.") from None
        self.mark("run handed to PID 1")
        spare.control.close()
        self.pid1 = spare.pid1.with_stdio(**spare.stdio)
        self.status_fd = spare.status_r
        self._status_buf = spare.status_read
        self.primed = spare.kind.ready.ipython
        return self

    def _send_run(self, spare: Spare, layout: cgroups.Layout, mode: modes.Mode) -> None:
        """The run's config and stdio to the waiting PID 1 (and the network namespace it
        joins, for container:NAME). Its control socket stays open where the runner then
        sets up its network: PID 1 waits there before it starts the workload."""
        spec = self.spec
        cfg = run_config(spec, self.hostname, self.rootless, self.cgroup, layout, self.image)
        ours, theirs = stdio.pipes(spec.script is not None, *self._wants_stdio)
        keep = mode.kind in RUNNER_SETS_UP
        try:
            if mode.kind == "container":
                theirs.append(_network_of(mode.name))
            self.started = time.monotonic()
            config.send(spare.control, cfg, theirs)
        except BaseException:
            for f in ours.values():
                f.close()
            keep = False
            raise
        finally:
            for fd in theirs:
                os.close(fd)
            if not keep:
                spare.control.close()
        self.pid1 = spare.pid1.with_stdio(**ours)
        self.status_fd = spare.status_r
        self.mark("run handed to PID 1")

    def _set_up_network(self, spare: Spare, mode: modes.Mode) -> None:
        """The network helper makes the veth, address, route and limits while PID 1 builds
        the root, and tells PID 1 itself when they are ready (or why not: PID 1 then
        reports it as the run's error). The runner goes on at once."""
        if mode.kind == "pasta":
            return self._set_up_pasta(spare)
        from ..net import client
        spec = self.spec
        try:
            self._network = client.attach(self.pid1, spare.control, self.id, self.name,
                                          self.hostname, mode.name, spec.publish,
                                          spec.network_rate)
        finally:
            spare.control.close()
        self.mark("network asked for (helper)")

    def _set_up_pasta(self, spare: Spare) -> None:
        """Rootless: pasta connects PID 1's namespace (net/rootless.py); PID 1 hears that it
        may go on, or why not (and reports it as the run's error)."""
        from ..net import rootless
        pid = self.pid1.pid
        try:
            self._pasta = rootless.start(pid, self.spec.publish, *self._pasta_ns)
            word = NETWORK_READY
        except SetupError as err:
            word = NETWORK_FAILED + str(err).encode()
        finally:
            for fd in self._pasta_ns:
                os.close(fd)
            self._pasta_ns = ()
        try:
            spare.control.send(word)
        finally:
            spare.control.close()
        self.mark("network set up (pasta)")
        if self._pasta is not None:
            self._net = {"ip": rootless.address(pid), "name": "pasta",
                         "ports": [[p.host_ip, p.host_port, p.container_port, p.protocol]
                                   for p in self.spec.publish]}
            self._counters = NetCounters(None, pid)

    @property
    def network(self) -> dict | None:
        """The helper's answer (address, veth, published ports), None without a bridge or
        where the helper could not attach (PID 1 reports why); pasta's run: its address
        and ports."""
        if self._network is not None and self._net is None:
            try:
                self._net = self._network.result()
            except SetupError:
                self._network = None
                return None
            self._counters = NetCounters(self._net["veth"])
        return self._net

    def usage(self) -> cgroups.Usage:
        """The group's counters, and the veth's where the run has one."""
        usage = self.cgroup.usage()
        if self.network is not None:
            usage.net_rx_bytes, usage.net_tx_bytes = self._counters.read()
        return usage

    # --- status messages from PID 1

    def read_status(self) -> bool:
        """Read what is there; False once PID 1 (and its workload) closed the channel."""
        try:
            data = os.read(self.status_fd, 65536)
        except BlockingIOError:
            return False
        if not data:
            return False
        self._status_buf += data
        *lines, self._status_buf = self._status_buf.split(b"\n")
        for line in lines:
            self._take(json.loads(line))
        return True

    def _take(self, message: dict) -> None:
        if "error" in message and self.error is None:
            self.error = message["error"]
            self.exit_code = message.get("code", self.exit_code)
            self.reported = self.exit_code is not None
        if "exit" in message:
            self.exit_code = message["exit"]
            self.reported = True
        if "mark" in message and self.spec.profile:   # a ready spare marks its steps always
            self.marks.append(tuple(message["mark"]))

    # --- stop

    def signal(self, sig: int) -> None:
        """To the workload (PID 1 forwards it); SIGKILL ends PID 1, which takes all along."""
        if self.pid1 is not None:
            self.pid1.signal(sig)

    def kill_all(self) -> None:
        self.signal(signal.SIGKILL)
        if self.cgroup:
            try:
                self.cgroup.kill()
            except CgroupError:
                pass

    def stop(self, grace: float = 0.3) -> str:
        """SIGINT, then SIGTERM, then SIGKILL for everything, each after `grace` seconds;
        returns the signal that ended it."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.signal(sig)
            if self._exited_within(grace):
                return sig.name
        self.kill_all()
        self._exited_within(2.0)
        return "SIGKILL"

    def _exited_within(self, timeout: float) -> bool:
        try:
            self.pid1.wait(timeout)
            return True
        except TimeoutError:
            return False

    # --- end

    def tell_exit(self, code: int) -> None:
        """The exit status, told by the workload as it leaves (cell/host.py's END): the run
        is over for the caller; PID 1's report of it, a moment later, is not waited for."""
        if not self.reported:
            self.exit_code = 128 - code if code < 0 else code
            self.reported = self.told = True
            self.mark("cell's end told")

    def wait(self) -> int:
        """The workload's exit status. PID 1 reports it and closes its fds, then exits; the
        rest of its exit (its namespaces torn down, ~1 ms) does not hold the run up. Only a
        PID 1 that could not report is waited for."""
        if not self.told:
            self._read_all_status()
        if not self.reported:
            self.pid1.wait()
            # PID 1 is gone, and its namespace with it: what it said is all in the pipe now.
            self._read_all_status()
        if self.exit_code is None:   # PID 1 itself was killed before it could report
            self.exit_code = EXIT_KILLED
        self.ended = time.monotonic()
        return self.exit_code

    def _read_all_status(self) -> None:
        if self.status_fd is not None:
            os.set_blocking(self.status_fd, True)
            while self.read_status():
                pass

    def close(self) -> None:
        """Everything the run made goes: processes, cgroup, fds. Safe to call twice. A PID 1
        that reported the end is left to finish exiting, and its group then removed, off
        the run's path (see teardown). A Ctrl-C meanwhile is taken after."""
        with interrupts_deferred():
            self._close()

    def _close(self) -> None:
        if self.pid1 is not None and not self.reported and self.pid1.running():
            self.kill_all()
            self.pid1.wait()
        if self.status_fd is not None:
            os.close(self.status_fd)
            self.status_fd = None
        if self._counters is not None:
            self._counters.close()
            self._counters = None
        for fd in self._pasta_ns:     # a start that failed before pasta was started
            os.close(fd)
        self._pasta_ns = ()
        if self._pasta is not None:   # its namespace goes with PID 1 (pasta held it open)
            from ..net import rootless
            rootless.stop(self._pasta)
            self._pasta = None
        if self.pid1 is not None or self.cgroup or self._refill:
            if forkserver.in_process():
                teardown.hand_off(self.pid1, self.cgroup)
            else:
                teardown.Teardown.add(self.pid1, self.cgroup, self._refill)
            self.pid1 = self.cgroup = None
            self._refill = []
        self.mark("run closed, teardown handed off")


class NetCounters:
    """A veth's byte counters, read from the host's side (kept-open fds, as the cgroup's):
    what the host's end receives the container sent, and the other way round."""

    def __init__(self, veth: str | None, pasta_pid: int | None = None):
        self.fds, self.last, self.pasta_pid = [], (0, 0), pasta_pid
        base = f"/sys/class/net/{veth}/statistics"
        try:
            for name in ("tx", "rx") if veth else ():
                self.fds.append(os.open(f"{base}/{name}_bytes", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:   # a run over before its first sample: its veth went with it
            self.close()

    def read(self) -> tuple[int, int]:
        """(received, sent) by the container; the last reading once the veth is gone. With
        pasta there is no veth: its namespace's own eth0, through /proc/<PID 1>/net/dev."""
        try:
            if self.fds:
                self.last = tuple(int(os.pread(fd, 32, 0)) for fd in self.fds)
            elif self.pasta_pid:
                from ..net import rootless
                self.last = rootless.counters(self.pasta_pid) or self.last
        except (OSError, ValueError):
            pass
        return self.last

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _network_of(name: str) -> int:
    """An fd of the network namespace of the running container `name`."""
    from ..containers import records
    return records.network_namespace(name)


def _image_for(spec: Spec):
    """The image's layers, command and environment, or None for the host's directories
    (the images package is imported only by runs that name an image)."""
    if spec.image is None:
        return None
    from ..images import runimage
    return runimage.for_spec(spec)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def interrupts_deferred():
    """SIGINT (Ctrl-C, a notebook's stop button), SIGTERM and SIGHUP (a kill, a closed
    terminal) are recorded, not acted on, until the block is done; then acted on. Python
    runs signal handlers in the main thread only, so only there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda sig, _frame: caught.append(sig))
                for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            if callable(previous[sig]):
                previous[sig](sig, None)
            elif previous[sig] == signal.SIG_DFL:
                signal.raise_signal(sig)


__all__ = ["Run"]
