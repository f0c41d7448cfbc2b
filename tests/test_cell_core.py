"""The pieces of a container cell that need no container (core tier): the channel's framing,
the host's ordered output, the runner's reading of frames, the --output unpickler, the
options."""

from __future__ import annotations

import datetime
import decimal
import fractions
import io
import os
import pickle
import time

import pytest

from nsmagic.cell import host, variables
from nsmagic.cell.channel import Channel
from nsmagic.cell.variables import VariableError
from nsmagic.errors import SpecError
from nsmagic.spec import Spec

pytestmark = pytest.mark.core


def test_frames_come_out_whole_and_in_order_however_the_bytes_are_cut():
    data = b"".join(host.pack(kind, payload) for kind, payload in
                    ((host.STDOUT, b"one"), (host.STDERR, b""), (host.VARIABLE, b"x" * 70000)))
    reader = host.Frames()
    frames = []
    for i in range(0, len(data), 7):
        frames += reader.feed(data[i:i + 7])
    assert frames == [(host.STDOUT, b"one"), (host.STDERR, b""), (host.VARIABLE, b"x" * 70000)]


def test_a_frame_longer_than_the_limit_is_refused_before_it_is_read():
    with pytest.raises(ValueError, match="more than 1024"):
        host.Frames(limit=1024).feed(host.HEADER.pack(host.STDOUT, 1 << 30))


def _frames_from(fd) -> list:
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        data += chunk
    return host.Frames().feed(data)


def test_the_host_sends_text_and_displays_in_the_order_written():
    r, w = os.pipe()
    output = host.Output(w, {})
    try:
        for i in range(3):
            output.write(host.STDOUT, f"out {i}\n")
            output.write(host.STDERR, f"err {i}\n")
        output.send(host.pack_json(host.DISPLAY, {"data": {"text/plain": "shown"}}))
        output.write(host.STDOUT, "after")
        output.write(host.STDOUT, " display\n")
        time.sleep(host.FLUSH_DELAY * 5)    # the pump sends text that has waited long enough
        frames = _frames_from(r)
    finally:
        os.close(r)
        os.close(w)
    assert [(kind, payload.decode()) for kind, payload in frames] == [
        (host.STDOUT, "out 0\n"), (host.STDERR, "err 0\n"), (host.STDOUT, "out 1\n"),
        (host.STDERR, "err 1\n"), (host.STDOUT, "out 2\n"), (host.STDERR, "err 2\n"),
        (host.DISPLAY, '{"data": {"text/plain": "shown"}}'), (host.STDOUT, "after display\n")]


def test_what_a_subprocess_writes_to_fd_1_becomes_stream_frames():
    r, w = os.pipe()
    cap_r, cap_w = os.pipe()
    os.set_blocking(cap_r, False)
    output = host.Output(w, {cap_r: host.STDOUT})
    try:
        os.write(cap_w, "from a subprocess é\n".encode())
        output.drain()
        frames = _frames_from(r)
    finally:
        for fd in (r, w, cap_r, cap_w):
            os.close(fd)
    assert frames == [(host.STDOUT, "from a subprocess é\n".encode())]


def _channel(**spec) -> tuple[Channel, io.StringIO, io.StringIO]:
    channel = Channel(Spec(**spec))
    out, err = io.StringIO(), io.StringIO()
    channel.opening(None, out, err)
    return channel, out, err


def test_the_runner_keeps_streams_apart_and_the_last_expression_and_error():
    channel, out, err = _channel()
    channel.write(host.pack(host.STDOUT, b"1\n") + host.pack(host.STDERR, b"2\n")
                  + host.pack_json(host.RESULT, {"data": {"text/plain": "42"}, "metadata": {}})
                  + host.pack_json(host.ERROR, {"ename": "KeyError", "evalue": "'k'",
                                                "traceback": ["line 1", "line 2"]}))
    assert (out.getvalue(), err.getvalue()) == ("1\n", "2\n")
    assert repr(channel.result) == "42"
    assert channel.result._repr_mimebundle_() == ({"text/plain": "42"}, {})
    assert channel.error == {"ename": "KeyError", "evalue": "'k'",
                             "traceback": ["line 1", "line 2"]}
    assert channel.problem is None


@pytest.mark.parametrize("frame, problem", [
    (host.pack(b"?", b""), "a message of unknown kind"),
    (host.pack(host.DISPLAY, b"{not json"), "a message that is not JSON"),
    (host.pack(host.VARIABLE, b'{"name": "secret"}\n'), "a variable that --output did not ask"),
    (host.pack_json(host.ERROR, {"traceback": "not a list"}), "a traceback that is not a list"),
])
def test_a_frame_the_runner_does_not_expect_ends_the_channel_with_a_sentence(frame, problem):
    channel, out, _ = _channel()
    channel.write(frame + host.pack(host.STDOUT, b"after"))
    assert channel.problem.startswith(f"the container broke the cell's channel ({problem}")
    assert out.getvalue() == ""


@pytest.mark.parametrize("value", [
    42, 2.5, 1 + 2j, "text", b"bytes", bytearray(b"ba"), None, [1, (2, 3)], {"k": {1, 2}},
    frozenset({1}), range(3), slice(1, 5, 2), datetime.datetime(2026, 12, 1, 8, 30),
    datetime.date(2026, 12, 1), datetime.timedelta(seconds=3),
    datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc), decimal.Decimal("1.10"),
    fractions.Fraction(1, 3)])
def test_plain_data_comes_back(value):
    assert variables.load("v", {}, pickle.dumps(value, protocol=5)) == value


def test_collections_and_numpy_come_back():
    import collections

    import numpy as np
    for value in (collections.OrderedDict(a=1), collections.defaultdict(list, a=[1]),
                  collections.deque([1, 2]), collections.Counter("aab")):
        back = variables.load("v", {}, pickle.dumps(value, protocol=5))
        assert back == value and type(back) is type(value)
    array = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    structured = np.zeros(2, dtype=[("a", "i4"), ("b", "f8")])
    for value in (array, structured, np.array(["x", "yz"]), np.array([1, "o"], dtype=object),
                  np.ma.masked_array([1, 2], [0, 1]), np.datetime64("2026-12-01")):
        back = variables.load("v", {}, pickle.dumps(value, protocol=5))
        assert type(back) is type(value) and np.array_equal(back, value)
    assert variables.load("v", {}, pickle.dumps(np.float64(1.5))) == np.float64(1.5)


def test_pandas_frames_come_back():
    import pandas as pd  # a test extra (pyproject.toml)
    frame = pd.DataFrame({"n": [1, 2], "s": ["a", "b"], "t": pd.date_range("2026-01-01",
                                                                           periods=2)})
    for value in (frame, frame["n"], frame.index, pd.Series(pd.Categorical(["a", "b"]))):
        back = variables.load("v", {}, pickle.dumps(value, protocol=5))
        assert type(back) is type(value) and back.equals(value)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo never run",))


class _Point:
    pass


@pytest.mark.parametrize("value, refused", [
    (_Evil(), "posix.system"), (_Point(), "test_cell_core._Point"), (print, "builtins.print"),
    ([1, {"deep": _Evil()}], "posix.system")])
def test_anything_else_is_refused_naming_the_variable_and_the_type(value, refused):
    with pytest.raises(VariableError, match=rf"^--output v: refused to build a {refused} "):
        variables.load("v", {}, pickle.dumps(value, protocol=5))


def test_what_the_container_could_not_send_is_said_per_variable():
    with pytest.raises(VariableError, match="the cell defined no variable gone"):
        variables.load("gone", {"error": "missing"}, b"")
    with pytest.raises(VariableError, match="could not pickle its builtins.generator"):
        variables.load("g", {"error": "TypeError: cannot pickle", "type": "builtins.generator"},
                       b"")
    with pytest.raises(VariableError, match="is not a value that loads"):
        variables.load("v", {}, b"\x80\x05garbage")


def test_input_names_the_variable_that_cannot_be_pickled():
    with pytest.raises(VariableError, match=r"^--input f: a function cannot be pickled"):
        variables.pickled(("f",), {"f": lambda: 1})
    assert variables.pickled(("x",), {"x": [1]}) == [("x", pickle.dumps([1], protocol=5))]


def test_input_and_output_take_comma_lists_of_names_for_python_cells_only():
    spec = Spec.from_argv("--input a,b --output c", script="pass")
    assert (spec.inputs, spec.outputs) == (("a", "b"), ("c",))
    with pytest.raises(SpecError, match="'a-b' is not a Python variable name"):
        Spec.from_argv("--input a-b", script="pass")
    with pytest.raises(SpecError, match="--output passes Python variables, and this cell runs"):
        Spec.from_argv("--output x sh", script="echo")


def test_a_cell_magic_with_no_body_calls_the_magic_itself():
    from nsmagic.magics import empty_body
    assert empty_body(["%%container --help\n", "\n"]) == [
        "get_ipython().find_cell_magic('container')(get_ipython().var_expand('--help'), '')\n"]
    assert empty_body(["%%container\n", "pass\n"]) == ["%%container\n", "pass\n"]
    assert empty_body(["print(1)\n"]) == ["print(1)\n"]
