"""``branchy simulate``: the standard policies on a cache, tables and plots written to a folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from branchy.cache import FeatureCache

from . import plots
from .costs import get_profile
from .stats import format_headline
from .study import PolicyConfig, calibrate, pareto_points, run_policies


def simulate_to(cache: FeatureCache, out: str | Path, *, predictors: dict | None = None,
                profiles=("measured",), cfg: PolicyConfig = PolicyConfig(), verbose: bool = True) -> dict:
    """Run every policy under each profile on ``test`` (thresholds from ``calib``); write
    ``summary.csv``, ``pareto.csv``, ``thresholds.json`` and PNG plots into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    profs = [get_profile(p) for p in profiles]  # unknown names fail before any work
    t = calibrate(cache, cfg)
    (out / "thresholds.json").write_text(json.dumps({"measure": cfg.measure, "target_acc": cfg.target_acc,
                                                     "thresholds": [float(v) for v in t],
                                                     "tuned_on": "calib"}, indent=2))
    tables, points, outcomes = [], [], {}
    for prof in profs:
        outs, table = run_policies(cache, predictors=predictors, profile=prof, cfg=cfg, thresholds=t)
        pts = pareto_points(cache, predictors=predictors, profile=prof, cfg=cfg)  # has a profile column
        tables.append(table)
        points.append(pts)
        outcomes[prof.name] = outs
        if verbose:
            print(f"\n== {prof.name}: test split, thresholds tuned on calib; latency ms per sample at batch 1; "
                  f"speed-up over full; 95% bootstrap CIs")
            print(format_headline(table))
        fig, ax = plots.plot_pareto(pts, table, title=f"accuracy vs latency ({prof.name})")
        plots.save(fig, out / f"pareto_{prof.name}.png")
        fig, ax = plots.plot_latency_breakdown(table, title=f"latency breakdown ({prof.name})")
        plots.save(fig, out / f"breakdown_{prof.name}.png")
    summary = pd.concat(tables, ignore_index=True)
    pareto = pd.concat(points, ignore_index=True)
    summary.to_csv(out / "summary.csv", index=False)
    pareto.to_csv(out / "pareto.csv", index=False)
    fig, ax = plots.plot_exit_distribution(tables[0], title="exit distribution (test)")
    plots.save(fig, out / "exit_distribution.png")
    fig, ax = plots.plot_entropy_hist(cache.table("test"), thresholds=t, title="entropy at each exit (test)")
    plots.save(fig, out / "entropy_hist.png")
    return {"summary": summary, "pareto": pareto, "thresholds": np.asarray(t), "outcomes": outcomes}
