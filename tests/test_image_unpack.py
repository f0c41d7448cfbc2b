"""The hardened unpacker against hostile layers: each known attack refused or neutralised,
the host untouched; then a fuzz test (hypothesis) over random member lists."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile

import pytest

from nsmagic.images import unpack
from nsmagic.images.unpack import Limits, UnpackError

pytestmark = pytest.mark.core
ROOT = os.geteuid() == 0
OPAQUE_XATTR = "trusted.overlay.opaque" if ROOT else "user.overlay.opaque"


def layer(*members) -> io.BytesIO:
    """A tar of (name, kind, extra) members: kind is file, dir, sym, link, chr, fifo."""
    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
             "link": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, *extra in members:
            info = tarfile.TarInfo(name)
            info.type = kinds[kind]
            info.mode = 0o755 if kind == "dir" else 0o644
            data = b""
            for key, value in (extra[0] if extra else {}).items():
                if key == "data":
                    data = value
                else:
                    setattr(info, key, value)
            info.size = len(data) if kind == "file" else 0
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@pytest.fixture
def box(tmp_path):
    """dest (the layer) beside outside (the host): outside must never change."""
    (tmp_path / "dest").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host\n")
    yield tmp_path
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (outside / "secret").read_text() == "host\n"


def unpack_into(box, tar, **kw):
    return unpack.unpack(tar, str(box / "dest"), **kw)


def test_dotdot_refused(box):
    with pytest.raises(UnpackError, match=r"'\.\.' leads out of the layer"):
        unpack_into(box, layer(("../outside/secret", "file", {"data": b"x"})))


def test_absolute_names_made_relative(box):
    report = unpack_into(box, layer((str(box / "outside/new"), "file", {"data": b"x"})))
    assert (box / "dest" / str(box / "outside/new").lstrip("/")).read_bytes() == b"x"
    assert report.notices() == ["1 absolute path(s) were made relative to the layer."]


@pytest.mark.parametrize("link", ["../outside", "/outside", None])
def test_write_through_symlink_refused(box, link):
    link = link or str(box / "outside")
    tar = layer(("l", "sym", {"linkname": link}), ("l/secret", "file", {"data": b"pwned"}))
    with pytest.raises(UnpackError, match="symbolic link or not a directory"):
        unpack_into(box, tar)


@pytest.mark.parametrize("target", ["../outside/secret", None, "l/secret"])
def test_hardlink_escape_refused(box, target):
    target = target or str(box / "outside/secret")
    tar = layer(("l", "sym", {"linkname": str(box / "outside")}),
                ("h", "link", {"linkname": target}))
    with pytest.raises(UnpackError, match="'..' leads out|not a file of this layer"):
        unpack_into(box, tar)


def test_hardlink_inside_the_layer(box):
    unpack_into(box, layer(("a", "file", {"data": b"1"}), ("b", "link", {"linkname": "a"})))
    assert os.stat(box / "dest/a").st_ino == os.stat(box / "dest/b").st_ino


def test_symlink_kept_as_text_never_followed(box):
    unpack_into(box, layer(("etc", "sym", {"linkname": str(box / "outside")})))
    assert os.readlink(box / "dest/etc") == str(box / "outside")


def test_device_nodes_skipped(box):
    report = unpack_into(box, layer(("dev/sda", "chr", {"devmajor": 8, "devminor": 0}),
                                    ("p", "fifo")))
    assert not os.path.lexists(box / "dest/dev/sda")
    assert stat.S_ISFIFO(os.lstat(box / "dest/p").st_mode)
    assert "1 device node(s) were skipped" in report.notices()[0]


def test_setuid_kept_and_modes_exact(box):
    unpack_into(box, layer(("su", "file", {"mode": 0o4755, "data": b"#!"}),
                           ("tmp", "dir", {"mode": 0o1777}), ("ro", "dir", {"mode": 0o555}),
                           ("ro/f", "file", {"mode": 0o400})))
    assert stat.S_IMODE(os.stat(box / "dest/su").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(box / "dest/tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.stat(box / "dest/ro").st_mode) == 0o555


def test_sparse_giant_refused_before_writing(box, tmp_path):
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(100 << 30)       # 100 GiB of holes
    tar = tmp_path / "sparse.tar"
    subprocess.run(["tar", "-S", "-C", str(tmp_path), "-cf", str(tar), "big"], check=True)
    big.unlink()
    with open(tar, "rb") as f, pytest.raises(UnpackError, match="tar bomb"):
        unpack_into(box, f)
    assert not (box / "dest/big").exists()


def test_bytes_and_entries_budgets(box):
    with pytest.raises(UnpackError, match="more than 1 MiB"):
        unpack_into(box, layer(("f", "file", {"data": b"x" * (2 << 20)})),
                    limits=Limits(max_bytes=1 << 20))
    many = layer(*[(f"f{i}", "file") for i in range(50)])
    with pytest.raises(UnpackError, match="more than 10 entries"):
        unpack_into(box, many, limits=Limits(max_entries=10))


def test_whiteouts_and_opaque_dirs(box):
    unpack_into(box, layer(("d", "dir"), ("d/.wh..wh..opq", "file"), ("d/.wh.gone", "file"),
                           ("d/kept", "file", {"data": b"k"})))
    st = os.lstat(box / "dest/d/gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(box / "dest/d", OPAQUE_XATTR) == b"y"
    assert (box / "dest/d/kept").read_bytes() == b"k"
    assert not os.path.lexists(box / "dest/d/.wh.gone")


def test_overlay_xattrs_from_the_image_dropped(box):
    tar = layer(("f", "file", {"pax_headers": {"SCHILY.xattr.trusted.overlay.redirect": "/x",
                                               "SCHILY.xattr.user.overlay.opaque": "y",
                                               "SCHILY.xattr.user.note": "kept"}}))
    report = unpack_into(box, tar)
    assert os.getxattr(box / "dest/f", "user.note") == b"kept"
    assert set(os.listxattr(box / "dest/f")) == {"user.note"}
    assert "2 extended attribute(s)" in report.notices()[0]


def test_later_member_replaces_earlier(box):
    unpack_into(box, layer(("x", "dir"), ("x/f", "file"), ("x", "file", {"data": b"now"}),
                           ("y", "sym", {"linkname": "/"}), ("y", "dir")))
    assert (box / "dest/x").read_bytes() == b"now"
    assert (box / "dest/y").is_dir() and not (box / "dest/y").is_symlink()


def test_dir_replaced_by_symlink_gets_no_chmod_through_it(box):
    """A directory member later replaced by a symlink to the host: its attributes, set at
    the end, must not land on what the link names."""
    before = stat.S_IMODE(os.stat(box / "outside").st_mode)
    unpack_into(box, layer(("d", "dir", {"mode": 0o777}),
                           ("d", "sym", {"linkname": str(box / "outside")})))
    assert stat.S_IMODE(os.stat(box / "outside").st_mode) == before


def test_garbage_is_not_a_tar(box):
    with pytest.raises(UnpackError, match="not a tar archive|damaged"):
        unpack_into(box, io.BytesIO(b"\x00garbage" * 100))


def test_truncated_archive(box):
    data = layer(("f", "file", {"data": b"x" * 5000})).getvalue()[:2048]
    with pytest.raises(UnpackError):
        unpack_into(box, io.BytesIO(data))


# --- fuzz: random member lists never escape and never fail other than with UnpackError

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the test extra")
st = pytest.importorskip("hypothesis.strategies")

SEGMENTS = ["a", "b", "..", ".", "", ".wh.a", ".wh..wh..opq", ".wh..wh.plnk", "x" * 300]
KINDS = ["file", "dir", "sym", "link", "chr", "fifo"]


def _names(outside: str):
    segment = st.sampled_from(SEGMENTS)
    relative = st.lists(segment, min_size=1, max_size=4).map("/".join)
    return st.one_of(relative, relative.map(lambda r: "/" + r),
                     st.just(outside), st.just(outside + "/secret"))


@hypothesis.settings(max_examples=int(os.environ.get("NSMAGIC_FUZZ_EXAMPLES", "150")),
                     deadline=None, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(data=st.data())
def test_fuzz_unpacker(tmp_path_factory, data):
    box = tmp_path_factory.mktemp("fuzz")
    (box / "dest").mkdir()
    (box / "outside").mkdir()
    (box / "outside/secret").write_text("host\n")
    names = _names(str(box / "outside"))
    members = data.draw(st.lists(st.tuples(names, st.sampled_from(KINDS), names,
                                           st.sampled_from([0o644, 0o4755, 0o000, 0o777])),
                                 max_size=8))
    tar = layer(*[(name, kind, {"linkname": link, "mode": mode, "data": b"pwned"})
                  for name, kind, link, mode in members])
    try:
        unpack_into(box, tar)
    except UnpackError:
        pass
    assert sorted(os.listdir(box / "outside")) == ["secret"]
    assert (box / "outside/secret").read_text() == "host\n"
    assert stat.S_IMODE(os.stat(box / "outside").st_mode) == 0o755
    for dirpath, dirnames, filenames in os.walk(box / "dest"):
        for name in dirnames + filenames:
            st_ = os.lstat(os.path.join(dirpath, name))
            assert not (stat.S_ISBLK(st_.st_mode) or (stat.S_ISCHR(st_.st_mode)
                                                      and st_.st_rdev != 0))
    fd = os.open(box, os.O_RDONLY)
    try:
        unpack.remove_tree_at(fd, "dest")
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE])
def test_a_huge_name_or_pax_record_is_refused_before_it_is_read(tmp_path, kind):
    """tarfile reads a long-name or pax record into memory whole: a record of 64 MiB (a
    gigabyte, in a hostile image) is refused from its header, before it is read."""
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = kind, 64 << 20
    head = header.tobuf(format=tarfile.GNU_FORMAT)

    class Record(io.RawIOBase):   # the header, then the record's 64 MiB, made as read
        served = 0

        def readable(self):
            return True

        def readinto(self, buf):
            n = min(len(buf), len(head) + header.size - self.served)
            start = max(0, min(n, len(head) - self.served))
            buf[:start] = head[self.served:self.served + start]
            buf[start:n] = bytes(n - start)
            self.served += n
            return n
    stream = Record()
    (tmp_path / "dest").mkdir()
    with pytest.raises(UnpackError, match="tar header record of 67108864 bytes"):
        unpack.unpack(stream, str(tmp_path / "dest"))
    assert stream.served < 1 << 20, "the record was read"
