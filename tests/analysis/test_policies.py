"""Exit policies on a cache with predictors: the summary table, Pareto points and the plots they feed."""
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest

from analysis.core.calibrate import thresholds_for_accuracy
from analysis.core.costs import DeviceProfile
from analysis.present import plots
from analysis.core.policies import PolicyConfig
from analysis.study.compare import pareto_points, run_policies
from predictors import PredictorSpec, fit_predictor


def test_policies_on_a_cache_with_predictors_and_plots(synth_cache, tmp_path):
    T = thresholds_for_accuracy(np.asarray(synth_cache.logits("calib")), synth_cache.labels("calib"))
    preds = {}
    for spec in (PredictorSpec("gate", 0, "linear", 0, tuple(T)), PredictorSpec("gate", 1, "linear", 1, tuple(T)),
                 PredictorSpec("exit", 0, "linear", None, tuple(T)), PredictorSpec("entropy", 0, "linear", 1, tuple(T))):
        p = fit_predictor(synth_cache, spec, timing=0.01)
        preds[spec.name] = p
    # no per-segment overhead: a gate of a few MACs costs far less than the exit head it can skip
    dev = DeviceProfile("no-overhead", macs_per_s=1e6, bytes_per_s=1e7)
    outs, table = run_policies(synth_cache, predictors=preds, profile=dev, cfg=PolicyConfig(bootstrap=50))
    assert list(table.policy) == ["full", "cascade", "patience", "gated", "gated-entropy", "jump", "matched-oracle", "oracle"]
    t = table.set_index("policy")
    assert t.loc["full", "speedup"] == pytest.approx(1.0)
    assert t.loc["cascade", "mean_MACs"] < t.loc["full", "mean_MACs"]
    assert t.loc["oracle", "mean_ms"] == t["mean_ms"].min()
    # gated skips branches it predicts in vain: fewer exit heads run than in the cascade, and it pays
    assert t.loc["gated", "exits_ms"] < t.loc["cascade", "exits_ms"]
    assert t.loc["gated", "mean_ms"] < t.loc["cascade", "mean_ms"]
    # under a profile where a gate costs what an exit head costs, no gate pays on calib: gated is the cascade
    _, nano = run_policies(synth_cache, predictors=preds, profile="jetson-nano", cfg=PolicyConfig(bootstrap=0))
    nano = nano.set_index("policy")
    assert nano.loc["gated", "mean_ms"] <= nano.loc["cascade", "mean_ms"] * 1.02
    with pytest.raises(ValueError, match="report on test"):
        run_policies(synth_cache, split="calib")
    with pytest.raises(ValueError, match="2 thresholds for 4 exits|4 thresholds for 3 exits"):
        run_policies(synth_cache, thresholds=[0.1, 0.2, 0.3, 0.4])
    for key in ("p50_ms", "p99_ms", "peak_buffer_bytes", "exit0_%"):
        assert (t[f"{key}_lo"] <= t[key] + 1e-9).all() and (t[key] <= t[f"{key}_hi"] + 1e-9).all()
    pts = pareto_points(synth_cache, predictors=preds, profile=dev, n_settings=4)
    assert set(pts.policy) >= {"cascade", "gated", "jump", "full", "oracle"}
    # fronts are chosen on calib: every front point is non-dominated among its policy's calib figures
    for pol, d in pts[pts.on_front].groupby("policy"):
        allp = pts[pts.policy == pol]
        for _, r in d.iterrows():
            assert not ((allp["calib_mean_ms"] < r["calib_mean_ms"])
                        & (allp["calib_accuracy_%"] > r["calib_accuracy_%"])).any()
    # the plots of these results draw what the tables hold (their contract: tests/analysis/test_plots.py)
    refs = {"full", "oracle", "matched-oracle"} & set(pts.policy)  # the reference and the bounds: stars, no front
    fronts = sorted(set(pts.policy) - refs)
    fig, ax = plots.plot_pareto(pts, table)
    assert len(ax.lines) == len(fronts)
    points_only = set(table.policy) - set(pts.policy)  # an operating point without a front: labelled alone
    assert {t.get_text() for t in ax.get_legend().get_texts()} == \
        {f"{p} (front)" for p in fronts} | refs | points_only
    plots.save(fig, tmp_path / "pareto.png")
    k = synth_cache.num_exits
    fig, ax = plots.plot_exit_distribution(table)
    np.testing.assert_allclose([p.get_width() for p in ax.patches],
                               np.concatenate([table[f"exit{e}_%"] for e in range(k)]), atol=1e-9)
    fig, ax = plots.plot_latency_breakdown(table)
    assert len(ax.patches) == len(table) * len(ax.get_legend().get_texts())
    fig, ax = plots.plot_entropy_hist(synth_cache.table("test"), thresholds=T)
    tab = synth_cache.table("test")
    assert len(ax.patches) == tab.groupby(["exit", "correct"]).ngroups
    assert sum(int(p.get_data().values.sum()) for p in ax.patches) == len(tab)
    assert len(ax.lines) == int(np.isfinite(T[:-1]).sum())
    matplotlib.pyplot.close("all")



def test_a_registered_policy_joins_every_comparison_table_front_and_plot(synth_cache, monkeypatch):
    """A policy is registered in one place (analysis.core.policies) and appears everywhere: the summary table in
    registration order, the accuracy-latency fronts when swept, the plots' order (bounds last)."""
    from analysis.core import policies as P
    from analysis.core.evidence import cascade_outcome

    with pytest.raises(ValueError, match="exactly one of run"):
        P.Policy("x", "neither run nor decide")
    with pytest.raises(ValueError, match="role must be one of"):
        P.Policy("x", "a bad role", role="star", run=lambda ev, rule, cfg: None)
    pol = P.Policy("late-cascade", "the cascade under another name", swept=True, runtime=False,
                   run=lambda ev, rule, cfg: cascade_outcome(ev, rule, overlap=cfg.overlap, name="late-cascade"))
    monkeypatch.setitem(P.POLICIES._items, "late-cascade", pol)
    monkeypatch.setitem(P.POLICIES._docs, "late-cascade", pol.doc)
    cfg = PolicyConfig(bootstrap=0)
    _, table = run_policies(synth_cache, profile="jetson-nano", cfg=cfg)
    assert list(table.policy) == ["full", "cascade", "patience", "matched-oracle", "oracle", "late-cascade"]  # no predictors
    t = table.set_index("policy")
    assert t.loc["late-cascade", "mean_ms"] == t.loc["cascade", "mean_ms"]
    assert t.loc["late-cascade", "speedup"] == t.loc["cascade", "speedup"]
    pts = pareto_points(synth_cache, profile="jetson-nano", cfg=cfg, n_settings=3)
    a, b = pts[pts.policy == "late-cascade"], pts[pts.policy == "cascade"]
    assert len(a) == len(b) == 9 and list(a.mean_ms) == list(b.mean_ms) and a.on_front.any()
    assert P.policy_order(table.policy)[-1] == "oracle" and P.is_operating_point("late-cascade")
    assert not P.is_operating_point("oracle") and P.is_reference("full") and not P.is_reference("late-cascade")


def test_an_entropy_rule_is_converted_exactly_for_a_normalised_entropy_study(synth_cache):
    """An exit rule saved on entropy (nats) drives a study that decides on norm_entropy by the exact conversion
    T / ln C (ExitRule.converted): the same exits; a rule on another measure is refused, naming both."""
    from branchy.exits import ExitRule

    t = np.array(thresholds_for_accuracy(synth_cache.logits("calib"), synth_cache.labels("calib"), 0.95))
    rule = ExitRule.given(t, synth_cache.num_exits, "entropy")
    out_e, _ = run_policies(synth_cache, cfg=PolicyConfig(bootstrap=0), thresholds=rule)
    out_n, _ = run_policies(synth_cache, cfg=PolicyConfig(measure="norm_entropy", bootstrap=0), thresholds=rule)
    np.testing.assert_array_equal(out_e["cascade"].exit, out_n["cascade"].exit)
    with pytest.raises(ValueError, match="decides on max_prob, the policy config on entropy"):
        run_policies(synth_cache, cfg=PolicyConfig(bootstrap=0),
                     thresholds=ExitRule.given((0.9,) * (synth_cache.num_exits - 1), synth_cache.num_exits, "max_prob"))
