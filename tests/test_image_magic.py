"""Images in the notebook: %%image build (the cell is the Dockerfile, the notebook's folder
the context), %%container --image, and the image commands under %container."""

import os

import pytest
from conftest import needs_root

pytestmark = [pytest.mark.kernel, needs_root, pytest.mark.usefixtures("no_leaks")]


@pytest.fixture(scope="module")
def ip(ipython):
    return ipython


def test_build_run_and_list_from_cells(ip, store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("from the notebook's folder\n")
    ip.run_cell_magic("image", "build cell-demo",
                      "FROM busybox\nCOPY notes.txt /\nRUN echo built > /made\n"
                      'CMD ["cat", "/notes.txt", "/made"]')
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "Successfully tagged cell-demo:latest"
    ip.run_line_magic("container", "run --no-plot --out said cell-demo")
    assert ip.user_ns["said"] == "from the notebook's folder\nbuilt\n"
    ip.run_cell_magic("container", "--image cell-demo --no-plot --out said sh",
                      "echo $HOSTNAME | wc -c; ls /")
    assert "made\nnotes.txt" in ip.user_ns["said"]
    ip.run_line_magic("container", "images")
    assert "cell-demo" in capsys.readouterr().out
    assert os.listdir(store.path("tmp")) == []


def test_image_cell_usage(ip):
    from IPython.core.error import UsageError
    with pytest.raises(UsageError, match="%%image build NAME"):
        ip.run_cell_magic("image", "", "FROM busybox")
