"""The runner's end of a Python cell's channel (host.py holds the other end and the framing).

Runs in the runner (the notebook kernel). It writes the cell's opening to the cell's stdin
(host.py's source, unless a container made ahead has it already; the cell; the --input
values), and turns each frame from the cell's stdout into what a notebook cell shows, as it
arrives: stream text on the kernel's stdout and stderr (the other one flushed first, so that
their order holds), display_data and clear_output through IPython's display publisher, and
input requests through the kernel's own input() and getpass() (the notebook's input box).
The last expression, the exception, the --output values and a failure of the host itself are
kept for the magic to show once the run is over.

Frames come from the container, which is not trusted: each is checked for its shape, and a
frame that is not what the channel expects ends the channel with one sentence."""

from __future__ import annotations

import json
import re

from . import host

# A widget's model lives in the container's process: the notebook could not find it.
STRIPPED = ("application/vnd.jupyter.widget-view+json",)
NO_INPUT = ("input() in a container cell asks in the notebook's input box, and this frontend "
            "takes no input (it runs cells with allow_stdin off, as nbclient and nbconvert "
            "do), so the container's input() ends here")


class CellOutput:
    """Out[n] of a container cell: the bundle the container's displayhook made (the object
    itself stays in the container; --output brings a variable back)."""

    def __init__(self, data: dict, metadata: dict):
        self.data, self.metadata = data, metadata

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.data, self.metadata

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", ""))


class RemoteError(Exception):
    """An exception raised in a container cell. IPython shows `_render_traceback_`: the
    container's own traceback of the cell's frames, as IPython formatted it there."""

    def __init__(self, evalue: str, traceback: list[str]):
        super().__init__(evalue)
        self.traceback = traceback

    def _render_traceback_(self) -> list[str]:
        return self.traceback


def remote_error(ename: str, evalue: str, traceback: list[str]) -> RemoteError:
    """An exception whose class bears the container's exception's name, so that the error
    message of the cell says ZeroDivisionError, not RemoteError."""
    name = re.sub(r"\W", "_", ename)[:100] or "Error"
    cls = type(name, (RemoteError,), {"__module__": "nsmagic.container"})
    return cls(evalue, traceback)


class ChannelError(ValueError):
    """A frame that is not what the channel expects."""


class Channel:
    """Stands for the cell's stdout pipe in the follower (as a follow.Sink does): write()
    takes its bytes, b"" at its end. `outbox` holds what is to go to the cell's stdin."""

    broken = False

    def __init__(self, spec, inputs: list[tuple[str, bytes]] = (), count: int | None = None,
                 colors: str | None = None):
        self.spec, self.inputs, self.count, self.colors = spec, list(inputs), count, colors
        self.frames = host.Frames()
        self.outbox = bytearray()
        self.run = self.out = self.err = self.last = None
        self.result: CellOutput | None = None
        self.error: dict | None = None         # ename, evalue, traceback
        self.failure: str | None = None        # the host could not run the cell
        self.problem: str | None = None        # the channel broke
        self.outputs: dict[str, tuple[dict, memoryview]] = {}
        self.ended = False
        self.exit: int | None = None           # the cell's exit status, as the host said

    def opening(self, run, out, err) -> list[bytes]:
        """The buffers for the cell's stdin at the start, in order (a --input's pickle is
        one of them, not copied); `out` and `err` take the cell's text."""
        self.run, self.out, self.err = run, out, err
        cell = {"code": self.spec.script or "", "inputs": [name for name, _ in self.inputs],
                "outputs": list(self.spec.outputs), "count": self.count,
                "colors": self.colors, "profile": self.spec.profile}
        parts = [] if getattr(run, "primed", False) else [host.program()]
        parts.append(host.pack_json(host.CELL, cell))
        for name, data in self.inputs:
            label = name.encode() + b"\0"
            parts += [host.HEADER.pack(host.VALUE, len(label) + len(data)) + label, data]
        return parts

    def sent(self) -> None:
        """All that was for the cell's stdin is in (the opening, or a reply since)."""
        if self.run is not None and self.inputs is not None:
            size = sum(len(data) for _, data in self.inputs)
            self.run.mark(f"cell and --input sent ({_size(size)})" if self.inputs
                          else "cell sent")
            self.inputs = None    # sent: no copy of them kept

    def write(self, data: bytes) -> None:
        if not data or self.problem:
            return
        try:
            for kind, payload in self.frames.feed(data):
                self._take(kind, payload)
        except (ChannelError, ValueError, KeyError, TypeError) as err:
            self.problem = (f"the container broke the cell's channel ({err}); what it sent "
                            "after that is not shown")
        if self.ended or self.problem or not _flushes_itself(self.last):
            self._flush()

    def _flush(self) -> None:
        if self.last is not None:
            self.last.flush()

    def take_outbox(self) -> bytes:
        data, self.outbox = bytes(self.outbox), bytearray()
        return data

    # --- one frame

    def _take(self, kind: bytes, payload: bytes) -> None:
        handler = self._HANDLERS.get(kind)
        if handler is None:
            raise ChannelError(f"a message of unknown kind {kind!r}")
        handler(self, payload)

    def _stream(self, payload: bytes, target) -> None:
        if self.last is not target:
            self._flush()    # the other stream's text goes first: their order holds
        self.last = target
        text = payload.decode("utf-8", "replace")
        if hasattr(target, "encoding"):
            target.write(text)
        else:
            target.write(text.encode())

    def _display(self, payload: bytes) -> None:
        message = _object(payload)
        transient = _object_field(message, "transient")
        display_id = transient.get("display_id")
        publish(_bundle(message.get("data")), _object_field(message, "metadata"),
                {"display_id": display_id} if isinstance(display_id, str) else None,
                bool(message.get("update")), self.out)

    def _clear(self, payload: bytes) -> None:
        wait = bool(_object(payload).get("wait"))
        try:
            from IPython.display import clear_output
        except ImportError:
            return
        clear_output(wait)

    def _result(self, payload: bytes) -> None:
        message = _object(payload)
        if self.result is not None:   # more than one (ast_node_interactivity = "all")
            publish(self.result.data, self.result.metadata, None, False, self.out)
        self.result = CellOutput(_bundle(message.get("data")),
                                 _object_field(message, "metadata"))

    def _error(self, payload: bytes) -> None:
        message = _object(payload)
        trace = message.get("traceback")
        if not isinstance(trace, list) or not all(isinstance(line, str) for line in trace):
            raise ChannelError("a traceback that is not a list of lines")
        self.error = {"ename": str(message.get("ename", "Error")),
                      "evalue": str(message.get("evalue", "")), "traceback": trace}

    def _input(self, payload: bytes) -> None:
        message = _object(payload)
        reply = ask(str(message.get("prompt", "")), bool(message.get("password")))
        self.outbox += host.pack_json(host.REPLY, reply)

    def _variable(self, payload: bytes) -> None:
        cut = payload.find(b"\n")
        if cut < 0:
            raise ChannelError("a variable without its header")
        header, data = _object(payload[:cut]), memoryview(payload)[cut + 1:]
        name = header.get("name")
        if name not in self.spec.outputs or name in self.outputs:
            raise ChannelError(f"a variable that --output did not ask for ({name!r:.40})")
        self.outputs[name] = (header, data)

    def _mark(self, payload: bytes) -> None:
        message = _object(payload)
        step, when = message.get("step"), message.get("t")
        if (self.spec.profile and self.run is not None and isinstance(step, str)
                and isinstance(when, float)):
            self.run.marks.append((step[:60], when))

    def _failed(self, payload: bytes) -> None:
        self.failure = str(_object(payload).get("message", "the cell's host failed"))[:2000]

    def _end(self, payload: bytes) -> None:
        code = _object(payload).get("exit")
        if not isinstance(code, int) or not -64 < code < 256:
            raise ChannelError("an end without an exit status")
        self.ended, self.exit = True, code

    _HANDLERS = {
        host.STDOUT: lambda self, p: self._stream(p, self.out),
        host.STDERR: lambda self, p: self._stream(p, self.err),
        host.DISPLAY: _display, host.CLEAR: _clear, host.RESULT: _result, host.ERROR: _error,
        host.INPUT: _input, host.VARIABLE: _variable, host.MARK: _mark, host.FAILED: _failed,
        host.END: _end,
    }


# --- the notebook's side of a frame


def _flushes_itself(stream) -> bool:
    """A kernel's stream sends what it holds within its flush interval (0.2 s) on its own;
    flushing it after every read would wait for its I/O thread each time."""
    return stream is None or hasattr(stream, "flush_interval")


def publish(data: dict, metadata: dict, transient: dict | None, update: bool, out) -> None:
    """display_data (or update_display_data) of the cell; outside IPython, its text."""
    from IPython.core.interactiveshell import InteractiveShell
    if not InteractiveShell.initialized():
        if not update and out is not None:
            out.write(str(data.get("text/plain", "")) + "\n")
        return
    from IPython.display import publish_display_data
    if update:
        publish_display_data(data, metadata, transient=transient, update=True)
    else:
        publish_display_data(data, metadata, transient=transient)


def ask(prompt: str, password: bool) -> dict:
    """The kernel's input() or getpass(): the notebook's input box. A frontend that takes no
    input (ipykernel's StdinNotImplementedError), or no terminal: EOF, with a sentence."""
    import builtins
    import getpass
    try:
        value = getpass.getpass(prompt) if password else builtins.input(prompt)
    except (EOFError, NotImplementedError, OSError):
        return {"eof": NO_INPUT}
    return {"value": str(value)}


def _object(payload: bytes) -> dict:
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError) as err:
        raise ChannelError(f"a message that is not JSON ({err})") from None
    if not isinstance(value, dict):
        raise ChannelError("a message that is not a JSON object")
    return value


def _object_field(message: dict, key: str) -> dict:
    value = message.get(key) or {}
    if not isinstance(value, dict):
        raise ChannelError(f"a {key} that is not a JSON object")
    return value


def _bundle(data) -> dict:
    """A MIME bundle as Jupyter takes it: text values, or JSON for JSON types."""
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ChannelError("a display bundle that is not a JSON object")
    bundle = {k: v for k, v in data.items() if k not in STRIPPED}
    if "text/plain" not in bundle:
        bundle["text/plain"] = ""
    return bundle


def _size(n: int) -> str:
    from ..spec import format_size
    return format_size(n)
