"""The on-disk layout of a predictor folder, independent of any model: file and predictor names and the
check that every file lies in the folder, plain data as exact JSON, SHA-256 hashes, atomic writes, the
``predictors.json`` index (format version, per-entry checks) and the ``NAME.npz`` array files. Nothing here
opens a model file; see :mod:`predictors.store` for the format as a whole."""
from __future__ import annotations

import hashlib
import io
import math
import re
from pathlib import Path

import numpy as np

from branchy.core import check_version, json_float, json_safe, read_json_object

INDEX = "predictors.json"
#: 3: no pickles (JSON index with SHA-256, arrays in .npz, scikit-learn models in skops, torch MLPs as
#: constructor params + state_dict); 2: cross-fitted predictors, exit rules in specs (pickled .joblib).
FORMAT_VERSION = 3

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
FITTED_ATTR = re.compile(r"[a-z][a-z0-9_]*_")  # a fitted attribute of a torch estimator (learned state ends in _)
_HEX = re.compile(r"[0-9a-f]{64}")
_SUFFIXES = (".npz", ".skops", ".pt")
CAL_ARRAYS = ("cal_a", "cal_b", "cal_x", "cal_y")  # a calibrated gate's map (predictors.calibration)
ENTRY_KEYS = ("spec", "folds", "cache_fingerprint", "cost", "fit_split", "estimator", "files")


def refit_of(d: Path) -> str:
    return f"refit with `branchy fit-predictors --cache CACHE --out {d}` (or rerun the study, which refits)"


# ----------------------------------------------------------------------------- names and paths
def check_name(name) -> str:
    """``name`` if it may name a predictor file: letters, digits, ``_``, ``.``, ``-``, not starting with ``.``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.startswith("."):
        raise ValueError(f"predictor name {name!r} is refused: a name is letters, digits, '_', '.' and '-' only, "
                         f"and does not start with '.'")
    return name


def _inside(root: Path, fname: str, what: str) -> Path:
    """``root / fname`` resolved, refused (ValueError) unless it is a file name directly in ``root``."""
    try:
        p = (root / fname).resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop
        p = None
    if p is None or not p.is_relative_to(root) or p.parent != root:
        raise ValueError(f"{root / INDEX}: {what} names {fname!r}, which resolves outside the predictors folder "
                         f"({p}): refused")
    return p


# ----------------------------------------------------------------------------- plain data as JSON
def encode_value(v, what: str):
    """Plain data as JSON, exactly: tuples, non-finite floats and mappings with non-string keys tagged."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else {"__float__": json_safe(f)}
    if isinstance(v, tuple):
        return {"__tuple__": [encode_value(x, what) for x in v]}
    if isinstance(v, list):
        return [encode_value(x, what) for x in v]
    if isinstance(v, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in v):
            return {k: encode_value(x, what) for k, x in v.items()}
        return {"__items__": [[encode_value(k, what), encode_value(x, what)] for k, x in v.items()]}
    raise TypeError(f"cannot save {what}: {type(v).__name__} {v!r} is not plain data (numbers, strings, lists, "
                    f"tuples, mappings)")


def decode_value(v):
    """Inverse of :func:`encode_value` (builds plain data only)."""
    if isinstance(v, list):
        return [decode_value(x) for x in v]
    if isinstance(v, dict):
        if len(v) == 1 and "__tuple__" in v and isinstance(v["__tuple__"], list):
            return tuple(decode_value(x) for x in v["__tuple__"])
        if len(v) == 1 and "__float__" in v:
            return json_float(v["__float__"])
        if len(v) == 1 and "__items__" in v and isinstance(v["__items__"], list):
            out = {}
            for kv in v["__items__"]:
                if not isinstance(kv, list) or len(kv) != 2:
                    raise ValueError("a tagged mapping holds something other than [key, value] pairs")
                k = decode_value(kv[0])
                try:
                    out[k] = decode_value(kv[1])
                except TypeError:
                    raise ValueError(f"a tagged mapping has an unhashable key {k!r}") from None
            return out
        return {k: decode_value(x) for k, x in v.items()}
    return v


# ----------------------------------------------------------------------------- writing
def sha256_hex(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def npz_bytes(arrays: dict[str, np.ndarray], name: str) -> bytes:
    for k, a in arrays.items():
        if a.dtype.hasobject:
            raise TypeError(f"cannot save predictor {name}: its array {k} holds Python objects ({a.dtype}); only "
                            f"numeric, boolean and string arrays are stored")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def own_files(d: Path, entries) -> list[Path]:
    """The files of an index's entries that :func:`~predictors.store.save_predictors` writes
    (``NAME.npz|.skops|.pt``, valid names only)."""
    out = []
    for name in entries if isinstance(entries, dict) else ():
        if isinstance(name, str) and _NAME.fullmatch(name) and not name.startswith("."):
            out += [d / f"{name}{s}" for s in _SUFFIXES]
    return out


def unlink_all(paths) -> None:
    for f in paths:
        if f.is_file() or f.is_symlink():
            f.unlink()


# ----------------------------------------------------------------------------- reading
def read_index(d: Path) -> dict:
    path = d / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"no predictors at {str(d)!r} ({INDEX} missing); fit some with "
                                f"`branchy fit-predictors --out {d}`")
    index = read_json_object(path, what="a predictor index", fix=refit_of(d))
    v = index.get("version")
    if v != FORMAT_VERSION and not isinstance(v, int) and any(d.glob("*.joblib")):
        v = 2  # .joblib pickles without a version: format 2, the last that wrote them
    check_version(str(d), "predictor format", v, reads=range(FORMAT_VERSION, FORMAT_VERSION + 1), fix=refit_of(d),
                  older="pickled .joblib files, which can run code when loaded, so they are not read" if v in (1, 2)
                  else None)
    if not isinstance(index.get("predictors"), dict):
        raise ValueError(f"{path} has no 'predictors' mapping: {refit_of(d)}")
    return index


def check_entry(root: Path, name, entry) -> dict[str, str]:
    """Validate one index entry without opening any file; returns its files ``{name: sha256}``."""
    try:
        check_name(name)
    except ValueError as e:
        raise ValueError(f"{root / INDEX}: {e}; not loaded") from None
    where = f"{root / INDEX}: predictor {name}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is not a mapping: {refit_of(root)}")
    missing = [k for k in ENTRY_KEYS if k not in entry]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}: {refit_of(root)}")
    est, files = entry["estimator"], entry["files"]
    if not isinstance(est, dict) or est.get("kind") not in ("skops", "torch"):
        raise ValueError(f"{where}: unknown model kind {est.get('kind') if isinstance(est, dict) else est!r} "
                         f"(want skops or torch): {refit_of(root)}")
    if not isinstance(files, dict) or not all(isinstance(k, str) for k in files):
        raise ValueError(f"{where}: 'files' is not a mapping of file names to SHA-256: {refit_of(root)}")
    for fname in files:  # before anything else: a name that leaves the folder is refused as such
        _inside(root, fname, f"predictor {name}")
    want = {f"{name}.npz"}
    if est["kind"] == "skops":
        want.add(f"{name}.skops")
    elif est.get("net") is not None:
        want.add(f"{name}.pt")
    if set(files) != want:
        raise ValueError(f"{where} names files {sorted(files)}, want {sorted(want)}: {refit_of(root)}")
    for fname, h in files.items():
        if not isinstance(h, str) or not _HEX.fullmatch(h):
            raise ValueError(f"{where}: {fname} has no SHA-256 in the index: {refit_of(root)}")
    for k, typ in (("cache_fingerprint", str), ("fit_split", str), ("folds", int), ("cost", dict)):
        if not isinstance(entry[k], typ) or isinstance(entry[k], bool):
            raise ValueError(f"{where}: {k} is not a {typ.__name__}: {refit_of(root)}")
    return files


def read_file(root: Path, name: str, fname: str, sha: str) -> bytes:
    p = _inside(root, fname, f"predictor {name}")
    if not p.is_file():
        raise FileNotFoundError(f"{root}: {INDEX} lists {name} but {fname} is missing: {refit_of(root)}")
    b = p.read_bytes()
    if sha256_hex(b) != sha:
        raise ValueError(f"{p}: its SHA-256 does not match {INDEX} (the file is damaged, cut short or was replaced), "
                         f"so it is not read: {refit_of(root)}")
    return b


def load_npz(path: Path, b: bytes, root: Path) -> dict[str, np.ndarray]:
    try:
        z = np.load(io.BytesIO(b), allow_pickle=False)
        if isinstance(z, np.ndarray):
            raise ValueError("a single array, not an .npz archive")
        with z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:  # also object arrays, refused by allow_pickle=False
        raise ValueError(f"{path} is not a readable predictor array file ({e}): {refit_of(root)}") from None
    except Exception as e:  # noqa: BLE001 - a damaged zip raises many kinds; one line, never a deep traceback
        raise ValueError(f"{path} is not a readable predictor array file ({type(e).__name__}): {refit_of(root)}") \
            from None
    bad = [k for k in arrays if k not in ("oof", "classes", "fit_rows", *CAL_ARRAYS) and not
           (k.startswith("est__") and FITTED_ATTR.fullmatch(k[5:]) and k != "est__net_")]
    if bad:
        raise ValueError(f"{path} holds unexpected arrays {', '.join(sorted(bad))}: {refit_of(root)}")
    return arrays


__all__ = ["CAL_ARRAYS", "ENTRY_KEYS", "FITTED_ATTR", "FORMAT_VERSION", "INDEX", "check_entry", "check_name",
           "decode_value", "encode_value", "load_npz", "npz_bytes", "own_files", "read_file", "read_index", "refit_of",
           "sha256_hex", "unlink_all"]
