"""A container's log: every line it wrote, one JSON object a line, as Docker's json-file
driver and the images branch's kept containers (images/containers.Log) keep them:
{"stream": "stdout", "time": 1764608707.12, "log": "text\\n"}. The monitor writes it (two
LogWriters, one per stream, appending to one file); `nsmagic logs` reads it, follows it,
takes its tail. Stdlib only."""

from __future__ import annotations

import codecs
import json
import os
import time


def stamp(t) -> str:
    """A log entry's time, as Docker prints it with -t."""
    if not isinstance(t, (int, float)):
        return str(t or "")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


MAX_LINE = 16 << 10   # Docker's json-file splits longer lines into entries of this size


class LogWriter:
    """A binary stream (what runtime.follow's Sink writes to) whose lines land in the log."""

    def __init__(self, fd: int, stream: str):
        self.fd, self.stream = fd, stream
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.partial = ""

    def write(self, data: bytes) -> int:
        text = self.partial + self.decoder.decode(data)
        *lines, self.partial = text.split("\n")
        lines = [line + "\n" for line in lines]
        while len(self.partial) >= MAX_LINE:   # a line without end is kept in pieces, as
            lines.append(self.partial[:MAX_LINE])   # Docker's: never held whole here
            self.partial = self.partial[MAX_LINE:]
        self._append(lines)
        return len(data)

    def flush(self) -> None:
        pass   # every whole line is written at once; a partial one waits for its end

    def finish(self) -> None:
        """The stream ended: what is left of a last line without its newline."""
        rest = self.partial + self.decoder.decode(b"", final=True)
        self.partial = ""
        if rest:
            self._append([rest])

    def _append(self, lines: list[str]) -> None:
        if not lines:
            return
        now = time.time()
        data = "".join(json.dumps({"stream": self.stream, "time": now, "log": line}) + "\n"
                       for line in lines).encode()
        os.write(self.fd, data)   # O_APPEND: one write, not interleaved with the other stream


def open_log(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)


def entries(path: str, tail: int | None = None) -> list[dict]:
    """The log's entries (the last `tail` of them)."""
    try:
        with open(path) as f:
            lines = f.readlines()
    except FileNotFoundError:
        return []
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    return [_parse(line) for line in lines if line.endswith("\n")]


def follow(path: str, done, tail: int | None = None, poll: float = 0.1):
    """The entries, then each new one as it is written, until `done()` is true and the log
    is drained (the container has exited)."""
    for entry in entries(path, tail):
        yield entry
    offset = os.path.getsize(path) if os.path.exists(path) else 0
    buffered = ""
    while True:
        finished = done()
        try:
            with open(path) as f:
                f.seek(offset)
                chunk = f.read()
                offset = f.tell()
        except FileNotFoundError:
            chunk = ""
        buffered += chunk
        *lines, buffered = buffered.split("\n")
        for line in lines:
            yield _parse(line + "\n")
        if finished and not chunk:
            return
        time.sleep(poll)


def _parse(line: str) -> dict:
    try:
        return json.loads(line)
    except ValueError:
        return {"log": line, "stream": "stdout", "time": ""}
