"""The one atomic writer: a file is written to a unique temporary name beside its destination, flushed to disk
(fsync) and renamed into place, so a reader sees the old file or the new one, never half of one; on any failure the
temporary file is removed. Every file the project writes for another step to read goes through here."""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def temp_name(path: str | os.PathLike) -> Path:
    """A unique hidden temporary name beside ``path`` (same folder, so the rename is atomic):
    ``.NAME.PID.HEX.tmp``."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: writer(tmp)``: whatever the block writes to ``tmp`` becomes ``p`` when the block
    ends without error (fsync, then rename); on an error ``tmp`` is removed and ``p`` left as it was."""
    p = Path(path)
    tmp = temp_name(p)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str, *, fsync: bool = True) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically (:func:`atomic_path`); returns the path."""
    p = Path(path)
    with atomic_path(p, fsync=fsync) as tmp:
        with open(tmp, "xb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
    return p


__all__ = ["atomic_path", "atomic_write", "temp_name"]
