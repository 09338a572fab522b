"""The HTML report escapes every user- or data-supplied string."""
import pandas as pd

from analysis.study.outputs import simulate_to
from analysis.study.placement_study import run_placement
from analysis.study.report import write_report
from analysis.study.result import StudyResult
from analysis.core.policies import PolicyConfig
from analysis.study.config import StudyConfig
from branchy.data import DataConfig
from branchy.models import BackboneConfig
from tests.helpers import priced_cache, synthetic_arrays

EVIL = "<img src=x onerror=alert(1)>"


def test_report_escapes_every_user_and_data_string(tmp_path):
    cache = priced_cache(tmp_path / "cache", synthetic_arrays(n=(60, 60, 60)), model_name=EVIL,
                              dataset_name=f"npz:{EVIL}.npz")
    cache.manifest["device"] = EVIL
    cache.manifest["timing"] = {"cpu": EVIL, "load_1min": EVIL, "cores": 2, "idle_cores": 2, "threads": EVIL}
    sim = simulate_to(cache, tmp_path / "sim", profiles=("measured",), cfg=PolicyConfig(bootstrap=20), verbose=False)
    res, compare = run_placement(cache, {}, "none", profile="measured", rule=sim["rule"])
    summary, pareto = sim["summary"].copy(), sim["pareto"].copy()
    summary["profile"] = pareto["profile"] = f"measured {EVIL}"
    summary.loc[summary.policy == "patience", "policy"] = EVIL
    compare = compare.copy()
    compare.loc[0, "policy"] = EVIL
    cfg = StudyConfig(data=DataConfig(dataset="npz", path=f"/data/{EVIL}.npz"), model=BackboneConfig(), name=EVIL)
    object.__setattr__(cfg.model, "name", EVIL)  # as a backbone registered under that name would be
    result = StudyResult(out=tmp_path, config=cfg, cache=cache, rule=sim["rule"], test_eval=pd.DataFrame(),
                         simulation={"summary": summary, "pareto": pareto,
                                     "gates": pd.DataFrame({"gate": [EVIL], "pays": [True]})},
                         predictors={}, predictor_table=pd.DataFrame({"predictor": [EVIL], EVIL: [0.5]}),
                         placements={EVIL: (res, compare)}, validate=None)
    text = write_report(result, tmp_path / "report.html").read_text()
    assert "<img src=x" not in text and "onerror=alert(1)>" not in text
    esc = "&lt;img src=x onerror=alert(1)&gt;"
    for where in (f"<h1>{esc}</h1>", f"<title>{esc}</title>", f"npz:{esc}.npz", f"on {esc} with",
                  f"<td>{esc}</td>", f"<th>{esc}</th>", f"/data/{esc}.npz", f"<h3>{esc}: "):
        assert where in text, where


def test_report_draws_roc_and_pr_per_gated_exit(synth_cache):
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np

    from analysis.study.report import gate_curve_figure
    from predictors import PredictorSpec, fit_predictor

    t = (0.5, 0.5, np.inf)
    preds = {p.spec.name: p for p in (fit_predictor(synth_cache, s, timing=0.01) for s in (
        PredictorSpec("gate", 0, "linear", 0, t), PredictorSpec("gate", 0, "linear", 1, t),
        PredictorSpec("entropy", 1, "linear", 1, t), PredictorSpec("exit", 0, "linear", None, t)))}
    fig = gate_curve_figure(preds, synth_cache)
    axes = fig.axes
    assert len(axes) == 4  # ROC and PR for exits 0 and 1
    assert [len(a.get_legend().get_texts()) for a in axes] == [1, 2, 1, 2]
    assert "AUC" in axes[0].get_legend().get_texts()[0].get_text()
    assert gate_curve_figure({"x": preds["exit_at0_linear"]}, synth_cache) is None
