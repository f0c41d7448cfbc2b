"""One exception family. str() is one user-facing sentence: what was wrong, what to do."""


class NsmagicError(Exception):
    """A failure a user can act on; the magic prints it without a traceback."""

    def _render_traceback_(self):   # IPython shows these lines instead of a traceback
        return [f"nsmagic: {self}"]


class SpecError(NsmagicError, ValueError):
    """A bad option value; no container was started."""


class CgroupError(NsmagicError):
    """A cgroup could not be created, limited, read or removed."""


class SetupError(NsmagicError):
    """The container could not be set up (a namespace, mount or exec step failed)."""
