"""Output locations, checked before any work: a path under a regular file, or in a folder this process
cannot write, is refused with a one-line message that says what to do instead."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _nearest_existing(p: Path) -> Path:
    """``p`` itself or its closest ancestor that exists (``.`` for a relative path that has none)."""
    for q in (p, *p.parents):
        if q.exists():
            return q
    return Path(".")


def check_writable(path: str | os.PathLike, *, folder: bool = False, what: str = "output") -> Path:
    """Refuse an output location that cannot be written, before anything is computed; returns ``Path(path)``.

    ``folder=True``: ``path`` is a folder the output is written *into* (created if missing), e.g.
    ``branchy train --out``. ``folder=False``: ``path`` itself (a file, or a folder written by rename,
    like a cache) is created or replaced in its parent folder. Raises :class:`NotADirectoryError` when
    the location lies under a regular file (or, for ``folder=True``, is one) and :class:`PermissionError`
    when the nearest existing folder is read-only (probed by creating and removing a temporary file)."""
    p = Path(path).expanduser()
    if str(path) == "":
        raise ValueError(f"the {what} path is empty: give a file or folder name")
    start = p if folder else p.parent
    base = _nearest_existing(start)
    if not base.is_dir():
        if base == p:
            raise NotADirectoryError(f"{what} {str(p)!r} is a file, not a folder: give a folder path "
                                     f"(or remove the file)")
        raise NotADirectoryError(f"{what} {str(p)!r} is under the file {str(base)!r}, not a folder: choose a "
                                 f"location whose parents are folders")
    try:
        fd, probe = tempfile.mkstemp(prefix=".branchy-write-test-", dir=base)
    except OSError as e:
        raise PermissionError(f"cannot write the {what} {str(p)!r}: the folder {str(base)!r} is not writable "
                              f"({e.strerror or type(e).__name__}); choose another location or fix its "
                              f"permissions") from None
    os.close(fd)
    os.unlink(probe)
    return p


class SetupError(RuntimeError):
    """The machine or its state cannot do what was asked (no CUDA, a missing optional package, a target another
    process is writing): a one-line error for the user, not a bug."""


__all__ = ["SetupError", "check_writable"]
