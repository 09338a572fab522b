"""Small torch MLPs behind scikit-learn's estimator contract: the thesis's "NN-based exit predictor"
(classifier) and "NN-based entropy predictor" (regressor). Early stopping on a held-out part of the
fit data; optional class weights for imbalanced gates."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn


def _mlp(d_in: int, hidden: tuple[int, ...], d_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), nn.ReLU()]
        d_in = h
    layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)


class _TorchMLPBase(BaseEstimator):
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
    def _fit(self, X: np.ndarray, t: torch.Tensor, d_out: int, loss_fn) -> None:
        X = np.asarray(X, dtype=np.float32)
        self.mean_ = X.mean(0)
        self.scale_ = X.std(0) + 1e-6
        xt = torch.from_numpy((X - self.mean_) / self.scale_)
        n = len(xt)
        rng = np.random.default_rng(self.random_state)
        order = rng.permutation(n)
        n_val = int(round(n * self.validation_fraction)) if n >= 10 else 0
        val, tr = order[:n_val], order[n_val:]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            net = _mlp(X.shape[1], tuple(self.hidden), d_out)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            best, best_state, wait = np.inf, None, 0
            self.n_iter_ = 0
            for epoch in range(self.max_epochs):
                net.train()
                perm = torch.from_numpy(rng.permutation(tr))
                for s in range(0, len(perm), self.batch_size):
                    b = perm[s : s + self.batch_size]
                    opt.zero_grad()
                    loss_fn(net(xt[b]), t[b]).backward()
                    opt.step()
                self.n_iter_ = epoch + 1
                if n_val:
                    net.eval()
                    with torch.no_grad():
                        v = float(loss_fn(net(xt[val]), t[val]))
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


class TorchMLPClassifier(ClassifierMixin, _TorchMLPBase):
    """MLP classifier (cross-entropy; ``class_weight='balanced'`` or a dict reweights classes)."""

    def __init__(self, hidden: tuple[int, ...] = (64,), lr: float = 3e-3, max_epochs: int = 200,
                 batch_size: int = 128, weight_decay: float = 1e-4, validation_fraction: float = 0.2,
                 patience: int = 15, class_weight=None, random_state: int = 0):
        super().__init__(hidden=hidden, lr=lr, max_epochs=max_epochs, batch_size=batch_size,
                         weight_decay=weight_decay, validation_fraction=validation_fraction, patience=patience,
                         random_state=random_state)
        self.class_weight = class_weight

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, yi = np.unique(y, return_inverse=True)
        if len(self.classes_) == 1:
            self.net_ = None
            self.mean_, self.scale_ = X.mean(0), X.std(0) + 1e-6
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
            X = validate_data(self, X, reset=False, dtype=np.float32)
            return np.ones((len(X), 1))
        z = self._forward(X)
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def predict(self, X):
        p = self.predict_proba(X)
        return self.classes_[p.argmax(1)]


class TorchMLPRegressor(RegressorMixin, _TorchMLPBase):
    """MLP regressor (MSE on a standardised target)."""

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float32, y_numeric=True)
        y = np.asarray(y, dtype=np.float64)
        self.y_mean_, self.y_scale_ = float(y.mean()), float(y.std() + 1e-12)
        t = torch.from_numpy(((y - self.y_mean_) / self.y_scale_).astype(np.float32)).view(-1, 1)
        self._fit(X, t, 1, nn.MSELoss())
        return self

    def predict(self, X):
        return self._forward(X)[:, 0] * self.y_scale_ + self.y_mean_
