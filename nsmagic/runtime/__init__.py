"""The launcher (parent side) and the child side of a run; see launcher.py and child.py."""
