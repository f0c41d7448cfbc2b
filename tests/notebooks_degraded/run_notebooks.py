"""Execute notebooks with nbclient and save the executed copies: `run_notebooks.py SRC DST`.
Run by the degraded-path test as an unprivileged user under blocked.py's seccomp filter.
A cell error does not stop the run (allow_errors): the test reads every cell's outputs."""

import json
import os
import sys

import nbformat
from nbclient import NotebookClient


def main(src: str, dst: str) -> None:
    report = {}
    for name in sorted(n for n in os.listdir(src) if n.endswith(".ipynb")):
        nb = nbformat.read(os.path.join(src, name), as_version=4)
        client = NotebookClient(nb, kernel_name="python3", timeout=300, allow_errors=True,
                                resources={"metadata": {"path": src}})
        try:
            client.execute()
            report[name] = "ok"
        except Exception as err:   # a dead kernel or a timeout: the test reports it
            report[name] = f"{type(err).__name__}: {err}"
        nbformat.write(nb, os.path.join(dst, name))
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
