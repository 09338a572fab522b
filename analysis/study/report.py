"""A self-contained HTML report of a study (images embedded as base64 PNG)."""
from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

import pandas as pd

from branchy.core import atomic_write

from ..present import plots
from ..core.policies import is_operating_point
from ..core.stats import format_headline
from .result import StudyResult

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.4em 0}pre{background:#f7f7f7;padding:.7em;
overflow-x:auto;font-size:12px}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}.note{color:#555;font-size:13px}"""


def _img(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plots.plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


def _e(v) -> str:
    """Any value from the user or the data (names, paths, config values), escaped for HTML text and attributes."""
    return html.escape(str(v), quote=True)


def _table(df: pd.DataFrame, fmt: str = "{:.4g}") -> str:
    """``df`` as an HTML table; cells and column names are escaped."""
    return df.to_html(index=False, float_format=lambda v: fmt.format(v), border=0, na_rep="", escape=True)


def gate_curve_figure(predictors: dict, cache, split: str = "calib", top: int = 6):
    """ROC (top) and precision-recall (bottom) per side exit of its gate / entropy predictors (the ``top`` by ROC
    AUC, so the panels stay legible), or None when there are none."""
    by_exit: dict[int, dict] = {}
    for name, p in sorted(predictors.items()):
        if p.spec.target in ("gate", "entropy"):
            c = p.curves(cache, split)
            if c:
                by_exit.setdefault(p.spec.for_exit, {})[name] = c
    if not by_exit:
        return None
    exits = sorted(by_exit)
    by_exit = {e: dict(sorted(c.items(), key=lambda kv: -kv[1]["roc_auc"])[:top]) for e, c in by_exit.items()}
    fig, axes = plots.plt.subplots(2, len(exits), figsize=(4.2 * len(exits), 7.5), squeeze=False)
    for j, e in enumerate(exits):
        plots.plot_gate_curves(by_exit[e], kind="roc", ax=axes[0, j], title=f"exit {e}: ROC ({split}, out of fold)")
        plots.plot_gate_curves(by_exit[e], kind="pr", ax=axes[1, j], title=f"exit {e}: precision-recall")
    fig.tight_layout()
    return fig


def _header(result: StudyResult) -> list[str]:
    """Title and how to read the numbers."""
    cfg, m = result.config, result.cache.manifest
    s = []
    s.append(f"<h1>{_e(cfg.name)}</h1>")
    s.append(f"<p class=note>{_e(m['model']['name'])} (weights {_e(m['model']['fingerprint'])}) on "
             f"{_e(m['dataset']['name'])} (data {_e(m['dataset']['fingerprint'])}); splits {_e(m['splits'])}; generated "
             f"{time.strftime('%Y-%m-%d %H:%M')}. Every decision (exit rule, gates, gate cuts, placement) is made on "
             f"<b>calib</b>, with predictors' out-of-fold scores; every result below is on <b>test</b> unless marked "
             f"calib. Exit rule: {_e(result.rule.describe())}. Latency is ms per sample at batch 1 (profile "
             f"<i>measured</i>: medians of interleaved timing rounds on {_e(m.get('device'))} with {_e(m.get('threads'))} threads; other "
             f"profiles: MACs and activation bytes through the device figures). MACs per sample; FLOPs = 2 x MACs. "
             f"Intervals are 95% percentile-bootstrap intervals over test samples.</p>")
    return s


def _references(result: StudyResult) -> list[str]:
    """Do predictors pay here? The verdicts and the comparison table (simulated and, where run, real)."""
    s = []
    refs = result.references
    if refs is not None and len(refs):
        s.append("<h2>Do predictors pay here?</h2>")
        s.append("<p class=note>Per device profile, decided on calib under the placement constraint and reported on "
                 "test: the best predictor-free policy (the best of full, the cascade under every rule of the "
                 "confidence-rule family, and every placement that only removes exits and retunes thresholds) against "
                 "the best placement with a predictor (a gated search). Predictors pay only where the CI of their "
                 "latency ratio is below 1 at non-inferior accuracy (the lower end of the accuracy difference's CI "
                 "within the constraint's points) and, where the profile was measured on this machine and run for "
                 "real (real_*: the real runtime on test samples at batch 1), where the real run's CI is below 1 too. "
                 "CIs: paired bootstrap over test samples and, for a measured profile, over its independent "
                 "profilings.</p><ul>"
                 + "".join(f"<li>{_e(v)}</li>" for v in refs.verdict) + "</ul>")
        cols = {"profile": "profile", "full_ms": "full ms", "cascade_ms": "cascade ms", "best_rule_ms": "best rule ms",
                "best_free_ms": "best free ms", "best_gated_ms": "best gated ms", "matched_oracle_ms":
                "matched oracle ms", "oracle_ms": "oracle ms", "gated_vs_free": "gated / free",
                "gated_vs_free_lo": "lo", "gated_vs_free_hi": "hi", "gated_vs_free_acc_pts": "acc diff pts",
                "real_backend": "run for real on", "real_gated_vs_free": "real gated / free",
                "real_gated_vs_free_lo": "real lo", "real_gated_vs_free_hi": "real hi",
                "real_cascade_vs_full": "real cascade / full", "real_pairs_agree": "pairs ordered alike",
                "real_pairs": "of pairs", "pays": "pays"}
        s.append(_table(refs[[c for c in cols if c in refs]].rename(columns=cols)))
    return s


def _headline(result: StudyResult) -> list[str]:
    """The headline table per profile, and whether the backend changes the conclusion."""
    sim = result.simulation
    s = []
    s.append("<h2>Headline</h2>")
    summary = sim["summary"]
    for prof in summary.profile.unique():
        s.append(f"<h3>{_e(prof)}</h3><pre>{_e(format_headline(summary[summary.profile == prof]))}"
                 f"</pre>")
    measured = [p for p in summary.profile.unique() if str(p).startswith("measured")]
    if len(measured) > 1:
        verdict = {}
        for p in measured:
            d = summary[(summary.profile == p) & summary.policy.map(is_operating_point)]
            verdict[p] = (d.sort_values("mean_ms").policy.iloc[0],
                          float(d.set_index("policy").loc["cascade", "speedup"]))
        fastest = {v[0] for v in verdict.values()}
        pays = {v[1] > 1 for v in verdict.values()}
        if len(fastest) > 1 or len(pays) > 1:
            s.append("<p><b>The backend changes the conclusion.</b> " + "; ".join(
                f"on {_e(p)} the fastest policy is {_e(f)} and the cascade runs at "
                f"{sp:.2f}x full" for p, (f, sp) in verdict.items()) + ".</p>")
    return s


def _costs(result: StudyResult) -> list[str]:
    """Per-exit accuracy and cost, the measured segment costs and how they were timed."""
    cache = result.cache
    m = cache.manifest
    s = []
    s.append("<h2>Per-exit accuracy and cost</h2>")
    s.append(_table(cache.summary()))
    s.append("<p class=note>cum_MACs / cum_ms_b1: stages up to the exit plus the exit head (measured).</p>")
    cols = [c for c in ["segment", "k", "macs", "params", "act_bytes", "ms_b1", "ms_b1_spread", "ms_batch",
                        "ms_batch_spread", "rounds", "unstable", "batch_size", "threads", "device"] if c in cache.costs]
    s.append(_table(cache.costs[cols]))
    t = m.get("timing")
    if t:
        s.append(f"<p class=note>Timed in interleaved rounds (outlier rounds dropped; spread = IQR / median; "
                 f"<b>unstable</b> when over 10 %) on {_e(t.get('cpu'))}, load {_e(t.get('load_1min'))} on "
                 f"{_e(t.get('cores'))} cores ({_e(t.get('idle_cores'))} idle), {_e(t.get('threads'))} threads"
                 + ("; <b>oversubscribed</b>: more threads than idle cores, latencies inflated" if t.get("oversubscribed")
                    else "") + ".</p>")
    if any("unstable" in cache.costs_for(b) and cache.costs_for(b)["unstable"].astype(bool).any()
           for b in cache.backends):
        s.append("<p class=note><b>Some segment timings are unstable</b>: the measured profile's numbers rest on "
                 "them; re-measure with <code>branchy profile --cache DIR</code> on a quieter machine.</p>")
    return s


def _validation(result: StudyResult) -> list[str]:
    """The real runtime against the simulator, per backend."""
    s = []
    val = result.validate
    if val is not None and len(val):
        from ..present.plots import plot_validate
        from .validate_lines import drift_line, fit_line, format_validate, pairs_line, recheck_line, validate_line

        s.append("<h2>Simulation against a real run</h2>")
        s.append(f"<p class=note>The real early-exit runtime (on each backend below, {int(val.threads.iloc[0])} threads) ran "
                 f"each policy on {int(val.n.iloc[0])} test samples one at a time, interleaved; the simulator predicted "
                 f"the same samples from the cache's measured segment costs and the runtime's measured overhead, and "
                 f"again with those costs timed during the run (round by round: the simulator's own error, apart "
                 f"from the machine's drift since profiling). "
                 f"sim/meas: ratio of mean latencies with a paired bootstrap 95 % CI; exits match: share of samples "
                 f"leaving at the exit the simulator says. Batched: ms per sample at batch "
                 f"{int(val.batch_size.iloc[0])}.</p>")
        for b, v in val.groupby("backend", sort=False):
            s.append(f"<h3>{_e(b)}</h3><pre>{_e(format_validate(v))}\n"
                     + "".join(f"{_e(line)}\n" for line in (pairs_line(v), recheck_line(v), fit_line(v), drift_line(v))
                             if line)
                     + f"{_e(validate_line(v))}</pre>")
            s.append(_img(plot_validate(v, title=f"simulated vs measured mean latency ({b})")[0]))
    return s


def _fronts(result: StudyResult) -> list[str]:
    """Accuracy versus latency fronts, the exit distribution and the latency breakdown."""
    sim = result.simulation
    summary = sim["summary"]
    s = []
    s.append("<h2>Accuracy versus latency</h2>")
    pts = sim["pareto"]
    for prof in summary.profile.unique():
        fig, ax = plots.plot_pareto(pts[pts.profile == prof], summary[summary.profile == prof],
                                    title=f"test accuracy vs mean latency ({prof})")
        s.append(_img(fig))
    s.append("<h2>Exit distribution and latency breakdown</h2>")
    first = summary[summary.profile == summary.profile.iloc[0]]
    s.append(_img(plots.plot_exit_distribution(first, title="where test samples leave")[0]))
    for prof in summary.profile.unique():
        s.append(_img(plots.plot_latency_breakdown(summary[summary.profile == prof],
                                                   title=f"mean latency by part ({prof})")[0]))
    return s


def _gates(result: StudyResult) -> list[str]:
    """Where gates pay: each gate alone, and the break-even sentences and maps."""
    sim = result.simulation
    s = []
    gates = sim.get("gates")
    if gates is not None and len(gates):
        s.append("<h2>Where gates pay</h2>")
        s.append("<p class=note>Each gate alone in front of its exit, its cut tuned on calib (out-of-fold scores) to "
                 "minimise mean latency without losing calib accuracy. enter_%: share of the samples reaching the "
                 "exit that it lets in; true_skip_% / false_skip_%: of the samples that would not / would leave "
                 "there, the share it keeps out; G_ms: its cost (pooling included); saving_ms: mean latency saved "
                 "against always entering; break_even_G_ms: the largest predictor cost at which that saving stays positive; "
                 "saving_vs_removed_ms: mean latency saved against removing the exit outright; pays: it beats both.</p>")
        s.append(_table(gates.drop(columns=["cut"], errors="ignore")))
    for prof, lines in (sim.get("explained") or {}).items():
        be = sim.get("breakeven")
        s.append(f"<h3>When a gate pays ({_e(prof)}, calib)</h3><ul>"
                 + "".join(f"<li>{_e(line)}</li>" for line in lines) + "</ul>")
        if be is not None and len(be) and (be.profile == prof).any():
            d = be[be.profile == prof].drop(columns=["profile"])
            real = gates[gates.profile == prof] if gates is not None and len(gates) else None
            s.append(_img(plots.plot_gate_map(d, real, title=f"where a gate pays ({prof}, calib)")[0]))
    return s


def _predictor_quality(result: StudyResult) -> list[str]:
    """Predictor quality (calib out of fold, test) and the gates' ROC / PR curves."""
    cache = result.cache
    s = []
    s.append("<h2>Predictor quality</h2>")
    s.append("<p class=note>Cross-fitted on calib: calib rows are out of fold. Rates are shares of the samples that "
             "reach the predictor's exit (<i>reached</i>). false_enter: sent into a branch they do not leave at "
             "(branch and buffering wasted); false_skip: kept away from an exit they would have left at. "
             "macs / ms_b1: the predictor's own cost per sample, pooling of its input included.</p>")
    pt = result.predictor_table.drop(columns=["confusion"], errors="ignore")
    s.append(_table(pt, "{:.3f}") if len(pt) else "<p>None fitted: the cache's exits are chained, so no exit can be "
             "gated or jumped over.</p>")
    curves = gate_curve_figure(result.predictors or {}, cache)
    if curves is not None:
        s.append("<h3>Gate scores: ROC and precision-recall per side exit</h3><p class=note>Each gate and entropy "
                 "predictor's score on the calib samples that reach its exit (out of fold), against whether the "
                 "sample leaves there under the exit rule; roc_auc and average_precision in the table above. Dotted "
                 "(PR): the share that leaves, what a score with no skill reaches.</p>" + _img(curves))
    return s


def _placements(result: StudyResult) -> list[str]:
    """The chosen placement of every strategy."""
    s = []
    s.append("<h2>Placement</h2>")
    for strategy, (res, compare) in result.placements.items():
        s.append(f"<h3>{_e(strategy)}: {_e(res.chosen.describe())}</h3>")
        s.append(f"<p class=note>{len(res.table)} candidates scored on calib; rule: "
                 f"{_e(res.constraint.describe())}.</p>")
        s.append(_table(compare))
        s.append(_img(plots.plot_placement_map(res.chosen)[0]))
        s.append(_img(plots.plot_search_front(res.table, title=f"{strategy}: candidates on calib")[0]))
    return s


def _confidence(result: StudyResult) -> list[str]:
    """Entropy histograms of correct and wrong answers at each exit."""
    cache = result.cache
    s = []
    s.append("<h2>Confidence at each exit</h2>")
    fig, _ = plots.plot_entropy_hist(cache.table("test"), thresholds=result.thresholds,
                                     title="entropy (nats) of correct (solid) and wrong (dashed) answers, test; dotted: T")
    s.append(_img(fig))
    return s


def _config(result: StudyResult) -> list[str]:
    """The study's config, as run."""
    import yaml

    s = ["<h2>Study config</h2>", f"<pre>{_e(yaml.safe_dump(result.config.to_dict(), sort_keys=False))}</pre>"]
    return s


# the report's sections, in the order it shows them (the verdict first)
_SECTIONS = (_header, _references, _headline, _costs, _validation, _fronts, _gates, _predictor_quality, _placements,
             _confidence, _config)


def write_report(result: StudyResult, path: str | Path) -> Path:
    """Per-exit accuracy and cost, headline table, Pareto fronts, exit distribution, latency breakdown,
    predictor quality, chosen placements and entropy histograms, in one HTML file. Every name, path, config
    value and table cell is HTML-escaped (a dataset may be called ``<script>.npz``)."""
    s = [part for section in _SECTIONS for part in section(result)]
    doc = f"<!doctype html><html><head><meta charset=utf-8><title>{_e(result.config.name)}</title>" \
          f"<style>{CSS}</style></head><body>{''.join(s)}</body></html>"
    return atomic_write(path, doc)


__all__ = ["CSS", "gate_curve_figure", "write_report"]
