"""The files of a cache: SHA-256 and size entries of the manifest, and the row chunks a reader of a split larger
than memory walks through (numpy-free)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["file_entry", "file_sha256", "row_slices"]

_CHUNK = 1 << 20


def row_slices(n: int, size: int):
    """Consecutive slices of ``size`` rows covering rows ``0..n-1`` (the last may be short): the chunks every
    reader of a split larger than memory walks through.

    >>> list(row_slices(5, 2))
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    if size < 1:
        raise ValueError(f"a chunk holds at least 1 row, got {size}")
    return (slice(a, min(a + size, n)) for a in range(0, n, size))


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path) -> dict:
    """A manifest ``files`` entry: size and SHA-256."""
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}
