"""User-facing errors.

Every problem a user can fix (bad params, wrong folder layout, missing server, pool too small) is
raised as an :class:`AiderEdgeError` whose message is one line naming the problem and the fix. The
CLI prints that line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class AiderEdgeError(Exception):
    """A problem the user can fix; ``str(err)`` is a single line that says how."""


class ConfigError(AiderEdgeError):
    """params.yaml is missing, malformed or holds a value that is not allowed."""


class DataError(AiderEdgeError):
    """The image source, the pool or a split cannot be used as asked."""


class OutputError(AiderEdgeError):
    """An output cannot be written: read-only, not permitted, or the disk is full."""
