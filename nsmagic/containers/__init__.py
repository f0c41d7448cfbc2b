"""Containers that outlive their command (`nsmagic run -d`): kept in the store, each run by a
monitor process of its own, and the commands that act on them, Docker's.

    records.py   the state store: <store>/containers/<id>/container.json and its log, names
    logs.py      the log, in Docker's json-file format: written by the monitor, read by logs
    monitor.py   `nsmagic-monitor`: starts the container, holds its pipes, writes its log,
                 records its exit (the containerd-shim / conmon role)
    exec.py      `exec`: a process joined to a running container (inside/enter.py joins)
    commands.py  ps, logs, exec, top, stop, kill, start, restart, rm, inspect, wait, stats"""
