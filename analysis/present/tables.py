"""Text presentation of the toolkit's tables for the console: cache summaries, predictor quality, placement
comparisons and gate operating points (pure functions returning strings)."""
from __future__ import annotations

import pandas as pd


def format_cache_info(cache) -> str:
    """Model, data, splits, exits, timing conditions, unstable segments and per-exit summary of a cache."""
    m = cache.manifest
    lines = [f"cache {cache.path}: {m['model']['name']} (weights {m['model']['fingerprint']}) on "
             f"{m['dataset']['name']} (data {m['dataset']['fingerprint']})",
             "splits: " + ", ".join(f"{k}={v}" for k, v in m["splits"].items()) +
             f"; exits: {m['num_exits']} (after blocks {m['exits']} + final); features: {m['feature_dims']} "
             f"({m['pooling']}, {m['feature_dtype']})",
             f"latency measured on {m['device']} with {m['threads']} threads; MACs per sample (FLOPs = 2 x MACs)"]
    t = m.get("timing")
    if t:
        lines.append(f"timing: {int(cache.costs['rounds'].max()) if 'rounds' in cache.costs else '?'} interleaved "
                     f"rounds on {t['cpu']}; load {t['load_1min']} on {t['cores']} cores ({t['idle_cores']} idle)"
                     + ("; OVERSUBSCRIBED: more threads than idle cores" if t.get("oversubscribed") else ""))
    for b in cache.backends:
        costs = cache.costs_for(b)
        if "unstable" in costs and costs["unstable"].astype(bool).any():
            bad = costs[costs["unstable"].astype(bool)]
            flag = "" if b == "eager" else f" --backend {b}"
            lines.append(f"UNSTABLE timings ({b}; IQR over 10 % of the median; re-measure with `branchy profile "
                         f"--cache {cache.path}{flag}`): " + ", ".join(f"{r.segment} {r.k}" for r in bad.itertuples()))
    lines.append(cache.summary().to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return "\n".join(lines)


def print_cache_info(cache) -> None:
    print(format_cache_info(cache))


def format_eval(df: pd.DataFrame) -> str:
    """Predictor quality per split (rates are fractions of the samples reaching the predictor's exit; ROC AUC of
    the enter score, ECE of a gate's probability)."""
    cols = [c for c in ["predictor", "split", "reached", "accuracy", "balanced_accuracy", "f1", "false_enter",
                        "false_skip", "roc_auc", "ece", "mae", "r2", "macs", "ms_b1", "ms_unstable"] if c in df.columns]
    return df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}")


def format_compare(df: pd.DataFrame) -> str:
    """A placement search's chosen placement against full, the cascade and the oracle."""
    return df.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def format_gates(df: pd.DataFrame) -> str:
    """Per gate (calib, out of fold): cut, enter rate, skip rates, cost G, saving and break-even G (ms)."""
    cols = ["profile", "exit", "predictor", "at", "enter_%", "true_skip_%", "false_skip_%", "G_ms", "saving_ms",
            "break_even_G_ms", "saving_vs_removed_ms", "pays"]
    return ("gates alone in front of their exit, cut tuned on calib (out of fold); ms per sample at batch 1; "
            "break-even G: the largest predictor cost at which the gate still saves latency against always entering; "
            "pays: it also beats removing the exit\n"
            + df[[c for c in cols if c in df.columns]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def format_breakeven(df: pd.DataFrame) -> str:
    """Per gate position (calib): reach and accept rates (%), what skipping saves (S) and costs (P) in ms per
    sample, the share of samples the gate runs on (c), and the break-even cost of a perfect gate (ms)."""
    cols = [c for c in df.columns if c != "profile"]
    return ("per gate position: S saving_ms if every non-accepted sample skips the exit; P penalty_ms if the accepted "
            "ones skip too; c runs_share; max_cost_ms: the break-even cost of a perfect gate (S / c)\n"
            + df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


__all__ = ["format_breakeven", "format_cache_info", "format_compare", "format_eval", "format_gates", "print_cache_info"]
