"""Saving and loading fitted predictors in a format that cannot run code when it is read.

A predictor folder holds ``predictors.json`` (the index, written last) and per predictor ``NAME``:

- ``NAME.npz``: arrays only (``oof``, ``classes``, a calibrated gate's map ``cal_*``, and a torch MLP's fitted
  arrays ``est__mean_``, ...),
  read with ``allow_pickle=False``;
- ``NAME.skops``: a scikit-learn model (skops format), read only when every type it holds that skops does
  not trust by default is on :data:`SKOPS_TRUSTED`; or
- ``NAME.pt``: a torch MLP's ``state_dict``, read with ``torch.load(..., weights_only=True)``; the estimator
  itself is rebuilt from its constructor parameters (JSON in the index).

The index holds, per predictor, the spec, cache fingerprint, cost, fit split, folds and the SHA-256 of each
of its files. Names are checked, and every file must lie in the folder, before any model file is opened;
the format version and the cache fingerprint are checked before too. Older folders (format 2: pickled
``.joblib`` files) are never unpickled.

This module saves and loads; the folder's layout, index and hashes are :mod:`predictors.store_format`'s, and
each model's own files :mod:`predictors.model_io`'s. Their public names are re-exported here."""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from branchy.core import atomic_write, json_safe, point
from branchy.exits import ExitRule

from .calibration import check_calibration
from .model_io import SKOPS_TRUSTED, check_saved_estimator, dump_estimator, load_skops, load_torch_estimator
from .store_format import (ENTRY_KEYS, FORMAT_VERSION, INDEX, check_entry, decode_value, encode_value, load_npz,
                           npz_bytes, own_files, read_file, read_index, refit_of, sha256_hex, unlink_all, check_name)

if TYPE_CHECKING:  # imported lazily below: fit re-exports this module's functions
    from .fitted import FittedPredictor

__all__ = ["save_predictors", "load_predictors", "SKOPS_TRUSTED", "INDEX", "FORMAT_VERSION", "ENTRY_KEYS",
           "check_name"]


# ----------------------------------------------------------------------------- specs as JSON
def _spec_json(spec) -> dict:
    s = {f.name: getattr(spec, f.name) for f in fields(spec)}
    rule = s.pop("rule")
    out = encode_value(s, f"predictor {spec.name}'s spec")
    out["rule"] = None if rule is None else json_safe(rule.to_dict())
    return out


def _spec_from_json(s: dict, where: str, d: Path):
    from .spec import PredictorSpec

    if not isinstance(s, dict):
        raise ValueError(f"{where}: the spec is not a mapping: {refit_of(d)}")
    s = dict(s)
    rule = s.pop("rule", None)
    try:
        kw = decode_value(s)
        names = {f.name for f in fields(PredictorSpec)}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise ValueError(f"unknown spec fields {', '.join(map(str, unknown))}")
        return PredictorSpec(**kw, rule=None if rule is None else ExitRule.from_dict(rule))
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{where}: not a predictor spec ({e}): {refit_of(d)}") from None


# ----------------------------------------------------------------------------- writing
def _serialize(p: "FittedPredictor") -> tuple[dict, dict[str, bytes]]:
    name = check_name(p.spec.name)
    meta, arrays, files = dump_estimator(p.estimator, name)
    for k, a in (("oof", p.oof), ("classes", p.classes), ("fit_rows", p.fit_rows), *(p.calibration or {}).items()):
        if a is not None:
            arrays[k] = np.asarray(a)
    files = {f"{name}.npz": npz_bytes(arrays, name), **files}
    entry = {"spec": _spec_json(p.spec), "folds": int(p.folds), "cache_fingerprint": str(p.cache_fingerprint),
             "cost": encode_value(p.cost, f"predictor {name}'s cost"), "fit_split": str(p.fit_split), "estimator": meta,
             "files": {f: sha256_hex(b) for f, b in files.items()}}
    return entry, files


def save_predictors(predictors: list[FittedPredictor], out: str | os.PathLike) -> Path:
    """Per predictor ``NAME.npz`` (arrays) and ``NAME.skops`` (scikit-learn model) or ``NAME.pt`` (torch MLP
    weights), then ``predictors.json`` (specs, costs, cache fingerprints, SHA-256 of each file), every file
    written atomically and the index last. Adds to what the folder already holds (same name: replaced); a
    folder of another format starts anew, deleting only the files it knows (``*.joblib``, its own)."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    index_path = d / INDEX
    staged = [_serialize(p) + (p.spec.name,) for p in predictors]  # everything checked before a write
    index = None
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
        except (ValueError, RecursionError) as e:
            warnings.warn(f"{index_path} is unreadable ({type(e).__name__}): starting a new index", stacklevel=2)
    if not (isinstance(index, dict) and index.get("version") == FORMAT_VERSION
            and isinstance(index.get("predictors"), dict)):
        old = index.get("predictors") if isinstance(index, dict) else None
        unlink_all([*d.glob("*.joblib"), *own_files(d, old)])
        index = {"version": FORMAT_VERSION, "predictors": {}}
    stale = []
    for entry, files, name in staged:
        for fname, b in files.items():
            atomic_write(d / fname, b)
        stale += [f for f in own_files(d, {name: None}) if f.name not in files]
        index["predictors"][name] = entry
    point("predictors:files-written")
    atomic_write(index_path, (json.dumps(index, indent=2, allow_nan=False) + "\n").encode())
    unlink_all(stale)  # a replaced predictor's files of another kind (e.g. .pt -> .skops), once the index is in place
    return d


# ----------------------------------------------------------------------------- reading
def load_predictors(path: str | os.PathLike, cache=None) -> dict[str, FittedPredictor]:
    """All predictors of a folder by name; with ``cache``, refuse those fitted on another cache. Names, paths,
    the format version and the cache fingerprint are checked before any model file is read; every file's
    SHA-256 before it is parsed. Nothing read can run code (see the module's docstring)."""
    from .fitted import FittedPredictor

    d = Path(path)
    index = read_index(d)
    root = d.resolve()
    entries = index["predictors"]
    files = {name: check_entry(root, name, entry) for name, entry in entries.items()}
    specs = {name: _spec_from_json(entry["spec"], f"{d / INDEX}: predictor {name}", d)
             for name, entry in entries.items()}
    for name, spec in specs.items():
        if spec.name != name:
            raise ValueError(f"{d / INDEX}: the entry {name} holds the spec of {spec.name}: {refit_of(d)}")
        fp = entries[name]["cache_fingerprint"]
        if cache is not None and cache.fingerprint != fp:
            raise ValueError(f"predictor {name} was fitted on cache {fp}, not on {cache.path} ({cache.fingerprint}): "
                             f"refit it with `branchy fit-predictors`")
    blobs = {name: {f: read_file(root, name, f, h) for f, h in fs.items()} for name, fs in files.items()}
    out = {}
    for name, entry in entries.items():
        spec, b = specs[name], blobs[name]
        arrays = load_npz(root / f"{name}.npz", b[f"{name}.npz"], d)
        meta = entry["estimator"]
        if meta["kind"] == "skops":
            est = load_skops(root / f"{name}.skops", b[f"{name}.skops"], d)
        else:
            pt = f"{name}.pt"
            est = load_torch_estimator(d, name, meta, arrays, (root / pt, b[pt]) if pt in b else None)
        check_saved_estimator(est, spec, d, name)
        oof, classes = arrays.get("oof"), arrays.get("classes")
        if spec.task == "classification" and classes is None:
            raise ValueError(f"{d / INDEX}: predictor {name} has no classes: {refit_of(d)}")
        if oof is not None and oof.ndim != (1 if spec.task == "regression" else 2):
            raise ValueError(f"{d / INDEX}: predictor {name}'s out-of-fold outputs have shape {oof.shape}: "
                             f"{refit_of(d)}")
        try:
            cost = decode_value(entry["cost"])
        except ValueError as e:
            raise ValueError(f"{d / INDEX}: predictor {name}'s cost is damaged ({e}): {refit_of(d)}") from None
        cal = {k: a for k, a in arrays.items() if k.startswith("cal_")}
        if cal and spec.calibration is None:
            raise ValueError(f"{d / INDEX}: predictor {name} holds a calibration map its spec does not name: "
                             f"{refit_of(d)}")
        cal = check_calibration(cal, f"{d / INDEX}: predictor {name}") if cal else None
        fit_rows = arrays.get("fit_rows")
        if fit_rows is not None and (fit_rows.ndim != 1 or fit_rows.dtype.kind not in "iu" or oof is None
                                     or len(fit_rows) != len(oof) or (np.diff(fit_rows) <= 0).any()):
            raise ValueError(f"{d / INDEX}: predictor {name}'s fit rows do not match its out-of-fold outputs: "
                             f"{refit_of(d)}")
        out[name] = FittedPredictor(spec, est, entry["cache_fingerprint"], cost, entry["fit_split"], oof, classes,
                                    entry["folds"], cal, fit_rows=fit_rows)
    return out
