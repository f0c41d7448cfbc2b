"""nsmagic: run a notebook cell in real Linux namespaces, under cgroup limits, on an overlay
root, and watch its accounting live. `%load_ext nsmagic`, then `%%container --mem 100M`.

Kept light on purpose: the helper process imports nsmagic.runtime with `python -I -S`, and
`%load_ext` should cost little, so nothing heavy is imported here."""

__version__ = "0.1.0"


def load_ipython_extension(ipython):
    from .magics import ContainerMagics, empty_body
    ipython.register_magics(ContainerMagics)
    if empty_body not in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.append(empty_body)


def unload_ipython_extension(ipython):
    from .magics import ContainerMagics, empty_body
    ipython.magics_manager.registry.pop(ContainerMagics.__name__, None)
    if empty_body in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.remove(empty_body)
