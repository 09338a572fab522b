"""Segment costs in context: fitted by non-negative least squares from the times the real runtime took along each
sample's path, instead of timing each segment alone in a warm loop.

A path's time is linear in what it ran (:mod:`analysis.core.simulate`): ``sample_ms + S_0 + ... + S_e`` for the
stages up to the exit ``e`` it leaves at, ``W_k + E_k + decision_ms`` per side exit ``k`` it enters, ``R_k`` per
side exit it goes on from, ``E_{K-1}`` at the final exit, plus its predictors' ``G``. Some of these always occur
together on every path (the runtime's per-sample cost and stage 0; the last stage and the final head; a side
exit's buffer write, head and decision), so the parameters fitted are

    a_0 = sample_ms + S_0,   S_k (0 < k < K-1),   t = S_{K-1} + E_{K-1},   h_k = W_k + E_k + decision_ms,   R_k

with predictors' costs held at their measured values (an offset per sample). Even these are not all identified
one by one (see :func:`row_basis`); the time of every path in the span of the paths seen is, and that is what a
simulation needs (:meth:`PathFit.predictable` says which paths of another policy are). :func:`fitted_costs` turns the fit
into a :class:`~analysis.core.costs.CostModel` that the simulator uses as it is (it charges exactly these sums on
every path). Units: ms per sample at batch 1."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from branchy.runtime import param_names  # one definition: the profiler's in-context fit uses the same parameters

from .costs import CostModel
from .simulate import Outcome




def design(o: Outcome) -> np.ndarray:
    """``[N, P]`` how many times each parameter of :func:`param_names` is paid on each sample's path of ``o``
    (0/1 counts). Needs the path the simulator recorded (not for overlapped branches or the oracle)."""
    if o.path is None:
        raise ValueError(f"policy {o.policy}: its outcome has no recorded path (overlapped branches or an oracle "
                         f"bound): path costs cannot be fitted from it")
    k, n = o.num_exits, o.n
    ex = o.exit
    cols = [np.ones(n)]
    cols += [(ex >= i).astype(float) for i in range(1, k - 1)]
    cols += [(ex == k - 1).astype(float)]
    cols += [o.path["held"][:, i].astype(float) for i in range(k - 1)]
    cols += [o.path["cont"][:, i].astype(float) for i in range(k - 1)]
    return np.stack(cols, 1)


@dataclass
class PathFit:
    """The fitted parameters (ms, :func:`param_names` order), which ones the paths identify (``identified``, see
    :func:`identified`; the others are one of many exact splits of what the paths pay), the fit's residual RMS
    (ms per sample) and the number of paths."""

    k: int
    params: np.ndarray
    identified: np.ndarray
    rms_ms: float
    n: int
    basis: np.ndarray  # orthonormal rows spanning the distinct paths seen

    def as_dict(self) -> dict:
        return dict(zip(param_names(self.k), self.params.tolist()))

    def predictable(self, o: Outcome) -> np.ndarray:
        """``[N]`` whether each path of ``o`` is a combination of paths the fit saw, so its predicted time does not
        depend on how the fit split what it could not separate."""
        x = design(o)
        return np.isclose(((x @ self.basis.T) ** 2).sum(1), (x ** 2).sum(1), rtol=1e-6, atol=1e-9)

    def predict(self, o: Outcome, gate_ms=None) -> np.ndarray:
        """``[N]`` ms each path of ``o`` takes under the fit (its predictors' time added)."""
        g = o.breakdown.get("predictors", np.zeros(o.n)) if gate_ms is None else gate_ms
        return design(o) @ self.params + np.broadcast_to(np.asarray(g, dtype=float), (o.n,))


def fit_path_costs(outcomes: list[Outcome], times_ms: list[np.ndarray], *, gate_ms: list | None = None) -> PathFit:
    """Non-negative least squares of the per-sample path times ``times_ms[i]`` (``[N_i]`` ms, measured along the
    paths of ``outcomes[i]``) on their path counts; ``gate_ms[i]``: each sample's predictor time to subtract
    (default: what the outcome charged its predictors). Parameters no path pays stay 0 and are marked not
    identified."""
    from scipy.optimize import nnls

    if len(outcomes) != len(times_ms) or not outcomes:
        raise ValueError("give one array of measured times per outcome (and at least one)")
    k = outcomes[0].num_exits
    xs, ys = [], []
    for i, (o, t) in enumerate(zip(outcomes, times_ms)):
        t = np.asarray(t, dtype=float)
        if o.num_exits != k or t.shape != (o.n,):
            raise ValueError(f"outcome {o.policy}: {t.shape} times for {o.n} samples of {o.num_exits} exits "
                             f"(want ({o.n},), {k} exits)")
        if not np.isfinite(t).all():
            raise ValueError(f"outcome {o.policy}: measured times hold NaN or inf")
        g = o.breakdown.get("predictors", np.zeros(o.n)) if gate_ms is None or gate_ms[i] is None else gate_ms[i]
        xs.append(design(o))
        ys.append(t - np.broadcast_to(np.asarray(g, dtype=float), (o.n,)))
    x, y = np.concatenate(xs), np.concatenate(ys)
    used = x.any(0)
    params = np.zeros(x.shape[1])
    if used.any():
        scale = np.sqrt((x[:, used] ** 2).sum(0))  # column scaling: rare paths weigh as much as common ones
        sol, _ = nnls(x[:, used] / scale, y, maxiter=50 * x.shape[1])
        params[used] = sol / scale
    rms = float(np.sqrt(np.mean((x @ params - y) ** 2)))
    basis = row_basis(x)
    return PathFit(k, params, np.isclose((basis ** 2).sum(0), 1.0, atol=1e-6), rms, len(y), basis)


def row_basis(x: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """Orthonormal rows spanning the distinct rows of ``x``. A parameter is identified by path times when its unit
    vector lies in that span; many are not, whatever the policies: every path pays ``a_0`` and, at the first exit,
    either ``h_0`` or ``S_1``, so ``(a_0 + d, h_0 - d, S_1 - d, R_0 + d)`` fits every path as well. What the fit
    gives is then the time of every path in the span (:meth:`PathFit.predictable`), which is what the simulator
    needs."""
    rows = np.unique(x, axis=0)
    _, sv, vt = np.linalg.svd(rows, full_matrices=False)
    return vt[sv > tol * max(sv.max(), 1.0)]


def fitted_costs(fit: PathFit, base: CostModel) -> CostModel:
    """``base`` (MACs, bytes and the profile name kept) with its latencies replaced by the fit: stage 0 carries
    ``a_0`` (the runtime's per-sample cost included), the last stage ``S_{K-1} + E_{K-1}``, each side exit's head
    ``h_k`` (buffer write and decision included), reads ``R_k``; per-sample and per-decision overheads 0."""
    k = fit.k
    if base.num_exits != k:
        raise ValueError(f"fit for {k} exits, cost model for {base.num_exits}")
    p = dict(zip(param_names(k), fit.params))
    stage = np.array([p["a0"]] + [p[f"S{i}"] for i in range(1, k - 1)] + [p["tail"]])
    head = np.array([p[f"h{i}"] for i in range(k - 1)] + [0.0])
    read = np.array([p[f"R{i}"] for i in range(k - 1)] + [0.0])
    return replace(base, profile=f"{base.profile} (fitted on path times)", stage_ms=stage, exit_ms=head,
                   write_ms=np.zeros(k), read_ms=read, sample_ms=0.0, decision_ms=0.0)


def path_params(costs: CostModel) -> np.ndarray:
    """The parameters of :func:`param_names` that a cost model implies (what a perfect fit recovers)."""
    k = costs.num_exits
    S, E, W, R = costs.stage_ms, costs.exit_ms, costs.write_ms, costs.read_ms
    return np.array([costs.sample_ms + S[0]] + [S[i] for i in range(1, k - 1)] + [S[-1] + E[-1]]
                    + [W[i] + E[i] + costs.decision_ms for i in range(k - 1)] + [R[i] for i in range(k - 1)])


PREDICTABLE_PCT = 95.0  # a held-out policy is predicted from fitted costs only where this share of its paths is spanned


def held_out_path_fit(names: list[str], sims: dict, meas: np.ndarray) -> list[tuple[float, float]]:
    """Per policy, its mean latency predicted by segment costs fitted (:func:`fit_path_costs`, NNLS) on the
    *other* policies' measured per-sample path times (``meas[j]``, ms), and the share (%) of its paths that lie in
    the span of theirs; (nan, 0) where no other policy has a recorded path."""
    out = []
    for j, name in enumerate(names):
        train = [i for i, n in enumerate(names) if i != j and sims[n].path is not None]
        if not train or sims[name].path is None:
            out.append((np.nan, 0.0))
            continue
        fit = fit_path_costs([sims[names[i]] for i in train], [meas[i] for i in train])
        out.append((float(fit.predict(sims[name]).mean()), 100 * float(fit.predictable(sims[name]).mean())))
    return out


__all__ = ["PREDICTABLE_PCT", "PathFit", "design", "fit_path_costs", "fitted_costs", "held_out_path_fit", "param_names",
           "path_params", "row_basis"]
