"""A run, from the runner's side (launcher.py; pid1.py, spares.py) and from inside (child.py,
in the PID 1 that the fork server, zygote.py, clones)."""
