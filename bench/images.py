#!/usr/bin/env python3
"""Image benchmarks: nsmagic's image side against the tools it must keep up with.

    unpack     a 100 MB+ layer made from the host's /usr (nothing downloaded), unpacked by
               nsmagic's hardened unpacker into a fresh store, against `umoci unpack` of the
               same image (an OCI layout); target: no slower
    hello      `nsmagic run --rm hello-world` as a fresh process (cold), against
               `docker run --rm hello-world` (the same image, docker-loaded, dockerd started
               by tests/peers.py); target: at most 0.3 x Docker's time
    rebuild    a Dockerfile rebuilt with nothing changed, per instruction (all cache hits,
               no container); target: under 50 ms

    sudo .venv/bin/python bench/images.py [--only unpack,hello,rebuild] [--repeat N]

Root only (the unpacker keeps owners; dockerd). Short by default (the machine is shared):
--repeat 1 unpacks once; the lead runs the full table with a larger --repeat."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from nsmagic.images import archive, catalog, compose  # noqa: E402
from nsmagic.images.store import Store  # noqa: E402

TARGET_BYTES = 110 << 20


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _usr_tar(path: str) -> int:
    """A plain tar of the host's /usr, its first 110 MB of files (directories, files and
    links, in walk order), as `tar` writes it."""
    listed, total = [], 0
    for dirpath, dirnames, filenames in os.walk("/usr"):
        dirnames.sort()
        listed.append(dirpath.lstrip("/"))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            listed.append(full.lstrip("/"))
            total += os.lstat(full).st_size
        if total >= TARGET_BYTES:
            break
    names = path + ".list"
    with open(names, "w") as f:
        f.write("\n".join(listed) + "\n")
    subprocess.run(["tar", "-C", "/", "--no-recursion", "-cf", path, "-T", names], check=True)
    return os.path.getsize(path)


def bench_unpack(scratch: str, repeat: int) -> list[tuple]:
    tar = os.path.join(scratch, "usr.tar")
    size = _usr_tar(tar)
    source = Store(os.path.join(scratch, "source")).ensure()
    with open(tar, "rb") as f:
        blob = source.put_stream(f, "application/vnd.oci.image.layer.v1.tar")
    layer = compose.NewLayer(blob, blob.digest, "ADD usr")
    compose.write_image(source, "usr:latest", [layer], {"Cmd": ["/bin/sh"]})
    layout = os.path.join(scratch, "layout")
    os.mkdir(layout)
    with open(os.path.join(scratch, "usr-image.tar"), "wb") as out:
        archive.save(["usr"], out, source)
    subprocess.run(["tar", "-C", layout, "-xf", os.path.join(scratch, "usr-image.tar")],
                   check=True)
    image = catalog.find("usr", source)
    ours, theirs = [], []
    for i in range(repeat):
        fresh = Store(os.path.join(scratch, f"fresh{i}")).ensure()
        os.link(source.blob_path(blob.digest), fresh.blob_path(blob.digest))
        ours.append(timed(partial(fresh.layer_tree, image.diff_ids[0], image.layers[0])))
        shutil.rmtree(fresh.root)
        if shutil.which("umoci"):
            bundle = os.path.join(scratch, f"bundle{i}")
            theirs.append(timed(partial(subprocess.run, ["umoci", "unpack", "--image",
                                                         f"{layout}:latest", bundle],
                                        check=True, capture_output=True)))
            shutil.rmtree(bundle)
    mine = statistics.median(ours)
    rows = [("unpack", f"nsmagic {size / 1e6:.0f} MB", mine, None)]
    if theirs:
        other = statistics.median(theirs)
        rows.append(("unpack", "umoci unpack", other, None))
        rows.append(("unpack", "target: nsmagic <= umoci", mine / other, mine <= other))
    else:
        rows.append(("unpack", "umoci: not installed (apt-get install umoci)", None, None))
    return rows


def bench_hello(scratch: str, repeat: int) -> list[tuple]:
    cli = [sys.executable, "-m", "nsmagic", "run", "--rm", "hello-world"]
    env = dict(os.environ, NSMAGIC_STORE=os.path.join(scratch, "hello-store"))
    subprocess.run(cli, env=env, capture_output=True, cwd=REPO)   # made once, untimed
    ours = statistics.median(timed(lambda: subprocess.run(cli, env=env, capture_output=True,
                                                          cwd=REPO))
                             for _ in range(max(3, repeat)))
    rows = [("hello", "nsmagic run --rm hello-world (cold)", ours, None)]
    try:
        import peers
        with peers.docker_daemon() as docker:
            saved = os.path.join(scratch, "hello.tar")
            with open(saved, "wb") as out:
                archive.save(["hello-world"], out, Store(env["NSMAGIC_STORE"]))
            subprocess.run([*docker, "load", "-i", saved], check=True, capture_output=True)
            run = [*docker, "run", "--rm", "--network", "none", "hello-world"]
            subprocess.run(run, capture_output=True)
            theirs = statistics.median(timed(lambda: subprocess.run(run, capture_output=True))
                                       for _ in range(max(3, repeat)))
        rows.append(("hello", "docker run --rm hello-world", theirs, None))
        rows.append(("hello", "target: nsmagic <= 0.3 x docker", ours / theirs,
                     ours <= 0.3 * theirs))
    except Exception as why:   # noqa: BLE001 - a peer that cannot start is a row, not a crash
        rows.append(("hello", f"docker: {why}", None, None))
    return rows


DOCKERFILE = """FROM busybox
ARG WHO=world
ENV GREETING="hello ${WHO}"
RUN echo one > /one
COPY Dockerfile /Dockerfile
RUN echo two > /two && rm /one
WORKDIR /srv
LABEL bench=yes
USER nobody
EXPOSE 8080
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /two"]
"""


def bench_rebuild(scratch: str, repeat: int) -> list[tuple]:
    from nsmagic.images.build import Builder, Options
    ctx = os.path.join(scratch, "ctx")
    os.makedirs(ctx, exist_ok=True)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(DOCKERFILE)
    store = Store(os.path.join(scratch, "build-store")).ensure()
    quiet = lambda *_a: None  # noqa: E731

    def build():
        return Builder(Options("bench", ctx), store, say=quiet).build(DOCKERFILE)
    build()                                  # the first build runs its RUNs
    steps = DOCKERFILE.count("\n")
    per = statistics.median(timed(build) for _ in range(max(3, repeat))) / steps
    return [("rebuild", f"cached rebuild, per instruction ({steps})", per, per < 0.050)]


BENCHES = {"unpack": bench_unpack, "hello": bench_hello, "rebuild": bench_rebuild}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(BENCHES))
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench/images.py runs as root (owners kept, dockerd).", file=sys.stderr)
        return 2
    rows = []
    scratch = tempfile.mkdtemp(prefix="nsmagic-bench-images-")
    try:
        for name in args.only.split(","):
            rows += BENCHES[name](scratch, args.repeat)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for bench, what, value, ok in rows:
        shown = "" if value is None else (f"{value:.3f}" if "target" in what else
                                          f"{value * 1000:.1f} ms")
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        print(f"{bench:<8} {what:<48} {shown:>10} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
