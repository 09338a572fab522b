"""Saving and loading fitted predictors in a format that cannot run code when it is read.

A predictor folder holds ``predictors.json`` (the index, written last) and per predictor ``NAME``:

- ``NAME.npz``: arrays only (``oof``, ``classes``, and a torch MLP's fitted arrays ``est__mean_``, ...),
  read with ``allow_pickle=False``;
- ``NAME.skops``: a scikit-learn model (skops format), read only when every type it holds that skops does
  not trust by default is on :data:`SKOPS_TRUSTED`; or
- ``NAME.pt``: a torch MLP's ``state_dict``, read with ``torch.load(..., weights_only=True)``; the estimator
  itself is rebuilt from its constructor parameters (JSON in the index).

The index holds, per predictor, the spec, cache fingerprint, cost, fit split, folds and the SHA-256 of each
of its files. Names are checked, and every file must lie in the folder, before any model file is opened;
the format version and the cache fingerprint are checked before too. Older folders (format 2: pickled
``.joblib`` files) are never unpickled."""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import secrets
import warnings
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from branchy.checkpoint import torch_load_failure
from branchy.rule import ExitRule, json_float, json_safe

if TYPE_CHECKING:  # imported lazily below: fit re-exports this module's functions
    from .fit import FittedPredictor

INDEX = "predictors.json"
#: 3: no pickles (JSON index with SHA-256, arrays in .npz, scikit-learn models in skops, torch MLPs as
#: constructor params + state_dict); 2: cross-fitted predictors, exit rules in specs (pickled .joblib).
FORMAT_VERSION = 3

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_ATTR = re.compile(r"[a-z][a-z0-9_]*_")  # a fitted attribute of a torch estimator (learned state ends in _)
_HEX = re.compile(r"[0-9a-f]{64}")
_SUFFIXES = (".npz", ".skops", ".pt")
ENTRY_KEYS = ("spec", "folds", "cache_fingerprint", "cost", "fit_split", "estimator", "files")

#: Every type the registered scikit-learn predictor models (and the constant fallback) hold. A skops file is
#: read only if each type skops does not trust by default is in this list; nothing else is ever trusted.
SKOPS_TRUSTED = frozenset({
    "builtins.bool", "builtins.dict", "builtins.float", "builtins.int", "builtins.list", "builtins.str",
    "builtins.tuple",
    "numpy.bool_", "numpy.float32", "numpy.float64", "numpy.int32", "numpy.int64", "numpy.ndarray",
    "numpy.uint64", "numpy.random._generator.Generator", "numpy.random.mtrand.RandomState",
    "sklearn.dummy.DummyClassifier", "sklearn.dummy.DummyRegressor",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._label.LabelBinarizer", "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.linear_model._logistic.LogisticRegression", "sklearn.linear_model._ridge.Ridge",
    "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
    "sklearn.neural_network._multilayer_perceptron.MLPRegressor",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn._loss.loss.HalfBinomialLoss", "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss._loss.CyHalfBinomialLoss", "sklearn._loss._loss.CyHalfMultinomialLoss",
    "sklearn._loss._loss.CyHalfSquaredError",
    "sklearn._loss.link.IdentityLink", "sklearn._loss.link.Interval", "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
})

_TORCH_DTYPES = ("float64", "float32")


def _torch_estimators() -> dict:
    from .torch_mlp import TorchMLPClassifier, TorchMLPRegressor

    return {"TorchMLPClassifier": TorchMLPClassifier, "TorchMLPRegressor": TorchMLPRegressor}


def _refit(d: Path) -> str:
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
def _enc(v, what: str):
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
        return {"__tuple__": [_enc(x, what) for x in v]}
    if isinstance(v, list):
        return [_enc(x, what) for x in v]
    if isinstance(v, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in v):
            return {k: _enc(x, what) for k, x in v.items()}
        return {"__items__": [[_enc(k, what), _enc(x, what)] for k, x in v.items()]}
    raise TypeError(f"cannot save {what}: {type(v).__name__} {v!r} is not plain data (numbers, strings, lists, "
                    f"tuples, mappings)")


def _dec(v):
    """Inverse of :func:`_enc` (builds plain data only)."""
    if isinstance(v, list):
        return [_dec(x) for x in v]
    if isinstance(v, dict):
        if len(v) == 1 and "__tuple__" in v and isinstance(v["__tuple__"], list):
            return tuple(_dec(x) for x in v["__tuple__"])
        if len(v) == 1 and "__float__" in v:
            return json_float(v["__float__"])
        if len(v) == 1 and "__items__" in v and isinstance(v["__items__"], list):
            out = {}
            for kv in v["__items__"]:
                if not isinstance(kv, list) or len(kv) != 2:
                    raise ValueError("a tagged mapping holds something other than [key, value] pairs")
                k = _dec(kv[0])
                try:
                    out[k] = _dec(kv[1])
                except TypeError:
                    raise ValueError(f"a tagged mapping has an unhashable key {k!r}") from None
            return out
        return {k: _dec(x) for k, x in v.items()}
    return v


def _spec_json(spec) -> dict:
    s = {f.name: getattr(spec, f.name) for f in fields(spec)}
    rule = s.pop("rule")
    out = _enc(s, f"predictor {spec.name}'s spec")
    out["rule"] = None if rule is None else json_safe(rule.to_dict())
    return out


def _spec_from_json(s: dict, where: str, d: Path):
    from .fit import PredictorSpec

    if not isinstance(s, dict):
        raise ValueError(f"{where}: the spec is not a mapping: {_refit(d)}")
    s = dict(s)
    rule = s.pop("rule", None)
    try:
        kw = _dec(s)
        names = {f.name for f in fields(PredictorSpec)}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise ValueError(f"unknown spec fields {', '.join(map(str, unknown))}")
        return PredictorSpec(**kw, rule=None if rule is None else ExitRule.from_dict(rule))
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{where}: not a predictor spec ({e}): {_refit(d)}") from None


# ----------------------------------------------------------------------------- writing
def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _npz_bytes(arrays: dict[str, np.ndarray], name: str) -> bytes:
    for k, a in arrays.items():
        if a.dtype.hasobject:
            raise TypeError(f"cannot save predictor {name}: its array {k} holds Python objects ({a.dtype}); only "
                            f"numeric, boolean and string arrays are stored")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _dump_estimator(est, name: str) -> tuple[dict, dict[str, np.ndarray], dict[str, bytes]]:
    """``(meta for the index, arrays for NAME.npz, other files by name)`` of a fitted estimator."""
    from .torch_mlp import _mlp, _TorchMLPBase

    if isinstance(est, _TorchMLPBase):
        import torch

        cls = type(est).__name__
        if _torch_estimators().get(cls) is not type(est):
            raise TypeError(f"cannot save predictor {name}: {type(est).__module__}.{cls} is not a registered torch "
                            f"predictor model")
        arrays, scalars = {}, {}
        for k, v in vars(est).items():
            if not _ATTR.fullmatch(k) or k == "net_":
                continue
            if isinstance(v, np.ndarray):
                arrays[f"est__{k}"] = v
            else:
                scalars[k] = _enc(v, f"predictor {name}'s {k}")
        meta = {"kind": "torch", "class": cls, "params": _enc(est.get_params(deep=False), f"predictor {name}'s params"),
                "fitted": scalars, "net": None}
        files = {}
        net = getattr(est, "net_", None)
        if net is not None:
            sd = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
            hidden = tuple(int(h) for h in est.hidden)
            shape = {"d_in": int(est.n_features_in_), "hidden": list(hidden), "d_out": int(linears[-1].out_features)}
            with torch.device("meta"):
                ref = _mlp(shape["d_in"], hidden, shape["d_out"])
            if {k: tuple(v.shape) for k, v in ref.state_dict().items()} != {k: tuple(v.shape) for k, v in sd.items()}:
                raise TypeError(f"cannot save predictor {name}: its network is not the MLP that fit builds "
                                f"({shape})")
            dtypes = {str(v.dtype).removeprefix("torch.") for v in sd.values()}
            if len(dtypes) != 1 or not dtypes <= set(_TORCH_DTYPES):
                raise TypeError(f"cannot save predictor {name}: its network's weights are {sorted(dtypes)}, want one "
                                f"of {', '.join(_TORCH_DTYPES)}")
            meta["net"] = {**shape, "dtype": dtypes.pop()}
            buf = io.BytesIO()
            torch.save(sd, buf)
            files[f"{name}.pt"] = buf.getvalue()
        return meta, arrays, files
    import skops.io as sio

    b = sio.dumps(est)
    bad = sorted(set(sio.get_untrusted_types(data=b)) - SKOPS_TRUSTED)
    if bad:
        raise TypeError(f"cannot save predictor {name}: its model holds types outside the predictor allow-list "
                        f"(predictors.store.SKOPS_TRUSTED): {', '.join(bad)}")
    return {"kind": "skops", "class": type(est).__name__}, {}, {f"{name}.skops": b}


def _serialize(p: "FittedPredictor") -> tuple[dict, dict[str, bytes]]:
    name = check_name(p.spec.name)
    meta, arrays, files = _dump_estimator(p.estimator, name)
    for k, a in (("oof", p.oof), ("classes", p.classes)):
        if a is not None:
            arrays[k] = np.asarray(a)
    files = {f"{name}.npz": _npz_bytes(arrays, name), **files}
    entry = {"spec": _spec_json(p.spec), "folds": int(p.folds), "cache_fingerprint": str(p.cache_fingerprint),
             "cost": _enc(p.cost, f"predictor {name}'s cost"), "fit_split": str(p.fit_split), "estimator": meta,
             "files": {f: _sha(b) for f, b in files.items()}}
    return entry, files


def _own_files(d: Path, entries) -> list[Path]:
    """The files of an index's entries that this module writes (``NAME.npz|.skops|.pt``, valid names only)."""
    out = []
    for name in entries if isinstance(entries, dict) else ():
        if isinstance(name, str) and _NAME.fullmatch(name) and not name.startswith("."):
            out += [d / f"{name}{s}" for s in _SUFFIXES]
    return out


def _unlink(paths) -> None:
    for f in paths:
        if f.is_file() or f.is_symlink():
            f.unlink()


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
        _unlink([*d.glob("*.joblib"), *_own_files(d, old)])
        index = {"version": FORMAT_VERSION, "predictors": {}}
    stale = []
    for entry, files, name in staged:
        for fname, b in files.items():
            _atomic_write(d / fname, b)
        stale += [f for f in _own_files(d, {name: None}) if f.name not in files]
        index["predictors"][name] = entry
    _atomic_write(index_path, (json.dumps(index, indent=2, allow_nan=False) + "\n").encode())
    _unlink(stale)  # a replaced predictor's files of another kind (e.g. .pt -> .skops), once the index is in place
    return d


# ----------------------------------------------------------------------------- reading
def _read_index(d: Path) -> dict:
    path = d / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"no predictors at {str(d)!r} ({INDEX} missing); fit some with "
                                f"`branchy fit-predictors --out {d}`")
    try:
        index = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is not valid JSON ({type(e).__name__}): {_refit(d)}") from None
    if not isinstance(index, dict):
        raise ValueError(f"{path} is not a predictor index (a JSON mapping with version and predictors): "
                         f"{_refit(d)}")
    v = index.get("version")
    if v != FORMAT_VERSION:
        if v in (1, 2) or any(d.glob("*.joblib")):
            raise ValueError(f"{d}: predictors saved in format {v} (pickled .joblib files, which can run code when "
                             f"loaded, so they are not read); this toolkit reads format {FORMAT_VERSION}: "
                             f"{_refit(d)}")
        if isinstance(v, int) and not isinstance(v, bool) and v > FORMAT_VERSION:
            raise ValueError(f"{d}: predictors of format {v}, newer than this toolkit's {FORMAT_VERSION}: upgrade "
                             f"branchy-study, or {_refit(d)}")
        raise ValueError(f"{d}: predictors of format {v!r}; this toolkit reads format {FORMAT_VERSION}: {_refit(d)}")
    if not isinstance(index.get("predictors"), dict):
        raise ValueError(f"{path} has no 'predictors' mapping: {_refit(d)}")
    return index


def _check_entry(root: Path, name, entry) -> dict[str, str]:
    """Validate one index entry without opening any file; returns its files ``{name: sha256}``."""
    try:
        check_name(name)
    except ValueError as e:
        raise ValueError(f"{root / INDEX}: {e}; not loaded") from None
    where = f"{root / INDEX}: predictor {name}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is not a mapping: {_refit(root)}")
    missing = [k for k in ENTRY_KEYS if k not in entry]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}: {_refit(root)}")
    est, files = entry["estimator"], entry["files"]
    if not isinstance(est, dict) or est.get("kind") not in ("skops", "torch"):
        raise ValueError(f"{where}: unknown model kind {est.get('kind') if isinstance(est, dict) else est!r} "
                         f"(want skops or torch): {_refit(root)}")
    if not isinstance(files, dict) or not all(isinstance(k, str) for k in files):
        raise ValueError(f"{where}: 'files' is not a mapping of file names to SHA-256: {_refit(root)}")
    for fname in files:  # before anything else: a name that leaves the folder is refused as such
        _inside(root, fname, f"predictor {name}")
    want = {f"{name}.npz"}
    if est["kind"] == "skops":
        want.add(f"{name}.skops")
    elif est.get("net") is not None:
        want.add(f"{name}.pt")
    if set(files) != want:
        raise ValueError(f"{where} names files {sorted(files)}, want {sorted(want)}: {_refit(root)}")
    for fname, h in files.items():
        if not isinstance(h, str) or not _HEX.fullmatch(h):
            raise ValueError(f"{where}: {fname} has no SHA-256 in the index: {_refit(root)}")
    for k, typ in (("cache_fingerprint", str), ("fit_split", str), ("folds", int), ("cost", dict)):
        if not isinstance(entry[k], typ) or isinstance(entry[k], bool):
            raise ValueError(f"{where}: {k} is not a {typ.__name__}: {_refit(root)}")
    return files


def _read_file(root: Path, name: str, fname: str, sha: str) -> bytes:
    p = _inside(root, fname, f"predictor {name}")
    if not p.is_file():
        raise FileNotFoundError(f"{root}: {INDEX} lists {name} but {fname} is missing: {_refit(root)}")
    b = p.read_bytes()
    if _sha(b) != sha:
        raise ValueError(f"{p}: its SHA-256 does not match {INDEX} (the file is damaged, cut short or was replaced), "
                         f"so it is not read: {_refit(root)}")
    return b


def _load_npz(path: Path, b: bytes, root: Path) -> dict[str, np.ndarray]:
    try:
        z = np.load(io.BytesIO(b), allow_pickle=False)
        if isinstance(z, np.ndarray):
            raise ValueError("a single array, not an .npz archive")
        with z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:  # also object arrays, refused by allow_pickle=False
        raise ValueError(f"{path} is not a readable predictor array file ({e}): {_refit(root)}") from None
    except Exception as e:  # noqa: BLE001 - a damaged zip raises many kinds; one line, never a deep traceback
        raise ValueError(f"{path} is not a readable predictor array file ({type(e).__name__}): {_refit(root)}") \
            from None
    bad = [k for k in arrays if k not in ("oof", "classes") and not
           (k.startswith("est__") and _ATTR.fullmatch(k[5:]) and k != "est__net_")]
    if bad:
        raise ValueError(f"{path} holds unexpected arrays {', '.join(sorted(bad))}: {_refit(root)}")
    return arrays


def _load_skops(path: Path, b: bytes, root: Path):
    import skops.io as sio

    try:
        untrusted = set(sio.get_untrusted_types(data=b))
    except Exception as e:  # noqa: BLE001 - a damaged archive raises many kinds
        raise ValueError(f"{path} is not a readable skops model ({type(e).__name__}): {_refit(root)}") from None
    bad = sorted(untrusted - SKOPS_TRUSTED)
    if bad:
        raise ValueError(f"{path} holds types that are not on the predictor allow-list: {', '.join(bad)}; not "
                         f"loaded (a predictor file holds only the registered scikit-learn models): {_refit(root)}")
    try:
        return sio.loads(b, trusted=sorted(untrusted))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path} is not a readable skops model ({type(e).__name__}: {e}): {_refit(root)}") from None


def _load_torch(root: Path, name: str, meta: dict, arrays: dict, pt: tuple[Path, bytes] | None):
    import torch

    from .torch_mlp import _mlp

    where = f"{root / INDEX}: predictor {name}"
    cls = _torch_estimators().get(meta.get("class"))
    if cls is None:
        raise ValueError(f"{where}: {meta.get('class')!r} is not a torch predictor model (want "
                         f"{' or '.join(_torch_estimators())}): {_refit(root)}")
    try:
        params, fitted = _dec(meta.get("params")), _dec(meta.get("fitted"))
        if not isinstance(params, dict) or not isinstance(fitted, dict):
            raise ValueError("params and fitted must be mappings")
        unknown = sorted(set(params) - set(cls().get_params(deep=False)))
        if unknown:
            raise ValueError(f"unknown parameters {', '.join(map(str, unknown))}")
        est = cls(**params)
        for k, v in fitted.items():
            if not isinstance(k, str) or not _ATTR.fullmatch(k) or k == "net_":
                raise ValueError(f"{k!r} is not a fitted attribute")
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise ValueError(f"fitted attribute {k} is not a number")
            setattr(est, k, v)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: not a {cls.__name__} ({e}): {_refit(root)}") from None
    for k, a in arrays.items():
        if k.startswith("est__"):
            setattr(est, k[5:], a)
    net = meta.get("net")
    if net is None:
        est.net_ = None
        return est
    path, b = pt
    try:
        d_in, hidden, d_out, dtype = int(net["d_in"]), tuple(int(h) for h in net["hidden"]), int(net["d_out"]), \
            net["dtype"]
        if dtype not in _TORCH_DTYPES:
            raise ValueError(f"dtype {dtype!r}")
        with torch.device("meta"):  # shapes only: no memory, no draw from torch's random generator
            shell = _mlp(d_in, hidden, d_out)
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{where}: a damaged network description {net!r} ({e}): {_refit(root)}") from None
    try:
        sd = torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds; never pass on its weights_only advice
        raise ValueError(f"{path} is not a readable predictor network (torch could not read it as weights: "
                         f"{torch_load_failure(e)}): {_refit(root)}") from None
    want = {k: tuple(v.shape) for k, v in shell.state_dict().items()}
    if not (isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())
            and {k: tuple(v.shape) for k, v in sd.items()} == want):
        raise ValueError(f"{path} does not hold the weights of an MLP {d_in} -> {list(hidden)} -> {d_out}: "
                         f"{_refit(root)}")
    module = shell.to_empty(device="cpu").to(getattr(torch, dtype))
    module.load_state_dict(sd, strict=True)
    est.net_ = module.eval()
    return est


def _structure(est):
    from sklearn.pipeline import Pipeline

    if isinstance(est, Pipeline):
        return (Pipeline, tuple(type(s) for _, s in est.steps))
    return type(est)


def _check_estimator(est, spec, root: Path, name: str) -> None:
    """Refuse a loaded model that is not what ``spec``'s model builds (or the constant fallback)."""
    from sklearn.dummy import DummyClassifier

    from .models import make_estimator

    try:
        want = {_structure(make_estimator(spec.model, spec.task, class_weight=spec.class_weight,
                                          random_state=spec.random_state, **spec.params))}
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{root / INDEX}: predictor {name}'s spec builds no model ({e}): {_refit(root)}") from None
    if spec.task == "classification":
        want.add(DummyClassifier)
    if _structure(est) not in want:
        raise ValueError(f"{root / INDEX}: predictor {name}'s model is a {type(est).__name__}, not a {spec.model} "
                         f"{spec.task} model: {_refit(root)}")


def load_predictors(path: str | os.PathLike, cache=None) -> dict[str, FittedPredictor]:
    """All predictors of a folder by name; with ``cache``, refuse those fitted on another cache. Names, paths,
    the format version and the cache fingerprint are checked before any model file is read; every file's
    SHA-256 before it is parsed. Nothing read can run code (see the module's docstring)."""
    from .fit import FittedPredictor

    d = Path(path)
    index = _read_index(d)
    root = d.resolve()
    entries = index["predictors"]
    files = {name: _check_entry(root, name, entry) for name, entry in entries.items()}
    specs = {name: _spec_from_json(entry["spec"], f"{d / INDEX}: predictor {name}", d)
             for name, entry in entries.items()}
    for name, spec in specs.items():
        if spec.name != name:
            raise ValueError(f"{d / INDEX}: the entry {name} holds the spec of {spec.name}: {_refit(d)}")
        fp = entries[name]["cache_fingerprint"]
        if cache is not None and cache.fingerprint != fp:
            raise ValueError(f"predictor {name} was fitted on cache {fp}, not on {cache.path} ({cache.fingerprint}): "
                             f"refit it with `branchy fit-predictors`")
    blobs = {name: {f: _read_file(root, name, f, h) for f, h in fs.items()} for name, fs in files.items()}
    out = {}
    for name, entry in entries.items():
        spec, b = specs[name], blobs[name]
        arrays = _load_npz(root / f"{name}.npz", b[f"{name}.npz"], d)
        meta = entry["estimator"]
        if meta["kind"] == "skops":
            est = _load_skops(root / f"{name}.skops", b[f"{name}.skops"], d)
        else:
            pt = f"{name}.pt"
            est = _load_torch(d, name, meta, arrays, (root / pt, b[pt]) if pt in b else None)
        _check_estimator(est, spec, d, name)
        oof, classes = arrays.get("oof"), arrays.get("classes")
        if spec.task == "classification" and classes is None:
            raise ValueError(f"{d / INDEX}: predictor {name} has no classes: {_refit(d)}")
        if oof is not None and oof.ndim != (1 if spec.task == "regression" else 2):
            raise ValueError(f"{d / INDEX}: predictor {name}'s out-of-fold outputs have shape {oof.shape}: "
                             f"{_refit(d)}")
        try:
            cost = _dec(entry["cost"])
        except ValueError as e:
            raise ValueError(f"{d / INDEX}: predictor {name}'s cost is damaged ({e}): {_refit(d)}") from None
        out[name] = FittedPredictor(spec, est, entry["cache_fingerprint"], cost, entry["fit_split"], oof, classes,
                                    entry["folds"])
    return out
