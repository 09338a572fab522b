"""Every policy on a cache under each profile, decided on calib and reported on test, with its tables and
plots written to a folder (what ``branchy simulate`` and a study's simulate step produce)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from branchy.cache import FeatureCache
from branchy.core import atomic_write

from ..present import plots
from ..core.costs import get_profile
from ..present.tables import format_gates
from ..core.stats import format_headline
from ..core.policies import PolicyConfig, calibrate
from .compare import gate_break_even, pareto_points, study_policies


def simulate_to(cache: FeatureCache, out: str | Path, *, predictors: dict | None = None,
                profiles=("measured",), cfg: PolicyConfig = PolicyConfig(), verbose: bool = True) -> dict:
    """Run every policy under each profile on ``test`` (everything decided on ``calib``); write
    ``summary.csv``, ``pareto.csv``, ``gates.csv`` (per-gate operating point and break-even cost, calib),
    ``breakeven.csv`` (when a gate pays, per gate position, calib), ``gate_sentences.json`` (the same in words, per
    profile), ``thresholds.json`` (the exit rule) and PNG
    plots (``gate_map_PROFILE.png``: where a gate pays) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    profs = [get_profile(p) for p in profiles]  # unknown names fail before any work
    rule = calibrate(cache, cfg)
    rule.save(out / "thresholds.json")
    tables, points, gates, outcomes, chosen, breakeven, explained = [], [], [], {}, {}, [], {}
    for prof in profs:
        st = study_policies(cache, predictors=predictors, profile=prof, cfg=cfg, rule=rule)
        pts = pareto_points(cache, predictors=predictors, profile=prof, cfg=cfg, chosen=st.chosen, rule=rule,
                            evidence=st.evidence)
        tables.append(st.table)
        points.append(pts)
        gates.append(st.gates)
        outcomes[prof.name] = st.outcomes
        chosen[prof.name] = st.chosen
        if verbose:
            print(f"\n== {prof.name}: test split, everything decided on calib ({rule.describe()}); latency ms per "
                  f"sample at batch 1; speed-up over full; 95% bootstrap CIs")
            print(format_headline(st.table))
            if len(st.gates):
                print(format_gates(st.gates))
        be, real, lines = gate_break_even(st.evidence[0], rule, cfg, gates=st.gates)
        explained[prof.name] = lines
        if len(be):
            breakeven.append(be.assign(profile=prof.name))
            fig, ax = plots.plot_gate_map(be, real, title=f"where a gate pays ({prof.name}, calib)")
            plots.save(fig, out / f"gate_map_{prof.name}.png")
        if verbose:
            print(f"when a gate pays ({prof.name}, calib; ms per sample at batch 1):")
            print("\n".join(f"  {line}" for line in lines))
        fig, ax = plots.plot_pareto(pts, st.table, title=f"accuracy vs latency ({prof.name})")
        plots.save(fig, out / f"pareto_{prof.name}.png")
        fig, ax = plots.plot_latency_breakdown(st.table, title=f"latency breakdown ({prof.name})")
        plots.save(fig, out / f"breakdown_{prof.name}.png")
    summary = pd.concat(tables, ignore_index=True)
    pareto = pd.concat(points, ignore_index=True)
    gate_df = pd.concat([g for g in gates if len(g)], ignore_index=True) if any(len(g) for g in gates) \
        else pd.DataFrame()
    summary.to_csv(out / "summary.csv", index=False)
    pareto.to_csv(out / "pareto.csv", index=False)
    gate_df.to_csv(out / "gates.csv", index=False)
    be_df = pd.concat(breakeven, ignore_index=True) if breakeven else pd.DataFrame()
    be_df.to_csv(out / "breakeven.csv", index=False)
    atomic_write(out / "gate_sentences.json", json.dumps(explained, indent=1))
    fig, ax = plots.plot_exit_distribution(tables[0], title="exit distribution (test)")
    plots.save(fig, out / "exit_distribution.png")
    fig, ax = plots.plot_entropy_hist(cache.table("test"), thresholds=np.asarray(rule.thresholds)
                                      if rule.measure == "entropy" else None, title="entropy at each exit (test)")
    plots.save(fig, out / "entropy_hist.png")
    return {"summary": summary, "pareto": pareto, "gates": gate_df, "breakeven": be_df, "explained": explained,
            "rule": rule,
            "thresholds": np.asarray(rule.thresholds), "outcomes": outcomes, "chosen": chosen}


__all__ = ["simulate_to"]
