"""Writing a cache safely. The cache is built in a folder of its own, ``PATH.partial-PID-RANDOM``, and
renamed into place, so an interrupted write (Ctrl-C, kill, full disk) never leaves a directory that opens as
a cache; a failing write removes its folder.

Writers of ``PATH`` (:func:`branchy.cache.dump`, :func:`~branchy.cache.cache_from_arrays`,
:func:`~branchy.cache.reprofile`) hold an exclusive ``flock`` on ``PATH.lock`` for their whole run; a second
writer is refused at once, naming the first (pid, host, start time, as written in the lock file). The OS drops
the lock when its holder dies, and the lock file itself stays (removing it would let two writers lock
different files). Under the lock a writer first repairs what a killed one left (:func:`recover_target`): stale
``PATH.partial*`` folders are removed (a new dump *restarts cleanly*, it does not resume), an interrupted
``--overwrite`` swap is completed or rolled back, and an interrupted re-profile is completed.
"""
from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from ..core import SetupError, atomic_write, json_safe
from .files import file_entry
from .reader import MANIFEST, CacheError, FeatureCache


class NpyWriter:
    """Append rows to a ``.npy`` file of known final shape, sequentially, without holding it in memory. With
    ``rows=(start, stop)`` it writes only those rows, into an existing file of that shape and dtype (one rank's
    part of a preallocated file, :mod:`branchy.cache.distributed`)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype, *, rows: tuple[int, int] | None = None) -> None:
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.start, self.stop = rows if rows is not None else (0, self.shape[0])
        self.rows = self.start
        fmt = np.lib.format
        if rows is None:
            self._f = open(path, "wb")
            fmt.write_array_header_1_0(
                self._f, {"descr": fmt.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape})
            return
        self._f = open(path, "r+b")
        read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(fmt.read_magic(self._f))
        have = read(self._f) if read else None
        if have != (self.shape, False, self.dtype):
            self._f.close()
            raise RuntimeError(f"{path}: preallocated as {have}, expected {(self.shape, False, self.dtype)}")
        self._f.seek(self.start * self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64)), os.SEEK_CUR)

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:] or self.rows + len(block) > self.stop:
            raise ValueError(f"{self.path.name}: block {block.shape} does not fit {self.shape} at row {self.rows} "
                             f"(rows {self.start}..{self.stop})")
        self._f.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        if self.rows != self.stop:
            raise RuntimeError(f"{self.path.name}: wrote {self.rows - self.start} of {self.stop - self.start} rows")


class CacheLockedError(SetupError):
    """Another live process is writing the same cache."""


def sibling_path(out: Path, suffix: str) -> Path:
    return out.parent / (out.name + suffix)


def _holder(lock: Path) -> str:
    """Who the lock file says holds it, in words."""
    try:
        info = json.loads(lock.read_text())
        return f"{info['what']} by pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that left no details"


@contextmanager
def target_lock(out: str | os.PathLike, what: str = "dump") -> Iterator[Path]:
    """Hold an exclusive, non-blocking ``flock`` on ``OUT.lock`` while writing ``OUT``; raise
    :class:`CacheLockedError` naming the holder (pid, host, start time) if another process holds it."""
    import fcntl

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = sibling_path(out, ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CacheLockedError(f"{out} is being written by another process ({_holder(lock)}); refusing to "
                                   f"write it at the same time: wait for it to finish or use another --out "
                                   f"(the lock {lock.name} is released when that process ends)") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
        try:
            yield lock
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def check_unlocked(out: str | os.PathLike, what: str = "dump") -> None:
    """Refuse at once, before any loading, when another process holds ``OUT.lock`` (:class:`CacheLockedError`
    naming it); the writer takes the lock for real later (a race in between is still caught there)."""
    if sibling_path(Path(out), ".lock").exists():
        with target_lock(out, what):
            pass


def recover_target(out: Path) -> None:
    """Under the lock: finish what a killed writer of ``out`` left.

    * ``out`` missing and ``out.old`` present (killed between the two renames of an ``--overwrite``):
      **complete** the swap when a finished new cache (a ``.partial*`` folder with a manifest whose
      hashes verify) is there, else **roll back** (``out.old`` becomes ``out`` again).
    * ``out`` and ``out.old`` both present (killed while deleting the old one): remove ``out.old``.
    * ``FILE.new`` inside ``out`` (killed inside :func:`reprofile`): rename it into place if the manifest
      already records it, else delete it.
    * then every ``out.partial*`` folder (no live writer can own one: we hold the lock) is removed.
    """
    old = sibling_path(out, ".old")
    if old.exists() and not out.exists():
        done = _finished_partial(out)
        os.replace(done or old, out)
        warnings.warn(f"{out}: an interrupted --overwrite left {old.name}; "
                      + ("completed the swap to the new cache" if done else "restored the old cache"), RuntimeWarning)
    if old.exists():
        shutil.rmtree(old)
    if out.is_dir():
        _recover_reprofile(out)
    for stale in list(out.parent.glob(out.name + ".partial*")):
        if stale.name == out.name + ".partial" or stale.name.startswith(out.name + ".partial-"):
            shutil.rmtree(stale, ignore_errors=True)


def _finished_partial(out: Path) -> Path | None:
    """The newest ``out.partial*`` folder holding a complete cache whose hashes verify, if any."""
    found = []
    for d in out.parent.glob(out.name + ".partial*"):
        try:
            FeatureCache.open(d, verify=True)
            found.append(((d / MANIFEST).stat().st_mtime, d))
        except (CacheError, OSError):
            pass
    return max(found)[1] if found else None


def _recover_reprofile(out: Path) -> None:
    try:
        files = json.loads((out / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    for new in out.glob("*.new"):
        entry = files.get(new.name[:-4]) if isinstance(files, dict) else None
        if isinstance(entry, dict) and file_entry(new) == entry or isinstance(entry, int) and \
                new.stat().st_size == entry:  # schema 1: by size only
            os.replace(new, out / new.name[:-4])
        else:
            new.unlink()


@contextmanager
def writing_target(out: Path, overwrite: bool) -> Iterator[Path]:
    """Lock ``out``, repair what killed writers left, and yield a fresh folder of this dump's own to build
    the cache in; on any failure (Ctrl-C included) the folder is removed."""
    with target_lock(out, "dump"):
        recover_target(out)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        partial = sibling_path(out, f".partial-{os.getpid()}-{secrets.token_hex(4)}")
        partial.mkdir()
        try:
            yield partial
        except BaseException:  # a kill -9 leaves the folder; the next writer under the lock removes it
            shutil.rmtree(partial, ignore_errors=True)
            raise


def record_files(files: dict, folder: Path, root: Path) -> None:
    """Record size and SHA-256 of every file in ``folder`` under its path relative to ``root``."""
    for f in sorted(folder.iterdir()):
        files[f.relative_to(root).as_posix()] = file_entry(f)


def finish_cache(partial: Path, out: Path, manifest: dict) -> FeatureCache:
    """Write the manifest last (temp + rename), then move the finished folder into place (under the lock;
    a kill between the two renames of an overwrite is repaired by :func:`recover_target`)."""
    atomic_write(partial / MANIFEST, json.dumps(json_safe(manifest), indent=2, allow_nan=False))
    if out.exists():  # overwrite: move the old one aside, then swap
        old = sibling_path(out, ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(partial, out)
        shutil.rmtree(old)
    else:
        os.replace(partial, out)
    return FeatureCache.open(out)


def versions() -> dict:
    import pandas
    import torch
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "pandas": pandas.__version__}


__all__ = ["CacheLockedError", "NpyWriter", "check_unlocked", "finish_cache", "record_files", "recover_target",
           "sibling_path", "target_lock", "versions", "writing_target"]
