"""Plots (seaborn on matplotlib). Every function draws on ``ax`` (or a new figure) and returns
``(fig, ax)``; nothing here calls ``plt.show()``."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..core.policies import is_reference, policy_order
from ..core.sweep import pareto_front


def _ax(ax, figsize=(6, 4)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def _palette(policies) -> dict:
    names = policy_order(policies)
    return dict(zip(names, sns.color_palette("tab10", len(names))))


def plot_pareto(points: pd.DataFrame, summary: pd.DataFrame | None = None, *, x: str = "mean_ms",
                y: str = "accuracy_%", ax=None, title: str | None = None):
    """Accuracy versus latency: each policy's front over threshold settings (lines: the settings that
    are non-dominated *on calib*, column ``on_front``, drawn at their test values; without that column
    the front of the points themselves), its calibrated operating point (large markers, from ``summary``),
    the references: full and the oracle bound (stars)."""
    fig, ax = _ax(ax)
    pal = _palette(list(points.policy.unique()) + ([] if summary is None else list(summary.policy)))
    for pol, d in points.groupby("policy", sort=False):
        if is_reference(pol):
            continue
        ax.scatter(d[x], d[y], s=10, alpha=0.35, color=pal[pol])
        f = d[d.on_front.astype(bool)].sort_values(f"calib_{x}" if f"calib_{x}" in d else x) \
            if "on_front" in d else pareto_front(d, x, y)
        ax.plot(f[x], f[y], "-", color=pal[pol], label=f"{pol} (front)")
    ref = summary if summary is not None else points
    for pol in [p for p in policy_order(ref.policy.unique()) if is_reference(p)]:
        d = ref[ref.policy == pol]
        if len(d):
            ax.scatter(d[x], d[y], marker="*", s=180, color=pal.get(pol, "k"), edgecolor="k", zorder=5, label=pol)
    if summary is not None:
        d = summary[~summary.policy.map(is_reference)]
        fronts = set(points.policy)
        for r in d.to_dict("records"):
            ax.scatter(r[x], r[y], s=70, marker="o", color=pal.get(r["policy"], "k"), edgecolor="k", zorder=4,
                       label=None if r["policy"] in fronts else r["policy"])
    ax.set_xlabel({"mean_ms": "mean latency (ms per sample, batch 1)", "p95_ms": "p95 latency (ms, batch 1)",
                   "mean_MACs": "mean MACs per sample"}.get(x, x))
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    # outside the axes, so neither the legend nor its note covers a point, and the note is the legend's title
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, title_fontsize=6,
              title="lines: fronts chosen on calib,\nat test values; circles:\ncalibrated operating points")
    if title:
        ax.set_title(title)
    return fig, ax


def plot_exit_distribution(summary: pd.DataFrame, *, ax=None, title: str | None = None):
    """Share of test samples leaving at each exit, per policy (stacked bars, %)."""
    fig, ax = _ax(ax)
    cols = [c for c in summary.columns if c.startswith("exit") and c.endswith("_%")]
    d = summary.set_index("policy")[cols]
    d.columns = [c[:-2] for c in cols]
    d.plot.barh(stacked=True, ax=ax, colormap="viridis", width=0.75)
    ax.set_xlabel("samples leaving at each exit (%)")
    ax.set_ylabel("")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right", ncol=len(cols))
    if title:
        ax.set_title(title)
    return fig, ax


def plot_latency_breakdown(summary: pd.DataFrame, *, ax=None, title: str | None = None):
    """Mean latency per policy split into stages, exit heads, predictors and buffering (ms, stacked)."""
    fig, ax = _ax(ax)
    parts = [p for p in ("stages_ms", "exits_ms", "predictors_ms", "buffering_ms", "runtime_ms")
             if p in summary.columns]
    d = summary.set_index("policy")[parts]
    d.columns = [p[:-3] for p in parts]
    d.plot.barh(stacked=True, ax=ax, color=sns.color_palette("Set2", len(parts)), width=0.75)
    ax.set_xlabel("mean latency (ms per sample, batch 1)")
    ax.set_ylabel("")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title)
    return fig, ax


def plot_entropy_hist(table: pd.DataFrame, *, ax=None, measure: str = "entropy", thresholds=None,
                      title: str | None = None):
    """Histograms of the confidence measure at every exit on one axes (counts, log scale): one colour per
    exit, correct answers solid and wrong ones dashed, each exit's threshold (where finite) a dotted
    vertical line in its colour. ``table`` is ``FeatureCache.table(split)``; ``thresholds`` one per exit
    in ``measure``'s units. The same drawing whether ``ax`` is given or not."""
    fig, ax = _ax(ax, figsize=(7, 4))
    k = int(table.exit.max()) + 1
    hi = float(table[measure].max())
    bins = np.linspace(0, hi if np.isfinite(hi) and hi > 0 else 1.0, 30)
    colours = sns.color_palette("viridis", k)
    for e in range(k):
        d = table[table.exit == e]
        for correct, style in ((True, "-"), (False, "--")):
            v = d.loc[d.correct == correct, measure]
            if len(v):
                counts, _ = np.histogram(v, bins=bins)
                ax.stairs(counts, bins, color=colours[e], ls=style, lw=1.2,
                          label=f"exit {e} {'correct' if correct else 'wrong'}")
        if thresholds is not None and e < k - 1 and np.isfinite(thresholds[e]):
            ax.axvline(thresholds[e], color=colours[e], ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel(f"{measure} (nats)" if measure == "entropy" else measure)
    ax.set_ylabel("samples")
    ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title)
    return fig, ax


def save(fig, path) -> None:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_placement_map(placement, *, ax=None, title: str | None = None):
    """Exits (columns) × positions after which a predictor sits (rows): open exits, removed exits,
    gates (G) and the jump predictor (J)."""
    k = placement.num_exits
    fig, ax = _ax(ax, figsize=(1.2 * k + 2, 0.8 * k + 1.5))
    grid = np.zeros((k, k))
    for e in range(k):
        grid[:, e] = 0.15 if placement.kept[e] else 0.0
    ax.imshow(grid, cmap="Greys", vmin=0, vmax=1, aspect="auto")
    for e in range(k):
        status = "final" if e == k - 1 else ("open" if placement.kept[e] and placement.gates[e] is None
                                             else ("removed" if not placement.kept[e] else "gated"))
        ax.text(e, -0.75, status, ha="center", va="bottom", fontsize=8)
        g = placement.gates[e]
        if g is not None:
            ax.scatter(e, g.at, s=400, marker="s", color="tab:orange", edgecolor="k", zorder=3)
            ax.text(e, g.at, "G", ha="center", va="center", fontsize=9, zorder=4)
    if placement.jump is not None:
        ax.scatter(np.arange(k)[placement.jump.at:], [placement.jump.at] * (k - placement.jump.at), s=120, marker=">",
                   color="tab:blue", zorder=3)
        ax.text(placement.jump.at - 0.4, placement.jump.at, "J", color="tab:blue", fontsize=10, va="center")
    ax.set_xticks(range(k), [f"exit {e}" for e in range(k)])
    ax.set_yticks(range(k), [f"after stage {j}" for j in range(k)])
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_ylim(k - 0.5, -1.2)
    ax.set_title(title or placement.describe(), fontsize=9)
    return fig, ax


def plot_search_front(table: pd.DataFrame, *, x: str = "mean_ms", y: str = "accuracy_%", ax=None,
                      title: str | None = None):
    """Every scored candidate (calib), its Pareto front and the chosen placement."""
    fig, ax = _ax(ax)
    feas = table["feasible"] if "feasible" in table else np.ones(len(table), bool)
    ax.scatter(table[x][~feas], table[y][~feas], s=12, color="0.7", label="infeasible")
    ax.scatter(table[x][feas], table[y][feas], s=12, color="tab:blue", label="feasible")
    f = pareto_front(table, x, y)
    ax.plot(f[x], f[y], "-", color="tab:blue", lw=1, label="front")
    if "chosen" in table:
        c = table[table.chosen]
        ax.scatter(c[x], c[y], s=200, marker="*", color="tab:red", edgecolor="k", zorder=5,
                   label="chosen: " + str(c["describe"].iloc[0]))
    ax.set_xlabel("mean latency (ms per sample, batch 1)")
    ax.set_ylabel("calib accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    return fig, ax


def plot_validate(df: pd.DataFrame, *, ax=None, title: str | None = None):
    """Simulated against measured mean latency per policy (95 % CIs), with the line sim = meas."""
    fig, ax = _ax(ax)
    for r in df.itertuples():
        ax.errorbar(r.meas_mean_ms, r.sim_mean_ms, xerr=[[r.meas_mean_ms - r.meas_mean_lo], [r.meas_mean_hi - r.meas_mean_ms]],
                    yerr=[[r.sim_mean_ms - r.sim_mean_lo], [r.sim_mean_hi - r.sim_mean_ms]], fmt="o", capsize=3,
                    label=f"{r.policy} ({r.ratio:.2f})")
    lo = min(df.meas_mean_lo.min(), df.sim_mean_lo.min()) * 0.9
    hi = max(df.meas_mean_hi.max(), df.sim_mean_hi.max()) * 1.1
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="sim = meas")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.85", alpha=0.5, label="±10 %")
    ax.set_xlabel("measured mean latency (ms per sample, batch 1)")
    ax.set_ylabel("simulated mean latency (ms)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return fig, ax


def plot_gate_map(table: pd.DataFrame, gates: pd.DataFrame | None = None, *, false_skip: float = 0.02,
                  max_cost_ms: float | None = None, ax=None, title: str | None = None):
    """"Gate pays" map: per gate position (rows: side exit and the stage the gate runs after) and predictor cost
    (x, ms per run), the true-skip rate a gate needs to beat the cascade while wrongly skipping ``false_skip``
    (colour; grey: no gate of that cost pays). ``table``: :func:`analysis.core.breakeven.break_even_table`;
    ``gates``: real predictors (gate table rows), marked at their cost with the true-skip rate they reach."""
    from ..core.breakeven import BreakEven

    fig, ax = _ax(ax, figsize=(7, 1.2 + 0.7 * len(table)))
    models = [BreakEven.from_row(r) for _, r in table.iterrows()]
    real = gates if gates is not None and len(gates) else pd.DataFrame(columns=["exit", "at", "G_ms"])
    top = max_cost_ms or 1.5 * max([m.max_cost_ms(1.0, false_skip) for m in models] + list(real.G_ms) + [1e-6])
    g = np.linspace(0, top, 200)
    need = np.array([[m.min_true_skip(c, false_skip) for c in g] for m in models])
    shown = np.ma.masked_where(~(need <= 1), need)
    cmap = plt.get_cmap("viridis_r").with_extremes(bad="0.85")
    im = ax.imshow(shown, aspect="auto", cmap=cmap, vmin=0, vmax=1, origin="lower",
                   extent=(0, top, -0.5, len(models) - 0.5), interpolation="nearest")
    fig.colorbar(im, ax=ax, label=f"true-skip rate needed (false skips {100 * false_skip:g} %)")
    rows = {(m.exit, m.at): j for j, m in enumerate(models)}
    placed: dict[int, int] = {}  # labels already on a row: the next goes above or below them, never on them
    for r in sorted(real.to_dict("records"), key=lambda r: r["G_ms"]):
        j = rows.get((int(r["exit"]), int(r["at"])))
        if j is None:
            continue
        m, ts = models[j], r.get("true_skip_%", np.nan) / 100
        pays = m.delta_ms(ts, r.get("false_skip_%", 0.0) / 100, r["G_ms"]) < 0
        ax.scatter([min(r["G_ms"], top)], [j], marker="o" if pays else "x", s=60, color="k", zorder=5)
        i = placed[j] = placed.get(j, -1) + 1
        dy = (6 + 9 * (i // 2)) * (1 if i % 2 == 0 else -1) - (6 if i % 2 else 0)
        ax.annotate(f"{100 * ts:.0f} %", (min(r["G_ms"], top), j), textcoords="offset points", xytext=(5, dy),
                    fontsize=7, va="bottom" if dy > 0 else "top")
    ax.set_yticks(range(len(models)), [f"exit {m.exit} ← stage {m.at}" for m in models])
    ax.set_xlabel("predictor cost G (ms per run, batch 1)")
    ax.set_title(title or "where a gate pays (grey: never); o real predictor that pays, x one that does not",
                 fontsize=9)
    return fig, ax


def plot_gate_curves(curves: dict, *, kind: str = "roc", ax=None, title: str | None = None):
    """ROC (``kind="roc"``: false vs true positive rate) or precision-recall (``"pr"``) of gate scores: one line
    per entry of ``curves`` (label -> :func:`predictors.evaluate.gate_curves` dict), its AUC / average precision
    in the legend; the diagonal (ROC) or the share of leaving samples (PR) is chance. Positive: the sample leaves
    at the exit (enter its branch)."""
    if kind not in ("roc", "pr"):
        raise ValueError(f"kind must be 'roc' or 'pr', got {kind!r}")
    fig, ax = _ax(ax, figsize=(4.5, 4))
    drawn = {k: c for k, c in curves.items() if c}
    for (label, c), color in zip(drawn.items(), sns.color_palette("tab10", max(len(drawn), 1))):
        if kind == "roc":
            ax.plot(c["fpr"], c["tpr"], color=color, lw=1.2, label=f"{label} (AUC {c['roc_auc']:.2f})")
        else:
            ax.step(c["recall"], c["precision"], where="post", color=color, lw=1.2,
                    label=f"{label} (AP {c['average_precision']:.2f})")
            ax.axhline(c["positive_rate"], color=color, lw=0.6, ls=":")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
        ax.set_xlabel("false enter rate (of samples that do not leave)")
        ax.set_ylabel("true enter rate (of samples that leave)")
    else:
        ax.set_xlabel("recall (of samples that leave)")
        ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    if drawn:
        ax.legend(fontsize=6, loc="lower right" if kind == "roc" else "lower left")
    if title:
        ax.set_title(title, fontsize=9)
    return fig, ax


def plot_suite(df: pd.DataFrame, *, ratio: str = "gated_vs_free", ax=None, title: str | None = None):
    """One bar per study and profile: a latency ratio of the suite's comparison table (e.g. ``gated_vs_free``: the
    best placement with a predictor over the best predictor-free policy; ``best_vs_matched_oracle``) with its
    bootstrap 95 % CI; the line at 1 is parity."""
    fig, ax = _ax(ax, figsize=(8, 0.5 + 0.28 * len(df)))
    d = df.dropna(subset=[ratio]).reset_index(drop=True)
    profiles = list(dict.fromkeys(d.profile))
    pal = dict(zip(profiles, sns.color_palette("tab10", len(profiles))))
    y = np.arange(len(d))
    ax.barh(y, d[ratio], color=[pal[p] for p in d.profile],
            xerr=[d[ratio] - d[f"{ratio}_lo"], d[f"{ratio}_hi"] - d[ratio]], capsize=2)
    ax.set_yticks(y, [f"{s} ({p})" for s, p in zip(d.study, d.profile)], fontsize=7)
    ax.axvline(1.0, color="k", lw=1, ls="--")
    ax.invert_yaxis()
    ax.set_xlabel(f"{ratio} mean latency (test; 95 % CI; < 1: faster)")
    if title:
        ax.set_title(title, fontsize=9)
    return fig, ax


__all__ = ["plot_entropy_hist", "plot_exit_distribution", "plot_gate_curves", "plot_gate_map", "plot_latency_breakdown",
           "plot_pareto", "plot_placement_map", "plot_search_front", "plot_suite", "plot_validate", "save"]
