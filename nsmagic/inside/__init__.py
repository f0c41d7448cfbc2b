"""What runs in the container's own processes: the fork server (zygote.py) and each run's
PID 1 (init.py, then root.py, kernelfs.py, workload.py), and info's probe. Stdlib only:
the fork server starts with `python -I -S`, and PID 1 may pivot into a root without Python."""
