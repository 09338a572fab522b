"""Where an ``nsga2`` search persists: an Optuna storage URL, checked before any work (scheme, a SQLite file
that exists, is a database and holds no other application's tables)."""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from urllib.parse import unquote

__all__ = ["STORAGE_EXAMPLE", "check_storage"]

STORAGE_EXAMPLE = "sqlite:///runs/optuna.db"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_SQLITE_HEADER = b"SQLite format 3\x00"
_OPTUNA_TABLES = {"studies", "version_info"}


def check_storage(url) -> str:
    """``url`` as an Optuna storage, checked before Optuna opens it (which would fail late, or write its tables
    into someone else's database): a URL (``scheme://...``); for SQLite, the file's folder exists and the file,
    when it has any bytes, is a SQLite database that is empty or already an Optuna storage. Other databases
    (postgresql://, mysql://) are left to Optuna. Returns ``url``; raises a one-line ValueError (a missing
    folder: FileNotFoundError) naming the storage and the fix."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"storage must be an Optuna storage URL such as {STORAGE_EXAMPLE}, got {url!r}")
    m = _SCHEME.match(url)
    if m is None:
        hint = f" (for the SQLite file {url}: sqlite:///{url})" if "/" in url or Path(url).suffix else ""
        raise ValueError(f"storage {url!r} is not an Optuna storage URL; give one such as {STORAGE_EXAMPLE}{hint}")
    scheme = m.group(1).lower()
    if scheme != "sqlite" and not scheme.startswith("sqlite+"):
        return url
    rest = url[m.end():].split("?", 1)[0]
    database = unquote(rest.partition("/")[2])  # as SQLAlchemy reads it: sqlite:///rel.db, sqlite:////abs.db
    if database in ("", ":memory:") or database.startswith("file:"):  # in memory, or a SQLite URI: left to it
        return url
    path = Path(database)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"storage {url!r}: the folder {str(folder)!r} does not exist (or is not a folder); "
                                f"create it first, or point the URL elsewhere (e.g. {STORAGE_EXAMPLE})")
    if path.is_dir():
        raise ValueError(f"storage {url!r}: {str(path)!r} is a folder, not a SQLite file; name a file in it "
                         f"(e.g. sqlite:///{path / 'optuna.db'})")
    if not path.exists() or path.stat().st_size == 0:
        return url  # Optuna creates its tables
    with open(path, "rb") as f:
        head = f.read(len(_SQLITE_HEADER))
    if head != _SQLITE_HEADER:
        raise ValueError(f"storage {url!r}: {str(path)!r} is not a SQLite database (its first bytes are not "
                         f"'SQLite format 3'); give a new file or an existing Optuna storage")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        if "locked" in str(e) or "busy" in str(e):
            return url  # in use (another search writing): Optuna waits for it
        raise ValueError(f"storage {url!r}: {str(path)!r} is not a readable SQLite database "
                         f"({' '.join(str(e).split())}); give a new file or an existing Optuna storage") from None
    if tables and not _OPTUNA_TABLES <= tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise ValueError(f"storage {url!r}: {str(path)!r} is a SQLite database but not an Optuna storage (it holds "
                         f"the tables {shown}, not studies/version_info); Optuna would add its tables to it, so "
                         f"give a new file (e.g. {STORAGE_EXAMPLE})")
    return url
