"""Per-model serialisation: a fitted estimator to and from files that cannot run code when read. A
scikit-learn model goes through skops, read only when every type it holds that skops does not trust by
default is on :data:`SKOPS_TRUSTED`; a torch MLP is its constructor parameters and fitted scalars (JSON),
fitted arrays (in ``NAME.npz``) and its ``state_dict`` read with ``torch.load(..., weights_only=True)``.
Also the check that a loaded model is what its spec builds."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from branchy.train import torch_load_failure

from .store_format import FITTED_ATTR, INDEX, decode_value, encode_value, refit_of

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
    "sklearn.linear_model._logistic.LogisticRegressionCV", "sklearn.linear_model._ridge.RidgeCV",
    "sklearn.linear_model._stochastic_gradient.SGDClassifier",
    "sklearn.linear_model._stochastic_gradient.SGDRegressor",
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


# ----------------------------------------------------------------------------- writing
def dump_estimator(est, name: str) -> tuple[dict, dict[str, np.ndarray], dict[str, bytes]]:
    """``(meta for the index, arrays for NAME.npz, other files by name)`` of a fitted estimator."""
    from .torch_mlp import build_mlp, TorchMLPBase

    if isinstance(est, TorchMLPBase):
        import torch

        cls = type(est).__name__
        if _torch_estimators().get(cls) is not type(est):
            raise TypeError(f"cannot save predictor {name}: {type(est).__module__}.{cls} is not a registered torch "
                            f"predictor model")
        arrays, scalars = {}, {}
        for k, v in vars(est).items():
            if not FITTED_ATTR.fullmatch(k) or k == "net_":
                continue
            if isinstance(v, np.ndarray):
                arrays[f"est__{k}"] = v
            else:
                scalars[k] = encode_value(v, f"predictor {name}'s {k}")
        meta = {"kind": "torch", "class": cls, "params": encode_value(est.get_params(deep=False), f"predictor {name}'s params"),
                "fitted": scalars, "net": None}
        files = {}
        net = getattr(est, "net_", None)
        if net is not None:
            sd = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
            hidden = tuple(int(h) for h in est.hidden)
            shape = {"d_in": int(est.n_features_in_), "hidden": list(hidden), "d_out": int(linears[-1].out_features)}
            with torch.device("meta"):
                ref = build_mlp(shape["d_in"], hidden, shape["d_out"])
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
                        f"(SKOPS_TRUSTED in predictors/model_io.py): {', '.join(bad)}")
    return {"kind": "skops", "class": type(est).__name__}, {}, {f"{name}.skops": b}


# ----------------------------------------------------------------------------- reading
def load_skops(path: Path, b: bytes, root: Path):
    import skops.io as sio

    try:
        untrusted = set(sio.get_untrusted_types(data=b))
    except Exception as e:  # noqa: BLE001 - a damaged archive raises many kinds
        raise ValueError(f"{path} is not a readable skops model ({type(e).__name__}): {refit_of(root)}") from None
    bad = sorted(untrusted - SKOPS_TRUSTED)
    if bad:
        raise ValueError(f"{path} holds types that are not on the predictor allow-list: {', '.join(bad)}; not "
                         f"loaded (a predictor file holds only the registered scikit-learn models): {refit_of(root)}")
    try:
        return sio.loads(b, trusted=sorted(untrusted))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path} is not a readable skops model ({type(e).__name__}: {e}): {refit_of(root)}") from None


def load_torch_estimator(root: Path, name: str, meta: dict, arrays: dict, pt: tuple[Path, bytes] | None):
    import torch

    from .torch_mlp import build_mlp

    where = f"{root / INDEX}: predictor {name}"
    cls = _torch_estimators().get(meta.get("class"))
    if cls is None:
        raise ValueError(f"{where}: {meta.get('class')!r} is not a torch predictor model (want "
                         f"{' or '.join(_torch_estimators())}): {refit_of(root)}")
    try:
        params, fitted = decode_value(meta.get("params")), decode_value(meta.get("fitted"))
        if not isinstance(params, dict) or not isinstance(fitted, dict):
            raise ValueError("params and fitted must be mappings")
        unknown = sorted(set(params) - set(cls().get_params(deep=False)))
        if unknown:
            raise ValueError(f"unknown parameters {', '.join(map(str, unknown))}")
        est = cls(**params)
        for k, v in fitted.items():
            if not isinstance(k, str) or not FITTED_ATTR.fullmatch(k) or k == "net_":
                raise ValueError(f"{k!r} is not a fitted attribute")
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise ValueError(f"fitted attribute {k} is not a number")
            setattr(est, k, v)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: not a {cls.__name__} ({e}): {refit_of(root)}") from None
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
            shell = build_mlp(d_in, hidden, d_out)
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{where}: a damaged network description {net!r} ({e}): {refit_of(root)}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes: the error below says it all
            sd = torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds; never pass on its weights_only advice
        raise ValueError(f"{path} is not a readable predictor network (torch could not read it as weights: "
                         f"{torch_load_failure(e)}): {refit_of(root)}") from None
    want = {k: tuple(v.shape) for k, v in shell.state_dict().items()}
    if not (isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())
            and {k: tuple(v.shape) for k, v in sd.items()} == want):
        raise ValueError(f"{path} does not hold the weights of an MLP {d_in} -> {list(hidden)} -> {d_out}: "
                         f"{refit_of(root)}")
    module = shell.to_empty(device="cpu").to(getattr(torch, dtype))
    module.load_state_dict(sd, strict=True)
    est.net_ = module.eval()
    return est


def _structure(est):
    from sklearn.pipeline import Pipeline

    if isinstance(est, Pipeline):
        return (Pipeline, tuple(type(s) for _, s in est.steps))
    return type(est)


def check_saved_estimator(est, spec, root: Path, name: str) -> None:
    """Refuse a loaded model that is not what ``spec``'s model builds (or the constant fallback)."""
    from sklearn.dummy import DummyClassifier

    from .models import make_estimator

    try:
        want = {_structure(make_estimator(spec.model, spec.task, class_weight=spec.class_weight,
                                          random_state=spec.random_state, **spec.params))}
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{root / INDEX}: predictor {name}'s spec builds no model ({e}): {refit_of(root)}") from None
    if spec.task == "classification":
        want.add(DummyClassifier)
    if _structure(est) not in want:
        raise ValueError(f"{root / INDEX}: predictor {name}'s model is a {type(est).__name__}, not a {spec.model} "
                         f"{spec.task} model: {refit_of(root)}")


__all__ = ["SKOPS_TRUSTED", "check_saved_estimator", "dump_estimator", "load_skops", "load_torch_estimator"]
