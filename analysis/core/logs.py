"""The toolkit's log: the ``branchy`` logger (a study's steps log to ``branchy.study``) written to stderr, one
message per line, when nothing else has configured logging."""
from __future__ import annotations

import logging
import sys

__all__ = ["log_to_stderr"]


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when it writes (not the stream of the moment it was
    made, which a test runner or a notebook may have replaced since)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def log_to_stderr(level: int | None = None, *, only_if_unconfigured: bool = False) -> None:
    """Give the ``branchy`` logger a stderr handler (once) and ``level`` (default: INFO unless it has a level).
    ``only_if_unconfigured``: do nothing when the ``branchy`` or the root logger already has a handler (a user who
    configured logging decides)."""
    top = logging.getLogger("branchy")
    has = any(isinstance(h, _Stderr) for h in top.handlers)
    if only_if_unconfigured and (top.handlers or logging.getLogger().handlers) and not has:
        return
    if not has:
        top.addHandler(_Stderr())
    if level is not None:
        top.setLevel(level)
    elif top.level == logging.NOTSET:
        top.setLevel(logging.INFO)
