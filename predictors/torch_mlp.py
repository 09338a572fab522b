"""Small torch MLPs behind scikit-learn's estimator contract: the thesis's "NN-based exit predictor"
(classifier) and "NN-based entropy predictor" (regressor). Early stopping on a held-out part of the
fit data; optional class weights for imbalanced gates. ``X`` may also be :class:`Rows` (rows read on demand,
e.g. from a cache's memory maps): the MLP then trains through a ``DataLoader`` that reads one batch at a time,
and standardises with moments gathered a chunk at a time, so features larger than memory can be fitted."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from branchy.cache import row_slices


class Rows:
    """Rows of a ``[N, D]`` float32 matrix read on demand. Subclasses give ``__len__``, ``n_features`` and
    ``take(idx)`` (a sorted or unsorted int array -> ``[len(idx), D]`` float32); ``rows[idx]`` is the lazy
    subset, and ``np.asarray(rows)`` reads everything (for models that need it in memory)."""

    chunk = 1 << 16
    n_features: int

    def __len__(self) -> int:
        raise NotImplementedError

    def take(self, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.n_features

    @property
    def ndim(self) -> int:
        return 2

    def __getitem__(self, idx) -> "Rows":
        return _Subset(self, np.arange(len(self))[idx])

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate(list(self.chunks())) if len(self) else np.zeros((0, self.n_features), np.float32)
        return out if dtype is None else out.astype(dtype)

    def chunk_index(self) -> list[np.ndarray]:
        """The row numbers of each chunk, in order (:func:`branchy.cache.row_slices`)."""
        return [np.arange(sl.start, sl.stop) for sl in row_slices(len(self), self.chunk)]

    def chunks(self):
        return (self.take(i) for i in self.chunk_index())

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and standard deviation (float32), accumulated in float64 a chunk at a time."""
        n, s, ss = 0, np.zeros(self.n_features), np.zeros(self.n_features)
        for x in self.chunks():
            x = x.astype(np.float64)
            n, s, ss = n + len(x), s + x.sum(0), ss + (x * x).sum(0)
        mean = s / max(n, 1)
        return mean.astype(np.float32), np.sqrt(np.maximum(ss / max(n, 1) - mean ** 2, 0)).astype(np.float32)


class _Subset(Rows):
    def __init__(self, base: Rows, index: np.ndarray) -> None:
        self.base, self.index, self.n_features, self.chunk = base, np.asarray(index), base.n_features, base.chunk

    def __len__(self) -> int:
        return len(self.index)

    def take(self, idx: np.ndarray) -> np.ndarray:
        return self.base.take(self.index[np.asarray(idx)])


class _IndexBatches:
    """Consecutive slices of ``index`` of ``size`` rows: a DataLoader's batch sampler that holds no list of
    Python ints (at 10^7 rows such a list alone is about 300 MB)."""

    def __init__(self, index: np.ndarray, size: int) -> None:
        self.index, self.size = index, size

    def __iter__(self):
        return (self.index[s : s + self.size] for s in range(0, len(self.index), self.size))

    def __len__(self) -> int:
        return -(-len(self.index) // self.size)


class _Batches(torch.utils.data.Dataset):
    """A :class:`Rows` as a map-style dataset whose batches are read in one call (``__getitems__``)."""

    def __init__(self, rows: Rows, mean: np.ndarray, scale: np.ndarray) -> None:
        self.rows, self.mean, self.scale = rows, mean, scale

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, idx):
        return torch.from_numpy((self.rows.take(np.asarray(idx)) - self.mean) / self.scale)


def build_mlp(d_in: int, hidden: tuple[int, ...], d_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), nn.ReLU()]
        d_in = h
    layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)


class TorchMLPBase(BaseEstimator):
    def __init__(self, hidden: tuple[int, ...] = (64,), lr: float = 3e-3, max_epochs: int = 200,
                 batch_size: int = 128, weight_decay: float = 1e-4, validation_fraction: float = 0.2,
                 patience: int = 15, random_state: int = 0):
        self.hidden = hidden
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.random_state = random_state

    # subclasses define: _targets(y) -> tensor, _loss(), _out_dim
    def _fit(self, X, t: torch.Tensor, d_out: int, loss_fn) -> None:
        if isinstance(X, Rows):  # rows read one batch at a time through a DataLoader
            mean, std = X.moments()
            self.mean_, self.scale_ = mean, std + 1e-6
            data = _Batches(X, self.mean_, self.scale_)
            n_in = X.n_features

            def batches(index, size):
                order = _IndexBatches(index, size)
                loader = torch.utils.data.DataLoader(data, batch_sampler=order, collate_fn=lambda b: b)
                return zip(order, loader)
        else:
            X = np.asarray(X, dtype=np.float32)
            self.mean_ = X.mean(0)
            self.scale_ = X.std(0) + 1e-6
            xt = torch.from_numpy((X - self.mean_) / self.scale_)
            n_in = X.shape[1]

            def batches(index, size):
                index = torch.as_tensor(index)
                return ((index[s : s + size], xt[index[s : s + size]]) for s in range(0, len(index), size))
        n = len(X)
        rng = np.random.default_rng(self.random_state)
        order = rng.permutation(n)
        n_val = int(round(n * self.validation_fraction)) if n >= 10 else 0
        val, tr = order[:n_val], order[n_val:]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            net = build_mlp(n_in, tuple(self.hidden), d_out)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            best, best_state, wait = np.inf, None, 0
            self.n_iter_ = 0
            for epoch in range(self.max_epochs):
                net.train()
                for b, xb in batches(rng.permutation(tr), self.batch_size):
                    opt.zero_grad()
                    loss_fn(net(xb), t[torch.as_tensor(b)]).backward()
                    opt.step()
                self.n_iter_ = epoch + 1
                if n_val:
                    net.eval()
                    with torch.no_grad():  # the outputs of every held-out row, a chunk at a time
                        out = torch.cat([net(xb) for _, xb in batches(val, 1 << 14)])
                        v = float(loss_fn(out, t[torch.as_tensor(val)]))
                    if v < best - 1e-6:
                        best, wait = v, 0
                        best_state = {k: p.clone() for k, p in net.state_dict().items()}
                    else:
                        wait += 1
                        if wait >= self.patience:
                            break
            if best_state is not None:
                net.load_state_dict(best_state)
        # inference in float64: batch-size independent to ~1e-15, as scikit-learn expects
        self.net_ = net.double().eval()
        self.best_val_loss_ = best

    def _forward(self, X) -> np.ndarray:
        check_is_fitted(self)
        if isinstance(X, Rows):
            if X.n_features != self.n_features_in_:
                raise ValueError(f"X has {X.n_features} features, but {type(self).__name__} is expecting "
                                 f"{self.n_features_in_} features as input")
            return np.concatenate([self._forward(x) for x in X.chunks()]) if len(X) else \
                np.zeros((0, self.net_[-1].out_features))
        X = validate_data(self, X, reset=False, dtype=np.float32)
        xt = torch.from_numpy(np.ascontiguousarray((X - self.mean_) / self.scale_, dtype=np.float64))
        with torch.no_grad():
            return self.net_(xt).numpy()

    def torch_module(self) -> nn.Module:
        """The fitted network with standardisation folded in front (for timing and deployment)."""
        check_is_fitted(self)
        mean = torch.from_numpy(np.asarray(self.mean_, dtype=np.float32))
        scale = torch.from_numpy(np.asarray(self.scale_, dtype=np.float32))
        import copy

        class Standardised(nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, x):
                return self.net((x - mean) / scale)

        return Standardised(copy.deepcopy(self.net_).float()).eval()


class TorchMLPClassifier(ClassifierMixin, TorchMLPBase):
    """MLP classifier (cross-entropy; ``class_weight='balanced'`` or a dict reweights classes)."""

    def __init__(self, hidden: tuple[int, ...] = (64,), lr: float = 3e-3, max_epochs: int = 200,
                 batch_size: int = 128, weight_decay: float = 1e-4, validation_fraction: float = 0.2,
                 patience: int = 15, class_weight=None, random_state: int = 0):
        super().__init__(hidden=hidden, lr=lr, max_epochs=max_epochs, batch_size=batch_size,
                         weight_decay=weight_decay, validation_fraction=validation_fraction, patience=patience,
                         random_state=random_state)
        self.class_weight = class_weight

    def fit(self, X, y):
        X, y = _validate(self, X, y)
        check_classification_targets(y)
        self.classes_, yi = np.unique(y, return_inverse=True)
        if len(self.classes_) == 1:
            self.net_ = None
            mean, std = X.moments() if isinstance(X, Rows) else (X.mean(0), X.std(0))
            self.mean_, self.scale_ = mean, std + 1e-6
            self.n_iter_ = 0
            return self
        from sklearn.utils.class_weight import compute_class_weight

        w = None
        if self.class_weight is not None:
            w = torch.tensor(compute_class_weight(self.class_weight, classes=self.classes_, y=y), dtype=torch.float32)
        loss = nn.CrossEntropyLoss(weight=w)
        self._fit(X, torch.from_numpy(yi.astype(np.int64)), len(self.classes_), loss)
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        if getattr(self, "net_", None) is None:
            n = len(X) if isinstance(X, Rows) else len(validate_data(self, X, reset=False, dtype=np.float32))
            return np.ones((n, 1))
        z = self._forward(X)
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def predict(self, X):
        p = self.predict_proba(X)
        return self.classes_[p.argmax(1)]


class TorchMLPRegressor(RegressorMixin, TorchMLPBase):
    """MLP regressor (MSE on a standardised target)."""

    def fit(self, X, y):
        X, y = _validate(self, X, y, y_numeric=True)
        y = np.asarray(y, dtype=np.float64)
        self.y_mean_, self.y_scale_ = float(y.mean()), float(y.std() + 1e-12)
        t = torch.from_numpy(((y - self.y_mean_) / self.y_scale_).astype(np.float32)).view(-1, 1)
        self._fit(X, t, 1, nn.MSELoss())
        return self

    def predict(self, X):
        return self._forward(X)[:, 0] * self.y_scale_ + self.y_mean_


def _validate(est, X, y, **kw):
    """scikit-learn's checks of ``X`` and ``y``; :class:`Rows` are checked by shape only (reading them all is
    what they are there to avoid)."""
    if not isinstance(X, Rows):
        return validate_data(est, X, y, dtype=np.float32, **kw)
    y = np.asarray(y)
    if len(y) != len(X) or y.ndim != 1:
        raise ValueError(f"X has {len(X)} rows, y has shape {y.shape}")
    if kw.get("y_numeric") and not np.isfinite(y.astype(np.float64)).all():
        raise ValueError("y holds NaN or infinite values")
    est.n_features_in_ = X.n_features
    return X, y


__all__ = ["Rows", "TorchMLPBase", "TorchMLPClassifier", "TorchMLPRegressor", "build_mlp"]
