"""A Python cell run as a notebook cell inside its container: through IPython's own machinery
(InteractiveShell), with one ordered channel back to the notebook.

- host.py      runs IN THE CONTAINER, as the cell's workload (not PID 1): stdlib and IPython
               only, shipped as source (nsmagic itself is not visible inside). Also the
               channel's framing, which the runner imports from it.
- channel.py   runs in the runner (the kernel): feeds the cell, reads the frames, publishes
               streams, displays and input requests in the notebook.
- variables.py runs in the runner: --input pickled out of the kernel, --output loaded back
               with a restricted unpickler (the container is not trusted).
"""

# `python -c` of a Python cell: read host.py from stdin (a 10-digit length, then its code as
# marshal data: host.program()), exactly, and run it. Short, so that `ps` inside reads well;
# here and not in host.py, so that a run's config costs no import of the host's modules.
BOOTSTRAP = """import os
def r(n):
 b=b''
 while len(b)<n:
  c=os.read(0,n-len(b))
  if not c:raise SystemExit(125)
  b+=c
 return b
exec(__import__('marshal').loads(r(int(r(10)))),{'__name__':'nsmagic_cell'})
"""
