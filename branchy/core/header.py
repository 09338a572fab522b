"""The version in a file's header (cache manifest, checkpoint, predictor index), checked one way: a missing
or damaged version, one newer than this toolkit reads, and one older than it still reads are each a one-line
error that says what to do."""
from __future__ import annotations

__all__ = ["check_version"]


def check_version(where: str, what: str, version, *, reads: range, fix: str, error: type[Exception] = ValueError,
                  older: str | None = None) -> int:
    """``version`` (read from ``where``'s header) if this toolkit reads it.

    Args:
        where: the file or folder, as the message names it.
        what: the kind of header (``"cache schema"``, ``"checkpoint"``).
        version: the value the header holds (anything: it is checked).
        reads: the versions this toolkit reads, e.g. ``range(1, 3)`` for 1 and 2.
        fix: what the user should do, ending every message.
        error: the exception class to raise.
        older: why a version older than ``reads`` is not read, if there is more to say.

    Raises:
        error: not a whole number (damaged), newer than ``reads`` (upgrade), older (``older``, then ``fix``).

    >>> check_version("c/manifest.json", "cache schema", 2, reads=range(1, 3), fix="redump it")
    2
    >>> check_version("c/manifest.json", "cache schema", 9, reads=range(1, 3), fix="redump it")
    Traceback (most recent call last):
    ValueError: c/manifest.json: cache schema version 9, newer than this toolkit's 2: upgrade branchy-study, or redump it
    """
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
