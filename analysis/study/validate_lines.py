"""What ``branchy validate`` prints: the validation table and one line per finding (simulated from stored costs
against the real run, pairs ordered alike, costs timed during the run, costs fitted on path times, machine drift),
each a pure function of :func:`analysis.study.validate.validate`'s frame."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd


def drift_line(df: pd.DataFrame, limit: float | None = None) -> str | None:
    """A warning when the machine ran the speed probe more than ``limit`` (default
    :data:`branchy.runtime.DRIFT_LIMIT`) times slower or faster during the run than when the cache's costs were
    profiled: the stored costs no longer describe this machine (None when within it or not recorded)."""
    from branchy.runtime import DRIFT_LIMIT

    limit = limit or DRIFT_LIMIT
    d = df["machine_drift"].iloc[0] if "machine_drift" in df else np.nan
    if not np.isfinite(d) or 1 / limit <= d <= limit:
        return None
    return (f"machine drift: the speed probe ran {d:.2f}x {'slower' if d > 1 else 'faster'} than when the costs were "
            f"profiled (limit {limit:g}x): re-profile the cache (branchy profile --cache DIR) before trusting "
            f"simulated figures")


def fit_line(df: pd.DataFrame) -> str | None:
    """The comparison with costs fitted on the other policies' path times (None without them)."""
    if "ratio_fit" not in df or not df["ratio_fit"].notna().any():
        return None
    d = df[df["ratio_fit"].notna()]
    worst = float(np.max(np.abs(d["ratio_fit"] - 1)))
    left = [p for p in df.policy if p not in set(d.policy)]
    return (f"with costs fitted on the other policies' path times (NNLS, each policy held out): worst |sim/meas - 1| "
            f"= {worst:.3f} over {len(d)} policies" + (f" ({', '.join(left)}: paths the others do not span)"
                                                       if left else ""))


PAIR_MARGIN = 0.05  # a pair of policies is ordered only where their real mean latencies differ by more than this


def order_agreement(names, real, sim, margin: float = PAIR_MARGIN) -> tuple[int, int, list[str]]:
    """Of the pairs of policies ``names`` (mean ms ``real`` measured and ``sim`` simulated, in the same order) whose
    real means differ by more than ``margin``: how many the simulation orders as the real run does, how many there
    are, and the ones it does not (in words)."""
    agree = total = 0
    bad = []
    for i, j in itertools.combinations(range(len(names)), 2):
        if abs(real[i] / real[j] - 1) <= margin:
            continue
        total += 1
        if (real[i] < real[j]) == (sim[i] < sim[j]):
            agree += 1
        else:
            bad.append(f"{names[i]} vs {names[j]}: real {real[i]:.3f} / {real[j]:.3f} ms, simulated {sim[i]:.3f} / "
                       f"{sim[j]:.3f} ms")
    return agree, total, bad


def pairs_line(df: pd.DataFrame, margin: float = PAIR_MARGIN) -> str | None:
    """Whether the simulation orders every pair of policies as the real run does, among the pairs whose real mean
    latencies differ by more than ``margin`` (None with fewer than two policies)."""
    if len(df) < 2:
        return None
    agree, total, _ = order_agreement(list(df.policy), df["meas_mean_ms"].to_numpy(), df["sim_mean_ms"].to_numpy(),
                                      margin)
    return (f"faster policy agrees in {agree} of {total} pairs of policies whose real means differ by more than "
            f"{100 * margin:g} % (simulated from the stored costs)")


def recheck_line(df: pd.DataFrame) -> str | None:
    """The same comparison with the costs timed during the run (None without them)."""
    if "ratio_now" not in df:
        return None
    worst = float(np.max(np.abs(df["ratio_now"] - 1)))
    return (f"with costs timed during the run: worst |sim/meas - 1| = {worst:.3f}; the full path took "
            f"{df['drift'].iloc[0]:.2f}x its profiled time during the run (machine drift)")


def validate_line(df: pd.DataFrame) -> str:
    worst = float(np.max(np.abs(df["ratio"] - 1)))
    return f"validate: worst |sim/meas - 1| = {worst:.3f} over {len(df)} policies (batch 1, {df.backend.iloc[0]})"


def format_validate(df: pd.DataFrame) -> str:
    d = pd.DataFrame({
        "policy": df.policy,
        "measured ms [CI]": [f"{r.meas_mean_ms:.4f} [{r.meas_mean_lo:.4f}, {r.meas_mean_hi:.4f}]" for r in df.itertuples()],
        "simulated ms [CI]": [f"{r.sim_mean_ms:.4f} [{r.sim_mean_lo:.4f}, {r.sim_mean_hi:.4f}]" for r in df.itertuples()],
        "sim/meas [CI]": [f"{r.ratio:.3f} [{r.ratio_lo:.3f}, {r.ratio_hi:.3f}]" for r in df.itertuples()],
        **({"sim/meas (costs now)": df["ratio_now"].map("{:.3f}".format)} if "ratio_now" in df else {}),
        **({"sim/meas (fitted, held out)": df["ratio_fit"].map("{:.3f}".format)} if "ratio_fit" in df else {}),
        "p95 meas [CI] / sim": [f"{r.meas_p95_ms:.3f} [{r.meas_p95_lo:.3f}, {r.meas_p95_hi:.3f}] / {r.sim_p95_ms:.3f}"
                                for r in df.itertuples()],
        "exits match %": df["exit_match_%"].round(1),
        "speed-up meas/sim": [f"{r.meas_speedup:.2f} / {r.sim_speedup:.2f}" for r in df.itertuples()],
        "batched ms/sample (speed-up)": [f"{r.batched_ms_per_sample:.4f} ({r.batched_speedup:.2f})"
                                          for r in df.itertuples()]})
    return d.to_string(index=False)


__all__ = ["PAIR_MARGIN", "drift_line", "fit_line", "format_validate", "order_agreement", "pairs_line", "recheck_line", "validate_line"]
