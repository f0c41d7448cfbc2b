"""One run from start to result: the API the magic, the CLI and the benchmark share.

    result = run(Spec.from_argv("--mem 100M -- /bin/true"), out=sys.stdout, err=sys.stderr)

The run's output streams to `out` and `err` as it arrives (with --out/--err it is captured
into the Result instead); `on_sample(usage, run)` sees each cgroup sample."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable

from .cgroups import Usage
from .result import Result, Stop, build
from .runtime.follow import Follower
from .runtime.launcher import Run
from .runtime.teardown import Teardown, settle
from .spec import Spec

__all__ = ["Interrupted", "Result", "Run", "run", "settle", "start"]


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (or the stop button), at any point of it: everything it made
    is gone, and `result` says what it did until then."""

    def __init__(self, result: Result):
        super().__init__()
        self.result = result


def start(spec: Spec, out=None, err=None) -> Run:
    """Start a run and return at once (for detached or many containers); stop() or close()."""
    return Run(spec, out, err).start()


def run(spec: Spec, out=None, err=None,
        on_sample: Callable[[Usage, Run], None] | None = None, channel=None) -> Result:
    """Run to the end. Ctrl-C stops the container (SIGINT, SIGTERM, SIGKILL), cleans up, and
    raises Interrupted with the result. A Python cell run through IPython (spec.ipython)
    speaks through `channel` (cell.channel.Channel: made here when not given)."""
    if spec.ipython and spec.is_python_cell and channel is None:
        from .cell.channel import Channel
        channel = Channel(spec)
    out_buf = io.StringIO() if spec.out_var else None
    err_buf = io.StringIO() if spec.err_var else None
    container = Run(spec, out_buf or out, err_buf or err)
    follower = None
    try:
        container.start()
        if container.warning:   # a banner before the cell runs, never a silent downgrade
            print(f"nsmagic: {container.warning}", file=sys.stderr, flush=True)
        follower = Follower(container, out_buf or out, err_buf or err, on_sample, channel)
        follower.follow()
        container.wait()
        return _result(container, follower.last_sample(), follower, follower.stop, out_buf,
                       err_buf)
    except KeyboardInterrupt:
        stop = follower.stop if follower and follower.stop.interrupted else _stop(container)
        if container.pid1 is not None:
            container.wait()
        usage = follower.last_sample() if follower else None
        result = _result(container, usage, follower, stop, out_buf, err_buf)
        container.close()
        Teardown.settle()   # the cell will say that all of it is gone: make sure first
        raise Interrupted(result) from None
    finally:
        container.close()


def _stop(container: Run) -> Stop:
    """An interrupt outside the follower (while starting, or while waiting for the end)."""
    running = container.pid1 is not None and container.pid1.running()
    return Stop(interrupted=True, by=container.stop() if running else None)


def _result(container: Run, usage, follower, stop: Stop, out_buf, err_buf) -> Result:
    return build(container, usage, follower.samples if follower else [], stop,
                 out_buf.getvalue() if out_buf else None,
                 err_buf.getvalue() if err_buf else None)
