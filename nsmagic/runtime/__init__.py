"""A run, from the runner's side (the notebook kernel or the CLI process): forkserver.py
gets a PID 1, launcher.py hands it its run (runconfig.py), follow.py streams it to its end,
teardown.py removes what is left off the run's path, spares.py makes the next PID 1 ahead.
What runs inside the container's processes is in nsmagic/inside/."""
