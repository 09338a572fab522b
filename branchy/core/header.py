"""The version in a file's header (cache manifest, checkpoint, predictor index), checked one way: a missing
or damaged version, one newer than this toolkit reads, and one older than it still reads are each a one-line
error that says what to do."""
from __future__ import annotations

__all__ = ["check_version"]


def check_version(where: str, what: str, version, *, reads: range, fix: str, error: type[Exception] = ValueError,
                  older: str | None = None) -> int:
    """``version`` (read from ``where``'s header) if this toolkit reads it (``reads``, e.g. ``range(1, 3)`` for
    versions 1 and 2). Otherwise raises ``error``: not a whole number → damaged (``fix``); newer → upgrade;
    older → ``older`` if given (why it is not read), then ``fix``."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise error(f"{where} has no valid {what} version (found {version!r}): {fix}")
    newest = reads[-1]
    if version > newest:
        raise error(f"{where}: {what} version {version}, newer than this toolkit's {newest}: upgrade branchy-study, "
                    f"or {fix}")
    if version not in reads:
        why = f" ({older})" if older else ""
        span = f"version {newest}" if len(reads) == 1 else f"versions {reads[0]} to {newest}"
        raise error(f"{where}: {what} version {version}{why}; this toolkit reads {what} {span}: {fix}")
    return version
