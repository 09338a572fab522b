"""A self-contained HTML report of a study that answers first: a verdict card per device profile, the chosen
placement, then the detail (images embedded as base64 PNG; rendered by Jinja2 with autoescaping, tables through
pandas ``Styler``). ``branchy report --run DIR`` renders it again from a run folder (:mod:`analysis.study.load_run`)."""
from __future__ import annotations

import time
from pathlib import Path


from branchy.core import atomic_write

from ..core.policies import is_operating_point
from ..core.stats import headline_frame
from ..present import plots
from ..present.html import figure, render, table
from .report_cards import accuracy_slack, cards, fastest_keeping
from .result import StudyResult

__all__ = ["gate_curve_figure", "write_report"]


def _p(text: str) -> dict:
    return {"kind": "p", "text": text}


def _h3(text: str) -> dict:
    return {"kind": "h3", "text": text}


def _ul(items) -> dict:
    return {"kind": "ul", "lines": list(items)}


def _html(markup) -> dict:
    return {"kind": "html", "html": markup}


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


def _chosen(result: StudyResult) -> list[dict]:
    """The chosen placement of every strategy: what it keeps and gates, its comparison table, its map."""
    out = []
    for strategy, (res, compare) in result.placements.items():
        out.append({"strategy": strategy, "describe": res.chosen.describe(),
                    "note": f"{len(res.table)} candidates scored on calib; rule: {res.constraint.describe()}. "
                            f"The table compares it with full and the default cascade on calib and test.",
                    "table": table(compare), "image": figure(plots.plot_placement_map(res.chosen)[0],
                                                             alt=f"chosen placement ({strategy})")})
    return out


_REF_COLS = {"profile": "profile", "full_ms": "full ms", "cascade_ms": "cascade ms", "best_rule_ms": "best rule ms",
             "best_free_ms": "best free ms", "best_gated_ms": "best gated ms", "best_learned_ms": "best learned ms",
             "matched_oracle_ms": "matched oracle ms",
             "oracle_ms": "oracle ms", "gated_vs_free": "gated / free", "gated_vs_free_lo": "lo",
             "gated_vs_free_hi": "hi", "gated_vs_free_acc_pts": "acc diff pts",
             "learned_vs_best_rule": "learned / best rule", "learned_vs_best_rule_lo": "learned lo",
             "learned_vs_best_rule_hi": "learned hi", "learned_vs_best_rule_acc_pts": "learned acc diff pts",
             "real_backend": "run for real on", "real_learned_vs_best_rule": "real learned / best rule",
             "real_gated_vs_free": "real gated / free", "real_cascade_vs_full": "real cascade / full",
             "real_pairs_agree": "pairs ordered alike", "real_pairs": "of pairs", "pays": "pays"}


def _references(result: StudyResult) -> list[dict]:
    """Do predictors pay here? The verdicts in full and the comparison table (simulated and, where run, real)."""
    refs = result.references
    if refs is None or not len(refs):
        return []
    return [_p("Per device profile, decided on calib under the placement constraint and reported on test: the best "
               "predictor-free policy (the best of full, the cascade under every rule of the confidence-rule family, "
               "and every placement that only removes exits and retunes thresholds) against the best placement with "
               "a predictor (a gated search), and the best learned exit policy (leave predictors decide at the kept "
               "side exits) against the best confidence rule. Predictors pay only where the CI of their latency ratio is below 1 at "
               "non-inferior accuracy and, where the profile was run for real (real_*: the real runtime on test "
               "samples at batch 1), where the real run's CI is below 1 too. Latency in ms per sample at batch 1; "
               "CIs: paired bootstrap over test samples and, for a measured profile, over its profilings."),
            _ul(refs.verdict), _html(table(refs[[c for c in _REF_COLS if c in refs]].rename(columns=_REF_COLS)))]


def _headline(result: StudyResult) -> list[dict]:
    """The headline table per profile (best row: the fastest operating point within the constraint of full), and
    whether the backend changes the conclusion."""
    summary = result.simulation["summary"]
    eps = accuracy_slack(result.config)
    s = [_p(f"Test split. Latency in ms per sample at batch 1; speed-up over full; MACs per sample (FLOPs = 2 x "
            f"MACs); 95 % bootstrap intervals. Marked: the fastest calibrated policy within {eps:g} accuracy points "
            f"of full.")]
    for prof in summary.profile.unique():
        d = summary[summary.profile == prof].reset_index(drop=True)
        s += [_h3(str(prof)), _html(table(headline_frame(d), best=fastest_keeping(d, eps)))]
    measured = [p for p in summary.profile.unique() if str(p).startswith("measured")]
    verdict = {}
    for p in measured:
        d = summary[(summary.profile == p) & summary.policy.map(is_operating_point)]
        if (d.policy == "cascade").any():
            verdict[p] = (d.sort_values("mean_ms").policy.iloc[0], float(d.set_index("policy").loc["cascade", "speedup"]))
    if len(verdict) > 1 and (len({v[0] for v in verdict.values()}) > 1 or len({v[1] > 1 for v in verdict.values()}) > 1):
        s.append(_p("The backend changes the conclusion: " + "; ".join(
            f"on {p} the fastest policy is {f} and the cascade runs at {sp:.2f}x full" for p, (f, sp) in verdict.items())
            + "."))
    return s


def _costs(result: StudyResult) -> list[dict]:
    """Per-exit accuracy and cost, the measured segment costs and how they were timed."""
    cache = result.cache
    s = [_html(table(cache.summary())), _p("cum_MACs / cum_ms_b1: stages up to the exit plus the exit head (measured).")]
    cols = [c for c in ["segment", "k", "macs", "params", "act_bytes", "ms_b1", "ms_b1_spread", "ms_batch",
                        "ms_batch_spread", "rounds", "unstable", "batch_size", "threads", "device"] if c in cache.costs]
    s.append(_html(table(cache.costs[cols])))
    t = cache.manifest.get("timing")
    if t:
        s.append(_p(f"Timed in interleaved rounds (outlier rounds dropped; spread = IQR / median; unstable when over "
                    f"10 %) on {t.get('cpu')}, load {t.get('load_1min')} on {t.get('cores')} cores "
                    f"({t.get('idle_cores')} idle), {t.get('threads')} threads"
                    + ("; oversubscribed: more threads than idle cores, latencies inflated" if t.get("oversubscribed")
                       else "") + "."))
    if any("unstable" in cache.costs_for(b) and cache.costs_for(b)["unstable"].astype(bool).any()
           for b in cache.backends):
        s.append(_p("Some segment timings are unstable: the measured profile's numbers rest on them; re-measure with "
                    "`branchy profile --cache DIR` on a quieter machine."))
    return s


def _validation(result: StudyResult) -> list[dict]:
    """The real runtime against the simulator, per backend."""
    val = result.validate
    if val is None or not len(val):
        return []
    from ..present.plots import plot_validate
    from .validate_lines import drift_line, fit_line, pairs_line, recheck_line, validate_line

    s = [_p(f"The real early-exit runtime ({int(val.threads.iloc[0])} threads) ran each policy on {int(val.n.iloc[0])} "
            f"test samples one at a time, interleaved; the simulator predicted the same samples from the cache's "
            f"measured segment costs and the runtime's measured overhead, and again with those costs timed during the "
            f"run. sim/meas: ratio of mean latencies (paired bootstrap 95 % CI); exits match: share of samples "
            f"leaving at the exit the simulator says. Batched: ms per sample at batch {int(val.batch_size.iloc[0])}.")]
    cols = {"policy": "policy", "meas_mean_ms": "measured ms", "sim_mean_ms": "simulated ms", "ratio": "sim/meas",
            "ratio_lo": "lo", "ratio_hi": "hi", "ratio_now": "sim/meas (costs now)", "exit_match_%": "exits match %",
            "meas_speedup": "speed-up meas", "sim_speedup": "speed-up sim", "batched_ms_per_sample": "batched ms/sample"}
    for b, v in val.groupby("backend", sort=False):
        lines = [x for x in (pairs_line(v), recheck_line(v), fit_line(v), drift_line(v), validate_line(v)) if x]
        s += [_h3(str(b)), _html(table(v[[c for c in cols if c in v]].rename(columns=cols))), _ul(lines),
              _html(figure(plot_validate(v, title=f"simulated vs measured mean latency ({b})")[0]))]
    return s


def _fronts(result: StudyResult) -> list[dict]:
    """Accuracy versus latency fronts, the exit distribution and the latency breakdown."""
    sim = result.simulation
    summary, pts = sim["summary"], sim["pareto"]
    s = []
    for prof in summary.profile.unique():
        s.append(_html(figure(plots.plot_pareto(pts[pts.profile == prof], summary[summary.profile == prof],
                                                title=f"test accuracy vs mean latency ({prof})")[0])))
    first = summary[summary.profile == summary.profile.iloc[0]]
    s.append(_html(figure(plots.plot_exit_distribution(first, title="where test samples leave")[0])))
    for prof in summary.profile.unique():
        s.append(_html(figure(plots.plot_latency_breakdown(summary[summary.profile == prof],
                                                           title=f"mean latency by part ({prof})")[0])))
    return s


def _gates(result: StudyResult) -> list[dict]:
    """Where gates pay: each gate alone, and the break-even sentences and maps."""
    sim = result.simulation
    gates, be, s = sim.get("gates"), sim.get("breakeven"), []
    if gates is not None and len(gates):
        s += [_p("Each gate alone in front of its exit, its cut tuned on calib (out-of-fold scores) to minimise mean "
                 "latency without losing calib accuracy. enter_%: share of the samples reaching the exit that it lets "
                 "in; true_skip_% / false_skip_%: of the samples that would not / would leave there, the share it "
                 "keeps out; G_ms: its cost (pooling included); saving_ms: mean latency saved against always "
                 "entering; break_even_G_ms: the largest predictor cost at which that saving stays positive; "
                 "saving_vs_removed_ms: saved against removing the exit outright; pays: it beats both."),
              _html(table(gates.drop(columns=["cut"], errors="ignore")))]
    for prof, lines in (sim.get("explained") or {}).items():
        s += [_h3(f"When a gate pays ({prof}, calib)"), _ul(lines)]
        if be is not None and len(be) and (be.profile == prof).any():
            real = gates[gates.profile == prof] if gates is not None and len(gates) else None
            s.append(_html(figure(plots.plot_gate_map(be[be.profile == prof].drop(columns=["profile"]), real,
                                                      title=f"where a gate pays ({prof}, calib)")[0])))
    return s


def _predictor_quality(result: StudyResult) -> list[dict]:
    """Predictor quality (calib out of fold, test) and the gates' ROC / PR curves."""
    s = [_p("Cross-fitted on calib: calib rows are out of fold. Rates are shares of the samples that reach the "
            "predictor's exit (reached). false_enter: sent into a branch they do not leave at (branch and buffering "
            "wasted); false_skip: kept away from an exit they would have left at. macs / ms_b1: the predictor's own "
            "cost per sample, pooling of its input included.")]
    pt = result.predictor_table.drop(columns=["confusion"], errors="ignore")
    s.append(_html(table(pt, digits=3)) if len(pt) else _p("None fitted: the cache's exits are chained, so no exit "
                                                           "can be gated or jumped over."))
    curves = gate_curve_figure(result.predictors or {}, result.cache)
    if curves is not None:
        s += [_h3("Gate scores: ROC and precision-recall per side exit"),
              _p("Each gate and entropy predictor's score on the calib samples that reach its exit (out of fold), "
                 "against whether the sample leaves there under the exit rule. Dotted (PR): the share that leaves, "
                 "what a score with no skill reaches."), _html(figure(curves))]
    return s


def _search(result: StudyResult) -> list[dict]:
    """Every strategy's candidates on calib."""
    return [_html(figure(plots.plot_search_front(res.table, title=f"{strategy}: candidates on calib")[0]))
            for strategy, (res, _) in result.placements.items()]


def _confidence(result: StudyResult) -> list[dict]:
    """Entropy histograms of correct and wrong answers at each exit."""
    fig, _ = plots.plot_entropy_hist(result.cache.table("test"), thresholds=result.thresholds,
                                     title="entropy (nats) of correct (solid) and wrong (dashed) answers, test; dotted: T")
    return [_html(figure(fig))]


def _provenance(result: StudyResult) -> list[dict]:
    """How the numbers were made, and the study's config as run."""
    import yaml

    cfg, m = result.config, result.cache.manifest
    return [_p(f"{m['model']['name']} (weights {m['model']['fingerprint']}) on {m['dataset']['name']} (data "
               f"{m['dataset']['fingerprint']}); splits {m['splits']}. Every decision (exit rule, gates, gate cuts, "
               f"placement) is made on calib, with predictors' out-of-fold scores; every result is on test unless "
               f"marked calib. Exit rule: {result.rule.describe()}. Latency is ms per sample at batch 1 (profile "
               f"measured: medians of interleaved timing rounds on {m.get('device')} with {m.get('threads')} "
               f"threads; other profiles: MACs and activation bytes through the device figures). MACs per sample; "
               f"FLOPs = 2 x MACs. Intervals are 95 % percentile-bootstrap intervals over test samples."),
            {"kind": "details", "summary": "Study config", "text": yaml.safe_dump(cfg.to_dict(), sort_keys=False)}]


# the detail sections after the verdict and the chosen placement, in the order the report shows them
_SECTIONS = (("pay", "Do predictors pay here?", _references), ("headline", "Headline", _headline),
             ("costs", "Per-exit accuracy and cost", _costs), ("validate", "Simulation against a real run", _validation),
             ("fronts", "Accuracy versus latency", _fronts), ("gates", "Where gates pay", _gates),
             ("predictors", "Predictor quality", _predictor_quality), ("search", "Placement search", _search),
             ("confidence", "Confidence at each exit", _confidence), ("provenance", "How the numbers were made",
                                                                       _provenance))


def write_report(result: StudyResult, path: str | Path) -> Path:
    """The study as one HTML file, its answer first: a verdict card per profile, the chosen placement, then the
    detail (headline, costs, real runs, fronts, gates, predictors, search, confidence, provenance). Every name,
    path, config value and table cell is escaped (a dataset may be called ``<script>.npz``)."""
    m = result.cache.manifest
    sections = [{"id": i, "title": t, "blocks": b} for i, t, f in _SECTIONS if (b := f(result))]
    doc = render("report.html.j2", title=result.config.name, cards=cards(result), chosen=_chosen(result),
                 sections=sections,
                 subtitle=f"{m['model']['name']} on {m['dataset']['name']}; decided on calib, reported on test "
                          f"({m['splits'].get('test', '?') if isinstance(m['splits'], dict) else m['splits']} "
                          f"samples); generated {time.strftime('%Y-%m-%d %H:%M')}",
                 verdict_note="Per device profile: the fastest policy that keeps accuracy (chosen on calib under the "
                              "placement constraint, reported on test), its speed-up over running the whole network "
                              "and its accuracy change in points, with 95 % paired-bootstrap intervals. Latency is ms "
                              "per sample at batch 1.")
    return atomic_write(path, doc)
