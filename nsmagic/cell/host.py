"""A Python cell's program inside its container: it runs the cell through IPython's own
InteractiveShell and speaks to the runner over one ordered channel.

Runs IN THE CONTAINER, as the workload PID 1 spawns, with the kernel's own interpreter.
nsmagic is not visible there (an editable install lives outside the kernel's environment), so
the runner sends this file first on stdin (compiled: program()), read by
nsmagic.cell.BOOTSTRAP; it imports only the standard library and IPython. The runner imports
this module too, for the framing: nothing runs at import.

Frames: a kind byte, a 4-byte big-endian length, the payload.

    runner -> host, on stdin    CELL {code, inputs, outputs, count, colors, profile}, a VALUE
                                per --input (name NUL pickle), later a REPLY per input request
    host -> runner, on stdout   STDOUT and STDERR text, DISPLAY, CLEAR, RESULT (the last
                                expression), ERROR (IPython's traceback), INPUT (a prompt),
                                VARIABLE per --output, MARK (--profile), FAILED, END

The cell's own fds are then: 0 /dev/null, 1 and 2 pipes this program reads, so what a
subprocess writes becomes stream frames too (ordered with Python's own writes as well as
two readers can: Python's writes in the order made, a subprocess's when they are read).
"""

from __future__ import annotations

import codecs
import fcntl
import functools
import io
import json
import marshal
import os
import select
import signal
import struct
import sys
import threading
import time

HEADER = struct.Struct(">cI")
MAX_FRAME = 1 << 30
CELL, VALUE, REPLY = b"C", b"V", b"I"
STDOUT, STDERR, DISPLAY, CLEAR, RESULT, ERROR = b"o", b"e", b"d", b"c", b"r", b"x"
INPUT, VARIABLE, MARK, FAILED, END = b"i", b"v", b"m", b"f", b"z"
EXIT_FAILED, EXIT_ERROR = 125, 1
FLUSH_DELAY = 0.02   # seconds a stream's text may wait to go out with the next write



def pack(kind: bytes, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def pack_json(kind: bytes, message) -> bytes:
    return pack(kind, json.dumps(message, default=_plain).encode())


@functools.lru_cache(maxsize=1)
def program() -> bytes:
    """What the runner writes first to a Python cell's stdin: this file compiled, as marshal
    data, length-prefixed. The container runs this very interpreter (the runner's), so the
    format is its own; compiling this file there would cost every first cell ~13 ms."""
    with open(__file__, "rb") as f:
        code = compile(f.read(), "nsmagic-cell", "exec")
    data = marshal.dumps(code)
    return b"%010d" % len(data) + data


class Frames:
    """Frames out of a byte stream, in order. A frame longer than `limit` is refused: a
    container that lies about a length must not make the reader hold gigabytes."""

    def __init__(self, limit: int = MAX_FRAME):
        self.buffer = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self.buffer += data
        frames = []
        while len(self.buffer) >= HEADER.size:
            kind, size = HEADER.unpack_from(self.buffer)
            if size > self.limit:
                raise ValueError(f"a message of {size} bytes, more than {self.limit}")
            end = HEADER.size + size
            if len(self.buffer) < end:
                break
            with memoryview(self.buffer) as view:    # one copy of a payload, not two
                frames.append((kind, bytes(view[HEADER.size:end])))
            del self.buffer[:end]
        return frames


def read_frame(fd: int) -> tuple[bytes, bytes]:
    kind, size = HEADER.unpack(_read_exact(fd, HEADER.size))
    return kind, _read_exact(fd, size)


def _read_exact(fd: int, size: int) -> bytearray:
    """Read into one buffer of the exact size (a 10 MB --input is not copied again)."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            raise EOFError("the notebook closed the cell's channel")
        got += n
    return buffer


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _plain(value):
    """What JSON cannot say as it is: bytes (a PNG) as base64, as Jupyter sends images."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        import base64
        return base64.b64encode(value).decode("ascii")
    return str(value)


# --- output: one ordered stream of frames


class Output:
    """Everything the cell shows, in order, as frames on the channel. Stream text is kept a
    moment (FLUSH_DELAY) so a loop of prints goes out in a few frames; any other frame first
    sends the text before it. A pump thread reads the cell's fds 1 and 2 (subprocesses) and
    sends text that waited long enough."""

    def __init__(self, channel: int, captured: dict[int, bytes]):
        self.channel = channel
        self.lock = threading.Lock()
        self.segments: list[list] = []      # [kind, [text, ...]] in the order written
        self.size = 0
        self.since = 0.0                    # when the oldest unsent text was written
        self.child = False                  # a fork of this process: no channel of its own
        self.captured = {fd: (kind, codecs.getincrementaldecoder("utf-8")("replace"))
                         for fd, kind in captured.items()}
        self.reading = threading.Lock()     # one reader of those pipes at a time: in order
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.drain_asked, self.drained = threading.Event(), threading.Event()
        os.register_at_fork(after_in_child=self._forked)
        threading.Thread(target=self._pump, daemon=True, name="nsmagic-output").start()

    def write(self, kind: bytes, text: str) -> None:
        """Text the cell's Python wrote. The first after a flush takes what subprocesses
        wrote before it out of their pipes first, so that it comes after that."""
        if self.child:   # a fork's text goes through fds 1 and 2, which the parent reads,
            self.held[kind] = self.held.get(kind, "") + text    # whole lines at a time
            if "\n" in text:
                self._write_held(kind, self.held[kind].rpartition("\n"))
            return
        if not self.segments and self.captured:
            with self.reading:
                for fd in list(self.captured):
                    self._read_captured(fd)
        self._append(kind, text)

    def _append(self, kind: bytes, text: str) -> None:
        with self.lock:
            first = not self.segments
            if self.segments and self.segments[-1][0] == kind:
                self.segments[-1][1].append(text)
            else:
                self.segments.append([kind, [text]])
            self.size += len(text)
            if first:
                self.since = time.monotonic()
            full = self.size >= 1 << 16
        if full:
            self.flush()
        elif first:
            self._wake()

    def flush(self) -> None:
        if self.child:
            for kind, text in list(self.held.items()):
                self._write_held(kind, (text, "", ""))
            return
        with self.lock:
            self._send_text()

    def _write_held(self, kind: bytes, parts: tuple[str, str, str]) -> None:
        lines, newline, rest = parts
        self.held[kind] = rest
        os.write(1 if kind == STDOUT else 2, (lines + newline).encode("utf-8", "replace"))

    def send(self, frame: bytes, *rest: bytes) -> None:
        """A frame (its bytes, or its parts: a large value is written from its own buffer)
        after all text written before it."""
        if self.child:
            return
        with self.lock:
            self._send_text()
            for part in (frame, *rest):
                _write_all(self.channel, part)

    def drain(self) -> None:
        """The cell is over: what its subprocesses wrote is read and sent, then all text."""
        self.drained.clear()
        self.drain_asked.set()
        self._wake()
        self.drained.wait(5.0)
        self.flush()

    def _send_text(self) -> None:
        if self.segments:
            data = b"".join(pack(kind, "".join(texts).encode("utf-8", "replace"))
                            for kind, texts in self.segments)
            self.segments.clear()
            self.size = 0
            _write_all(self.channel, data)

    def _wake(self) -> None:
        try:
            os.write(self.wake_w, b"\0")
        except BlockingIOError:
            pass   # already woken

    def _pump(self) -> None:
        while True:
            with self.lock:
                due = self.since + FLUSH_DELAY if self.segments else None
            timeout = None if due is None else max(0.0, due - time.monotonic())
            try:
                ready = select.select([self.wake_r, *self.captured], [], [], timeout)[0]
            except OSError:    # fds closed under it (only ever in a test): nothing to pump
                return
            for fd in ready:
                if fd == self.wake_r:
                    os.read(fd, 4096)
                else:
                    with self.reading:
                        self._read_captured(fd)
            if self.drain_asked.is_set():
                with self.reading:
                    self._read_all_captured()
                self.drain_asked.clear()
                self.drained.set()
            with self.lock:
                if self.segments and time.monotonic() >= self.since + FLUSH_DELAY:
                    self._send_text()

    def _read_captured(self, fd: int) -> bool:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError:   # closed under us (the cell closed fds it does not own)
            data = b""
        kind, decoder = self.captured[fd]
        if not data:     # every writer closed fd 1 or 2: nothing more will come there
            del self.captured[fd]
            return False
        text = decoder.decode(data)
        if text:
            self._append(kind, text)
        return True

    def _read_all_captured(self) -> None:
        """What is in the pipes now (at most 4 MiB each: a background writer that never
        stops must not hold the cell's end)."""
        for fd in list(self.captured):
            for _ in range(64):
                if not self._read_captured(fd):
                    break

    def _forked(self) -> None:
        self.child = True
        self.lock = threading.Lock()
        self.segments = []
        self.held: dict[bytes, str] = {}


class Stream(io.TextIOBase):
    """sys.stdout or sys.stderr of the cell. fileno() is the cell's fd 1 or 2, so a
    subprocess given sys.stdout writes where its output is read."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, output: Output, kind: bytes, fd: int):
        super().__init__()
        self.output, self.kind, self.fd = output, kind, fd
        self.name = "<stdout>" if kind == STDOUT else "<stderr>"
        self.buffer = _BinaryStream(self)

    def writable(self) -> bool:
        return True

    def write(self, text) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            self.output.write(self.kind, text)
        return len(text)

    def flush(self) -> None:
        self.output.flush()

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return False


class _BinaryStream(io.RawIOBase):
    """sys.stdout.buffer: bytes decoded as UTF-8 (a split character waits for its rest)."""

    def __init__(self, text: Stream):
        super().__init__()
        self.text = text
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.text.write(self.decoder.decode(bytes(data)))
        return len(data)

    def flush(self) -> None:
        self.text.flush()


# --- input: the notebook's input box


class Prompts:
    """input() and getpass(): a prompt to the runner, which asks the notebook, and the reply
    read back from the channel (one at a time)."""

    def __init__(self, output: Output, fd: int):
        self.output, self.fd = output, fd
        self.lock = threading.Lock()

    def input(self, prompt="") -> str:
        return self.ask(str(prompt), False)

    def getpass(self, prompt="Password: ", stream=None) -> str:
        return self.ask(str(prompt), True)

    def ask(self, prompt: str, password: bool) -> str:
        if self.output.child:
            raise EOFError("input() in a process forked by a container cell has no input box")
        with self.lock:
            self.output.send(pack_json(INPUT, {"prompt": prompt, "password": password}))
            kind, payload = read_frame(self.fd)
        reply = json.loads(payload) if kind == REPLY else {"eof": "no reply from the notebook"}
        if "eof" in reply:
            raise EOFError(reply["eof"])
        return reply["value"]


# --- the shell


def _shell_class(output: Output):
    """InteractiveShell with a display publisher and a displayhook that send frames, and
    tracebacks sent as ERROR frames (IPython's own, of the cell's frames only)."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    class Publisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False,
                    **kwargs):
            if output.child:     # a fork has no channel: its text where a script's would go
                output.write(STDOUT, str(data.get("text/plain", "")) + "\n")
                return
            output.send(pack_json(DISPLAY, {"data": data, "metadata": metadata or {},
                                            "transient": transient or {},
                                            "update": bool(update)}))

        def clear_output(self, wait=False):
            output.send(pack_json(CLEAR, {"wait": bool(wait)}))

    class Hook(DisplayHook):
        def start_displayhook(self):
            pass

        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            output.send(pack_json(RESULT, {"data": format_dict, "metadata": md_dict or {}}))

        def finish_displayhook(self):
            pass

    class Shell(InteractiveShell):
        display_pub_class = Publisher
        displayhook_class = Hook
        exit_code: int | None = None     # sys.exit(n) in the cell
        error_sent = False
        warming = False                  # a cell run ahead to warm caches: nothing is sent

        def _showtraceback(self, etype, evalue, stb):
            if self.warming:
                return
            output.send(pack_json(ERROR, {"ename": etype.__name__, "evalue": str(evalue),
                                          "traceback": list(stb)}))
            self.error_sent = True

        def showtraceback(self, exc_tuple=None, *args, **kwargs):
            etype, value = (exc_tuple or sys.exc_info())[:2]
            if etype is not None and issubclass(etype, SystemExit):
                self.exit_code = _exit_status(value)    # a script's exit, not an error
                return
            super().showtraceback(exc_tuple, *args, **kwargs)

        def show_usage_error(self, exc):
            self._showtraceback(type(exc), exc, [f"UsageError: {exc}"])

    return Shell


def _exit_status(value: SystemExit) -> int:
    code = value.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _pager(output: Output):
    """`obj?` and %pdoc: the page as output of the cell (as Jupyter shows it inline)."""
    def show_in_pager(_shell, data, start=0, screen_lines=0):
        bundle = data if isinstance(data, dict) else {"text/plain": str(data)}
        output.send(pack_json(DISPLAY, {"data": bundle, "metadata": {}, "transient": {},
                                        "update": False}))
    return show_in_pager


def start_shell(output: Output, prompts: Prompts, warm: bool = True):
    """IPython, as a kernel would have it: the inline matplotlib backend, the notebook's
    input box; then (`warm`: no cell is waiting yet) cells run ahead, so that the first real
    one finds its caches warm."""
    import builtins
    import getpass
    import importlib.util
    import warnings

    from traitlets.config import Config

    if not os.environ.get("MPLBACKEND") and importlib.util.find_spec("matplotlib_inline"):
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    config = Config()
    config.HistoryManager.enabled = False       # no sqlite file: the container is one cell
    shell = _shell_class(output).instance(config=config)
    shell.set_hook("show_in_pager", _pager(output))
    builtins.input, getpass.getpass = prompts.input, prompts.getpass
    warnings.filterwarnings("ignore", message="To exit: use")   # sys.exit in a cell: its code
    if warm:
        _warm(shell)
    return shell


def _warm(shell) -> None:
    """Cells run ahead, their output dropped: the first real cell (in a container made ahead,
    before anyone waits) finds the compiler's caches and the traceback formatter's imports
    warm (a first traceback costs ~70 ms, a later one ~10; the imports ~4 MiB)."""
    shell.warming = True
    try:
        shell.run_cell("pass", store_history=False, silent=True)
        shell.run_cell("def _f():\n    return 1 / 0\n_f()", store_history=False, silent=True)
    finally:
        shell.warming = False
        shell.user_ns.pop("_f", None)
        for name in ("last_type", "last_value", "last_traceback", "last_exc"):
            sys.__dict__.pop(name, None)


# --- one cell, start to end


class Host:
    """The cell's process: its fds set up, IPython started, then one cell."""

    def __init__(self):
        # The channel's ends away from 0-2 (close-on-exec: no subprocess inherits them).
        self.proto = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 10)
        channel = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 10)
        self.fatal = fcntl.fcntl(2, fcntl.F_DUPFD_CLOEXEC, 10)   # for this program's own bugs
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        captured = {}
        for fd, kind in ((1, STDOUT), (2, STDERR)):
            r, w = os.pipe2(os.O_CLOEXEC)
            os.dup2(w, fd)           # inheritable: subprocesses write here
            os.close(w)
            os.set_blocking(r, False)
            captured[r] = kind
        self.output = Output(channel, captured)
        sys.stdout = Stream(self.output, STDOUT, 1)
        sys.stderr = Stream(self.output, STDERR, 2)
        sys.argv = [""]
        self.profile = False

    def mark(self, step: str) -> None:
        if self.profile:
            self.output.send(pack_json(MARK, {"step": step, "t": time.monotonic()}))

    def fail(self, message: str) -> None:
        self.output.drain()
        self.output.send(pack_json(FAILED, {"message": message}))
        os._exit(EXIT_FAILED)

    def run(self) -> None:
        # A container made ahead has no cell yet: time to warm up. Otherwise the cell is
        # there already, and waits for whatever is done first.
        waiting = bool(select.select([self.proto], [], [], 0)[0])
        try:
            shell = start_shell(self.output, Prompts(self.output, self.proto), warm=not waiting)
        except ImportError as err:
            self.fail(f"IPython cannot be imported in the container ({err}); a Python cell "
                      "runs through the kernel's own IPython, which must be installed in "
                      "the kernel's environment (a venv or the system's), not in ~/.local")
        kind, payload = read_frame(self.proto)    # a container made ahead waits here
        cell = json.loads(payload)
        self.profile = cell.get("profile", False)
        self.mark("cell received")
        self.load_inputs(shell, cell["inputs"])
        if cell.get("colors") and cell["colors"] != shell.colors:
            shell.colors = cell["colors"]
        shell.execution_count = cell.get("count") or 1
        result = shell.run_cell(cell["code"], store_history=True)
        self.mark("cell ran")
        _join_threads()
        code = self.status(shell, result)
        self.send_outputs(shell, cell["outputs"])
        self.output.drain()
        self.output.send(pack_json(END, {"exit": code}))
        self.exit(code)

    def load_inputs(self, shell, names: list[str]) -> None:
        import pickle
        size = 0
        for _ in names:
            kind, payload = read_frame(self.proto)
            cut = payload.index(b"\0")
            name, data = payload[:cut].decode(), memoryview(payload)[cut + 1:]
            size += len(data)
            try:
                shell.user_ns[name] = pickle.loads(data)
            except Exception as err:   # noqa: BLE001 - any failure of a load is the user's
                self.fail(f"--input {name}: the container cannot load it ({type(err).__name__}"
                          f": {err}); a class or function defined in the notebook does not "
                          "exist in the container: define it in the cell, or pass plain data")
        if names:
            self.mark(f"--input loaded ({_size(size)})")

    def status(self, shell, result) -> int:
        """The cell's exit status: 0, sys.exit's code, 1 for an exception (sent as ERROR if
        IPython did not show it: exception groups are printed, not shown), -SIGINT."""
        if shell.exit_code is not None:
            return shell.exit_code
        if result.success:
            return 0
        error = result.error_in_exec or result.error_before_exec
        if isinstance(error, KeyboardInterrupt):
            return -signal.SIGINT
        if not shell.error_sent and error is not None:
            import traceback
            self.output.send(pack_json(ERROR, {
                "ename": type(error).__name__, "evalue": str(error),
                "traceback": traceback.format_exception(error)}))
        return EXIT_ERROR

    def send_outputs(self, shell, names: list[str]) -> None:
        import pickle
        size = 0
        for name in names:
            header, data = {"name": name}, b""
            if name not in shell.user_ns:
                header["error"] = "missing"
            else:
                value = shell.user_ns[name]
                header["type"] = f"{type(value).__module__}.{type(value).__qualname__}"
                try:
                    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception as err:   # noqa: BLE001 - why it cannot, for the sentence
                    header["error"] = f"{type(err).__name__}: {err}"
            size += len(data)
            head = json.dumps(header).encode() + b"\n"
            self.output.send(HEADER.pack(VARIABLE, len(head) + len(data)) + head, data)
        if names:
            self.mark(f"--output pickled ({_size(size)})")

    def exit(self, code: int) -> None:
        """Straight out: the interpreter's own teardown (modules, IPython's atexit work)
        would only make the cell's end wait. Interrupted: by SIGINT, as Python would."""
        for stream in (sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code)


def _join_threads() -> None:
    """Threads the cell started and did not make daemons: a script would wait for them."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()


def _size(n: int) -> str:
    for unit, power in (("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if n >= 1024 ** power:
            return f"{n / 1024 ** power:.1f} {unit}"
    return f"{n} B"


def main() -> None:
    try:
        host = Host()
    except BaseException:   # noqa: BLE001 - before the channel: a traceback is all we have
        os._exit(EXIT_FAILED)
    try:
        host.run()
    except EOFError:            # the runner went before the cell came (a spare dropped)
        os._exit(EXIT_FAILED)
    except KeyboardInterrupt:   # stopped before or after the cell: as Python would end
        host.exit(-signal.SIGINT)
    except BaseException:   # noqa: BLE001 - a bug here: say it where the runner shows it
        import traceback
        os.write(host.fatal, ("nsmagic: the cell's host failed:\n"
                              + traceback.format_exc()).encode())
        os._exit(EXIT_FAILED)


if __name__ == "nsmagic_cell":
    main()
