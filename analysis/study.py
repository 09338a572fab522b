"""The standard comparison on a cache: full, cascade, patience, gated, jump and oracle, with thresholds
calibrated on ``calib`` and everything reported on ``test``."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from branchy.cache import FeatureCache
from branchy.measures import confidence, is_confident

from dataclasses import replace

from .calibrate import budgeted_thresholds, calib_thresholds, threshold_grid, thresholds_for_accuracy
from .costs import CostModel, DeviceProfile
from .simulate import (Outcome, simulate_cascade, simulate_full, simulate_gated, simulate_jump, simulate_oracle,
                       simulate_patience)
from .stats import summary_table


@dataclass(frozen=True)
class PolicyConfig:
    """How the standard policies are set up. ``target_acc``: accuracy (fraction) the samples each side
    exit accepts must reach on calib (None: the final exit's calib accuracy)."""

    measure: str = "entropy"
    target_acc: float | None = None
    patience: int = 2
    overlap: bool = False
    n_boot: int = 1000


def split_arrays(cache: FeatureCache, split: str, thresholds, measure: str = "entropy"):
    """``passes`` ``[N, K]``, ``correct`` ``[N, K]``, ``preds`` ``[N, K]`` of one split."""
    from predictors.targets import check_thresholds

    z = np.asarray(cache.logits(split))
    preds = z.argmax(-1)
    correct = preds == cache.labels(split)[:, None]
    passes = is_confident(confidence(z, measure), check_thresholds(thresholds, z.shape[1]), measure)
    return passes, correct, preds


def calibrate(cache: FeatureCache, cfg: PolicyConfig) -> np.ndarray:
    return calib_thresholds(cache, cfg.target_acc, measure=cfg.measure)


def _gate_setup(cache, predictors, costs, split, k, kind: str):
    """enter [N,K], gate_at [K], gate_ms [K], gate_macs [K] from the best-on-calib gate of each side exit."""
    n = cache.size(split)
    enter, gate_at = np.ones((n, k), bool), np.full(k, -1)
    gate_ms, gate_macs = np.zeros(k), np.zeros(k)
    for e in range(k - 1):
        cands = [p for p in predictors.values() if p.spec.target == kind and p.spec.for_exit == e]
        if not cands:
            continue
        if kind == "gate":
            score = lambda p: p.evaluate(cache, "calib")["balanced_accuracy"]  # noqa: E731
        else:
            score = lambda p: -p.evaluate(cache, "calib")["mae"]  # noqa: E731
        p = max(cands, key=lambda q: (np.nan_to_num(score(q), nan=-np.inf), -q.spec.at))
        enter[:, e] = p.enter(cache, split)
        gate_at[e] = p.spec.at
        gate_ms[e] = costs.predictor_ms(p.cost["macs"], p.cost["ms_b1"])
        gate_macs[e] = p.cost["macs"]
    return enter, gate_at, gate_ms, gate_macs


def prepare_predictors(cache: FeatureCache, predictors: dict | None, costs: CostModel, split: str) -> dict:
    """Predictor decisions on ``split`` and their costs, computed once: per gated policy
    ``(enter, gate_at, gate_ms, gate_macs)``, and for ``jump`` ``(at, targets, G ms, G MACs)``. Each side
    exit gets the gate with the best calib score (balanced accuracy; MAE for entropy forecasters)."""
    prepared: dict = {}
    if not predictors:
        return prepared
    k = cache.num_exits
    for kind, name in (("gate", "gated"), ("entropy", "gated-entropy")):
        if any(p.spec.target == kind for p in predictors.values()):
            prepared[name] = _gate_setup(cache, predictors, costs, split, k, kind)
    jumps = [p for p in predictors.values() if p.spec.target == "exit"]
    if jumps:
        p = min(jumps, key=lambda q: q.spec.at)
        prepared["jump"] = (p.spec.at, p.predict(cache, split), costs.predictor_ms(p.cost["macs"], p.cost["ms_b1"]),
                            p.cost["macs"])
    return prepared


def run_policies(cache: FeatureCache, *, predictors: dict | None = None, profile: str | DeviceProfile = "measured",
                 cfg: PolicyConfig = PolicyConfig(), split: str = "test", thresholds=None,
                 prepared: dict | None = None) -> tuple[dict, pd.DataFrame]:
    """Every standard policy on ``split``; returns ``({name: Outcome}, summary table)``."""
    if split == "calib":
        raise ValueError("report on test: calib is where thresholds and predictors are tuned")
    costs = CostModel.from_cache(cache, profile)
    if prepared is None:
        prepared = prepare_predictors(cache, predictors, costs, split)
    t = calibrate(cache, cfg) if thresholds is None else np.asarray(thresholds, dtype=float)
    passes, correct, preds = split_arrays(cache, split, t, cfg.measure)
    out: dict[str, Outcome] = {"full": simulate_full(correct, costs),
                               "cascade": simulate_cascade(passes, correct, costs, overlap=cfg.overlap)}
    out["patience"] = simulate_patience(preds, correct, costs, cfg.patience)
    for name in ("gated", "gated-entropy"):
        if name in prepared:
            enter, gate_at, gms, gmacs = prepared[name]
            out[name] = simulate_gated(passes, correct, costs, enter=enter, gate_at=gate_at, gate_ms=gms,
                                       gate_macs=gmacs, overlap=cfg.overlap, name=name)
    if "jump" in prepared:
        at, targets, gms, gmacs = prepared["jump"]
        out["jump"] = simulate_jump(passes, correct, costs, at=at, target=targets, gate_ms=gms, gate_macs=gmacs)
    out["oracle"] = simulate_oracle(correct, costs)
    table = summary_table(list(out.values()), reference=out["full"], n_boot=cfg.n_boot)
    table.insert(1, "profile", costs.profile)
    return out, table


def pareto_points(cache: FeatureCache, *, predictors: dict | None = None, profile: str | DeviceProfile = "measured",
                  cfg: PolicyConfig = PolicyConfig(), split: str = "test", n_settings: int = 15) -> pd.DataFrame:
    """Accuracy vs latency on ``split`` for threshold settings calibrated on calib: MSDNet's budgeted
    rule (q_k ∝ p^k) over a range of p, per-exit target accuracies and BranchyNet's grid screening
    (every exit at the same quantile of its calib confidence); one row per policy and setting."""
    zc = np.asarray(cache.logits("calib"))
    yc = cache.labels("calib")
    settings = [("budget p", p, budgeted_thresholds(zc, p, measure=cfg.measure))
                for p in np.geomspace(0.05, 4.0, n_settings)]
    settings += [("target acc", a, thresholds_for_accuracy(zc, yc, a, measure=cfg.measure))
                 for a in np.linspace(0.9, 1.0, n_settings)]
    settings += [("grid quantile", q, t) for q, t in zip(np.linspace(0, 1, n_settings),
                                                          threshold_grid(zc, n_settings, measure=cfg.measure))]
    rows = []
    prepared = prepare_predictors(cache, predictors, CostModel.from_cache(cache, profile), split)
    for rule, value, t in settings:
        _, table = run_policies(cache, profile=profile, prepared=prepared,
                                cfg=replace(cfg, n_boot=0),
                                split=split, thresholds=t)
        table = table[~table.policy.isin(["full", "oracle", "patience"])]
        for r in table.to_dict("records"):
            rows.append({"rule": rule, "setting": value, "thresholds": np.round(t, 5).tolist(), **r})
    _, base = run_policies(cache, predictors=None, profile=profile, cfg=replace(cfg, n_boot=0),
                           split=split, thresholds=settings[0][2])
    for r in base[base.policy.isin(["full", "oracle"])].to_dict("records"):
        rows.append({"rule": "-", "setting": np.nan, "thresholds": None, **r})
    return pd.DataFrame(rows)
