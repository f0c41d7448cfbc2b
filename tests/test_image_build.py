"""nsmagic build: one layer per RUN that changed something (deletions as whiteouts), COPY and
ADD from the context, config-only instructions with no layer, and a cache that makes an
unchanged rebuild run no container."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from conftest import needs_root
from imagehelp import nsmagic

from nsmagic.errors import NsmagicError
from nsmagic.images import dockerfile
from nsmagic.images.build import Builder, Options

DOCKERFILE = """\
# a comment
FROM busybox
ARG WHO=world
ENV GREETING="hello ${WHO}" \\
    OTHER=x
RUN mkdir -p /app && echo one > /app/one && echo two > /app/two
COPY greeting.txt /app/
RUN rm /app/one && echo changed > /app/two
WORKDIR /app
LABEL course=containers
EXPOSE 8080
CMD ["sh", "-c", "echo $GREETING; ls; cat two greeting.txt"]
"""


@pytest.mark.core
def test_parse_and_expand():
    steps = dockerfile.parse(DOCKERFILE)
    assert [s.keyword for s in steps] == ["FROM", "ARG", "ENV", "RUN", "COPY", "RUN",
                                          "WORKDIR", "LABEL", "EXPOSE", "CMD"]
    assert steps[2].text == 'GREETING="hello ${WHO}"  OTHER=x'
    assert steps[-1].exec_form() == ["sh", "-c", "echo $GREETING; ls; cat two greeting.txt"]
    assert steps[3].command()[:2] == ["/bin/sh", "-c"]
    variables = {"A": "1", "E": ""}
    assert dockerfile.expand("$A ${A} ${B:-d} ${A:+alt} ${E:-e} \\$A", variables) == \
        "1 1 d alt e $A"
    assert dockerfile.pairs('A=1 B="two words"') == [("A", "1"), ("B", "two words")]
    assert dockerfile.pairs("LEGACY value with spaces") == [("LEGACY", "value with spaces")]


@pytest.mark.core
@pytest.mark.parametrize("text,said", [
    ("RUN true", "must start with FROM"),
    ("FROM busybox\nHEALTHCHECK NONE", "line 2: HEALTHCHECK is not supported"),
    ("FROM busybox\nRUN <<EOF\necho\nEOF", "here-documents"),
])
def test_parse_errors(text, said):
    with pytest.raises(NsmagicError, match=said):
        dockerfile.parse(text)


@pytest.fixture
def context(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "greeting.txt").write_text("hello file\n")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    return ctx


def build(store, context, name="demo", text=None, **kw):
    lines = []
    builder = Builder(Options(name, str(context), **kw), store, out=io.BytesIO(),
                      err=io.BytesIO(), say=lines.append)
    image = builder.build(text or (context / "Dockerfile").read_text())
    return image, builder, lines


def layer_members(store, digest) -> list[str]:
    with tarfile.open(store.blob_path(digest)) as tar:
        return [m.name for m in tar]


@needs_root
@pytest.mark.kernel
def test_build_layers_whiteouts_and_config(store, context, no_leaks):
    image, builder, _ = build(store, context)
    assert builder.containers == 2
    assert len(image.layers) == 4                 # busybox, RUN, COPY, RUN
    history = image.config["history"]
    assert [h.get("empty_layer", False) for h in history] == [
        False, True, True, False, False, False, True, True, True, True]
    assert layer_members(store, image.layers[1].digest) == ["app", "app/one", "app/two"]
    assert layer_members(store, image.layers[2].digest) == ["app/greeting.txt"]
    assert layer_members(store, image.layers[3].digest) == ["app", "app/.wh.one", "app/two"]
    rt = image.runtime
    assert rt["WorkingDir"] == "/app" and rt["Labels"] == {"course": "containers"}
    assert rt["ExposedPorts"] == {"8080/tcp": {}}
    assert "GREETING=hello world" in rt["Env"] and "OTHER=x" in rt["Env"]
    done = nsmagic("run", "demo")
    assert done.stdout.split("\n") == ["hello world", "greeting.txt", "two", "changed",
                                       "hello file", ""], done.stderr
    # the deleted file is gone in the container, and still in the layer below
    lower = store.layer_tree(image.diff_ids[1], image.layers[1])
    assert open(os.path.join(lower, "app/one")).read() == "one\n"
    assert nsmagic("run", "demo", "ls", "/app/one").returncode != 0


@needs_root
@pytest.mark.kernel
def test_rebuild_is_all_cache_and_content_decides(store, context, no_leaks):
    first, _, _ = build(store, context)
    again, builder, lines = build(store, context)
    assert builder.containers == 0 and again.id == first.id
    assert lines.count(" ---> Using cache") == 9
    os.utime(context / "greeting.txt", (1, 1))      # a new time, the same content
    assert build(store, context)[1].containers == 0
    (context / "greeting.txt").write_text("new content\n")
    changed, builder, _ = build(store, context)
    assert builder.containers == 1                  # COPY made anew, and the RUN after it
    assert changed.diff_ids[:2] == first.diff_ids[:2] and changed.id != first.id
    other, builder, _ = build(store, context, build_args={"WHO": "you"})
    assert builder.containers == 2 and "GREETING=hello you" in other.runtime["Env"]


@needs_root
@pytest.mark.kernel
def test_add_extracts_a_local_archive(store, context, no_leaks):
    with tarfile.open(context / "bundle.tar", "w") as tar:
        for name, data in (("lib/a.txt", b"A\n"), ("../../escape", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(NsmagicError, match="leads out"):
        build(store, context, text="FROM busybox\nADD bundle.tar /opt/\n")
    with tarfile.open(context / "bundle.tar", "w") as tar:
        info = tarfile.TarInfo("lib/a.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"A\n"))
    build(store, context, text="FROM busybox\nADD bundle.tar /opt/\nCOPY bundle.tar /srv/\n")
    done = nsmagic("run", "demo", "sh", "-c", "cat /opt/lib/a.txt; ls /srv")
    assert done.stdout == "A\nbundle.tar\n", done.stderr


@pytest.mark.kernel
def test_copy_takes_no_link_out_of_the_context(store, context, tmp_path, no_leaks):
    """A context may hold links (a cloned repository, a tree a container wrote): COPY never
    reads through one to the host's files. A link on the way is refused; a link named
    itself is copied as a link."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/secret").write_text("host secret\n")
    (context / "way").symlink_to(tmp_path / "outside")
    (context / "named").symlink_to(tmp_path / "outside/secret")
    for source in ("way/secret", "w*/secret"):
        with pytest.raises(NsmagicError, match="goes through a symbolic link"):
            build(store, context, text=f"FROM busybox\nCOPY {source} /s\n")
    build(store, context, text="FROM busybox\nCOPY named /s\n")
    done = nsmagic("run", "--rm", "demo", "sh", "-c", "readlink /s; cat /s")
    assert done.stdout == f"{tmp_path}/outside/secret\n", done.stderr   # dangling inside


@needs_root
@pytest.mark.kernel
@pytest.mark.parametrize("text,said", [
    ("FROM busybox\nRUN exit 3", r"Dockerfile line 2 \(RUN\): RUN exited with 3"),
    ("FROM busybox\nCOPY ../secret /", "outside the build context"),
    ("FROM busybox\nCOPY nothing.txt /", "'nothing.txt' is not in the build context"),
    ("FROM no-such-base\nRUN true", "there is no image no-such-base:latest"),
    ("FROM busybox\nFROM busybox", "multi-stage"),
    ("FROM scratch\nRUN true", "RUN on scratch has nothing to run"),
])
def test_build_errors_are_one_sentence(store, context, text, said, no_leaks):
    with pytest.raises(NsmagicError, match=said):
        build(store, context, text=text)
    assert os.listdir(store.path("tmp")) == []


@needs_root
@pytest.mark.kernel
def test_cli_build(store, context, no_leaks):
    done = nsmagic("build", "-t", "cli-demo", str(context))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "Successfully tagged cli-demo:latest"
    assert "hello world" in nsmagic("run", "cli-demo").stdout
    done = nsmagic("build", "-t", "x", str(context / "nope"))
    assert done.returncode == 125 and "is not a directory" in done.stderr
