import signal

signal.signal(signal.SIGINT, signal.SIG_DFL)   # see cli.py: quiet until a container exists

from .cli import exit_now, main  # noqa: E402

exit_now(main())
