"""Docker's container commands for nsmagic, shared by the CLI (`nsmagic logs web`) and the
magic (`%container logs web`): each takes its argument words, prints, and returns an exit
status. A user's mistake raises SpecError or NsmagicError with one sentence."""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import time

from ..errors import NsmagicError, SpecError
from ..spec import OptionParser
from . import logs, records

STOP_TIMEOUT = 10   # seconds between SIGTERM and SIGKILL, as Docker's


def _parser(prog: str, description: str) -> OptionParser:
    return OptionParser(prog=f"nsmagic {prog}", description=description)


def _running(ref: str) -> dict:
    """A running detached container (the ones this module can act on)."""
    record = records.load(ref)
    if not records.detached(record) or records.status(record) != "running":
        raise NsmagicError(f"the container {record['name']} is not running; start it with "
                           f"`nsmagic start {record['name']}`.")
    return record


# --- logs


def logs_command(argv: list[str]) -> int:
    p = _parser("logs", "what a container wrote, from its log in the store")
    p.add_argument("-f", "--follow", action="store_true", help="go on until it exits")
    p.add_argument("-n", "--tail", metavar="N", help="only the last N lines")
    p.add_argument("-t", "--timestamps", action="store_true", help="each line's time")
    p.add_argument("name", metavar="NAME")
    args = p.parse_args(argv)
    record = records.load(args.name)
    tail = None if args.tail in (None, "all") else _whole(args.tail, "--tail")
    path = records.log_path(record)
    if args.follow:
        entries = logs.follow(path, lambda: records.status(records.load(record["id"]))
                              != "running", tail)
    else:
        entries = logs.entries(path, tail)
    for entry in entries:
        stream = sys.stderr if entry.get("stream") == "stderr" else sys.stdout
        stream.write((logs.stamp(entry.get("time")) + " " if args.timestamps else "")
                     + entry["log"])
        stream.flush()
    return 0


def _whole(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SpecError(f"{flag} {text!r} is not a whole number; give one such as 20.") \
            from None


# --- exec


def exec_command(argv: list[str]) -> int:
    p = _parser("exec", "run a command in a running container: its namespaces, cgroup, "
                        "root, capabilities and seccomp filter")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="a terminal (with -i: a shell)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    p.add_argument("-u", "--user", metavar="UID[:GID]")
    p.add_argument("-w", "--workdir", metavar="DIR")
    p.add_argument("name", metavar="NAME")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
    args = p.parse_args(argv)
    if not args.command:
        raise SpecError("exec needs a COMMAND to run in the container, e.g. nsmagic exec "
                        f"{args.name} ps -e.")
    from ..spec import _parse_env, _parse_user
    from .exec import Exec
    record = _running(args.name)
    run = Exec(record, args.command, out=_binary(sys.stdout), err=_binary(sys.stderr),
               env=[_parse_env(e) for e in args.env], user=_parse_user(args.user),
               workdir=args.workdir, tty=args.tty, stdin=args.interactive)
    try:
        run.start()
        if args.tty:
            from . import terminal
            terminal.relay(run, interactive=args.interactive)
        else:
            _follow(run, args.interactive)
        return run.wait()
    finally:
        run.close()


def _follow(run, interactive: bool) -> None:
    """Stream its output; with -i, our stdin goes to its, as it comes."""
    import threading

    from ..runtime.follow import Follower
    feed, run.pid1.stdin = run.pid1.stdin, None   # the follower feeds scripts, not streams
    if interactive and feed is not None:
        threading.Thread(target=_pass_stdin, args=(feed,), daemon=True).start()
    elif feed is not None:
        feed.close()
    Follower(run, _binary(sys.stdout), _binary(sys.stderr)).follow()


def _binary(stream):
    """The byte stream under a text one (a terminal), or the text stream itself (a
    notebook's, which the follower decodes for)."""
    return getattr(stream, "buffer", stream)


def _pass_stdin(pipe) -> None:
    try:
        while data := os.read(0, 65536):
            pipe.write(data)
    except OSError:
        pass
    finally:
        pipe.close()


# --- top, inspect, wait


def top(argv: list[str]) -> int:
    p = _parser("top", "the processes of a running container")
    p.add_argument("name", metavar="NAME")
    record = _running(p.parse_args(argv).name)
    from .exec import _group
    group = _group(record)
    rows = [("PID", "CPID", "USER", "TIME", "COMMAND")]
    for pid in sorted(group.pids() if group else []):
        rows.append(_process(pid))
    if group:
        group.close()
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _process(pid: int) -> tuple[str, ...]:
    """Its pid on the host and in the container, its uid, CPU time and command line."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read().rpartition(")")[2].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return (str(pid), "?", "?", "?", "(gone)")
    ticks = (int(stat[11]) + int(stat[12])) // os.sysconf("SC_CLK_TCK")
    inside = fields.get("NSpid", "").split()[-1:] or ["?"]
    uid = fields.get("Uid", "?").split()[0]
    return (str(pid), inside[0], uid, f"{ticks // 60:02d}:{ticks % 60:02d}",
            cmd or f"[{fields.get('Name', '?').strip()}]")


def inspect(argv: list[str]) -> int:
    p = _parser("inspect", "containers' or images' records and state, as JSON (Docker's "
                           "keys)")
    p.add_argument("names", nargs="+", metavar="NAME")
    found = []
    for name in p.parse_args(argv).names:
        try:
            record = records.load(name)
        except records.NoSuchContainer:   # as docker inspect: then an image of that name
            from ..images import catalog, views
            from ..images.store import Store
            store = Store().ensure()
            found.append(views.inspect(store, catalog.find(name, store)))
            continue
        found.append(_inspect(record) if records.detached(record) else
                     records._record(record).data)
    print(json.dumps(found, indent=4))
    return 0


def _inspect(r: dict) -> dict:
    state = records.status(r)
    return {"Id": r["id"], "Name": "/" + r["name"], "Created": _iso(r["created"]),
            "Path": (r.get("command") or [""])[0], "Args": (r.get("command") or [])[1:],
            "State": {"Status": state, "Running": state == "running",
                      "Pid": r.get("pid") if state == "running" else 0,
                      "ExitCode": r.get("exit_code"), "Error": r.get("error") or "",
                      "OOMKilled": r.get("oom_killed", False),
                      "StartedAt": _iso(r.get("started_at")),
                      "FinishedAt": _iso(r.get("finished_at"))},
            "Image": r.get("image"), "LogPath": records.log_path(r),
            "Config": {"Hostname": r.get("hostname"), "Cmd": r.get("command"),
                       "Env": [f"{k}={v}" for k, v in r.get("env") or ()],
                       "Options": r.get("argv")},
            "NetworkSettings": {"Networks": {r.get("network"): {"IPAddress": r.get("ip")}},
                                "Ports": r.get("ports")},
            "HostConfig": {"AutoRemove": r.get("auto_remove", False),
                           "CgroupParent": r.get("cgroup")},
            "Monitor": {"Pid": r.get("monitor") if records.monitor_alive(r) else 0}}


def _iso(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else ""


def wait(argv: list[str]) -> int:
    p = _parser("wait", "until containers exit; print each exit code")
    p.add_argument("names", nargs="+", metavar="NAME")
    for name in p.parse_args(argv).names:
        record = records.load(name)
        while records.status(record) == "running":
            time.sleep(0.05)
            record = records.load(record["id"])
        print(_exit_code(record["id"]))
    return 0


def _exit_code(cid: str) -> int:
    """Its recorded exit (a monitor writes it a moment after PID 1 ends); 137 if no monitor
    was left to write one (killed with its container)."""
    deadline = time.monotonic() + 5
    while True:
        record = records.load(cid)
        if record.get("exit_code") is not None or time.monotonic() > deadline \
                or not records.monitor_alive(record):
            code = record.get("exit_code")
            return 137 if code is None else code
        time.sleep(0.02)


# --- stop, kill, start, restart, rm


def stop(argv: list[str]) -> int:
    p = _parser("stop", "SIGTERM to running containers, SIGKILL after the grace period")
    p.add_argument("-t", "--time", "--timeout", default=str(STOP_TIMEOUT), metavar="SECONDS")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    grace = float(_whole(args.time, "-t"))
    for name in args.names:
        record = records.load(name)
        if records.status(record) == "running":
            stop_container(record, grace)
        print(name)
    return 0


def stop_container(record: dict, grace: float) -> None:
    """SIGTERM to PID 1 (it forwards it to the workload), SIGKILL after `grace` seconds;
    returns once the monitor has recorded the end."""
    try:
        fd = records.pidfd(record)
    except NsmagicError:
        return
    try:
        signal.pidfd_send_signal(fd, signal.SIGTERM)
        if not select.select([fd], [], [], grace)[0]:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            select.select([fd], [], [], 10)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)
    try:
        _exit_code(record["id"])
    except records.NoSuchContainer:   # --rm: its monitor removed it once it ended
        pass


def kill(argv: list[str]) -> int:
    p = _parser("kill", "send a signal to running containers (PID 1 forwards it)")
    p.add_argument("-s", "--signal", default="KILL", metavar="SIGNAL")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    sig = _signal(args.signal)
    for name in args.names:
        fd = records.pidfd(_running(name))
        try:
            signal.pidfd_send_signal(fd, sig)
        finally:
            os.close(fd)
        print(name)
    return 0


def _signal(text: str) -> int:
    name = text.upper()
    if name.isdigit():
        return int(name)
    try:
        return signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except KeyError:
        raise SpecError(f"--signal {text!r} is not a signal; give a name such as TERM or "
                        "HUP, or a number.") from None


def start(argv: list[str]) -> int:
    p = _parser("start", "run exited containers again, with the options they were run with")
    p.add_argument("names", nargs="+", metavar="NAME")
    for name in p.parse_args(argv).names:
        start_container(records.load(name))
        print(name)
    return 0


def start_container(record: dict) -> None:
    from .exec import container_spec
    from .monitor import detach
    if not records.detached(record):
        raise NsmagicError(f"{record['name']} was not started with -d: only a detached "
                           "container can be started again.")
    if records.status(record) == "running":
        return
    detach(container_spec(record).replace(name=record["name"]), record["argv"],
           record=record)


def restart(argv: list[str]) -> int:
    p = _parser("restart", "stop, then start again")
    p.add_argument("-t", "--time", default=str(STOP_TIMEOUT), metavar="SECONDS")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    for name in args.names:
        record = records.load(name)
        stop_container(record, float(_whole(args.time, "-t")))
        start_container(records.load(record["id"]))
        print(name)
    return 0


def rm(argv: list[str]) -> int:
    p = _parser("rm", "forget exited containers (with -f, running ones too: killed first)")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    for name in args.names:
        record = records.load(name)
        if records.status(record) == "running":
            if not args.force:
                raise NsmagicError(f"the container {record['name']} is running; stop it "
                                   "first, or use rm -f.")
            if records.detached(record):   # a kept cell's run is its runner's to stop
                stop_container(record, 0)
        if records.detached(record):
            _monitor_gone(record["id"])
        records.remove(records.load(record["id"]))
        print(name)
    _sweep()
    return 0


def _sweep() -> None:
    """A monitor killed outright took its container along (PDEATHSIG) but left its empty
    groups, named after it: remove them now rather than at some later start."""
    from .. import cgroups
    try:
        cgroups.sweep()
    except (OSError, NsmagicError):
        pass


def _monitor_gone(cid: str, within: float = 10.0) -> None:
    """The monitor writes the exit, then goes: the record is removed after it."""
    deadline = time.monotonic() + within
    while records.monitor_alive(records.load(cid)) and time.monotonic() < deadline:
        time.sleep(0.02)


# --- stats


def stats(argv: list[str]) -> int:
    p = _parser("stats", "CPU, memory, network I/O and pids of running containers")
    p.add_argument("--no-stream", action="store_true", help="one reading, then exit")
    p.add_argument("names", nargs="*", metavar="NAME")
    args = p.parse_args(argv)
    from ..ps import stats_table
    while True:
        text = stats_table(args.names or None)
        if args.no_stream:
            print(text)
            return 0
        print("\033[2J\033[H" + text, flush=True)


COMMANDS = {"logs": logs_command, "exec": exec_command, "top": top, "stop": stop, "kill": kill,
            "start": start, "restart": restart, "rm": rm, "inspect": inspect, "wait": wait,
            "stats": stats}
