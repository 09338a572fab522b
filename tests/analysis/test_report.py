"""The HTML report: it answers first, escapes every user- or data-supplied string, and fits the page in a real browser."""
import json
import os
import shutil
import subprocess

import pandas as pd
import pytest

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
                  f">{esc}</td>", f">{esc}</th>", f"/data/{esc}.npz", f"<h3>{esc}: ", f"<h3>measured {esc}</h3>"):
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


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    """A small finished study and its report (``(result, path)``)."""
    from tests.helpers import small_study_result

    d = tmp_path_factory.mktemp("study")
    result = small_study_result(d)
    return result, write_report(result, d / "report.html")


def test_the_report_answers_first(small_report):
    """A verdict card per profile (the fastest policy that keeps accuracy, its speed-up and accuracy change with
    CIs, whether predictors pay and why) comes first, then the chosen placement, then the detail; no table is a text
    dump and no cell reads like a float's repr."""
    import re

    result, path = small_report
    html = path.read_text()
    order = [html.index(f'id="{s}"') for s in ("verdict", "chosen", "pay", "headline", "costs", "provenance")]
    assert order == sorted(order)
    verdict = html[order[0]:order[1]]
    refs = result.references
    assert verdict.count('<article class="card') == len(refs) == 2
    for row in refs.to_dict("records"):
        speedup = 1 / row["best_vs_full"]
        assert f"<h3>{row['profile']}</h3>" in verdict
        assert (f"{speedup:.2f}x faster than full" in verdict or f"{1 / speedup:.2f}x slower than full" in verdict
                or "nothing beats full here" in verdict)
        assert ("Predictors pay here" if row["pays"] else "Predictors do not pay here") in verdict
    assert "<pre>" not in html[:html.index('id="provenance"')]  # the headline is a table, not text
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", html)
    assert cells and not [c for c in cells if re.search(r"\de[+-]\d|^(True|False|nan)$", c)]
    assert html.count('class="data row') > 0 and 'td id=' in html and " best" in html  # Styler, best row marked


def test_cards_say_why_predictors_do_not_pay():
    from analysis.study.verdict import card

    row = {"profile": "p", "best_placement": "e0:- e1:- e2:final", "full_placement": "e0:- e1:- e2:final",
           "best_rule": "full", "best_ms": 1.0, "full_ms": 1.0, "best_vs_full": 1.0, "best_vs_full_lo": 1.0,
           "best_vs_full_hi": 1.0, "best_vs_full_acc_pts": 0.0, "pays": False, "acc_eps_pts": 0.5,
           "gated_vs_free": 1.2, "gated_vs_free_lo": 1.1, "gated_vs_free_hi": 1.3, "gated_vs_free_acc_pts": -1.0,
           "gated_vs_free_acc_lo_pts": -2.0, "perfect_gates_vs_free": 0.999, "cascade_vs_full": 1.22,
           "cascade_vs_full_lo": 1.2, "cascade_vs_full_hi": 1.3, "side_exit_cost_share_%": 131.0}
    c = card(row)
    assert c["is_full"] and c["predictors"] == "do not pay here" and c["speedup"] == 1.0
    said = " ".join(c["sentences"])
    assert "its latency CI reaches 1 or above and its accuracy may be more than 0.5 points lower" in said
    assert "perfect gates would save nothing" in said
    assert "slower than full on this profile (1.220 [1.200, 1.300] x full): its side exits cost 131 %" in said
    row.update(pays=True, gated_vs_free=0.8, gated_vs_free_lo=0.7, gated_vs_free_hi=0.9, gated_vs_free_acc_pts=0.0,
               gated_vs_free_acc_lo_pts=-0.1)
    assert card(row)["predictors"] == "pay here"
    assert "Predictors pay here: the best placement with a predictor runs at 0.800 [0.700, 0.900] x" in \
        " ".join(card(row)["sentences"])


def _browser() -> str | None:
    """Headless Chromium or Chrome (``BRANCHY_CHROMIUM`` names another), or None."""
    names = [os.environ.get("BRANCHY_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"]
    return next((p for p in map(shutil.which, filter(None, names)) if p), None)


_PROBE = """<script>(function(){var v=document.querySelector('#verdict .card .big'),r=v.getBoundingClientRect(),
d=document.documentElement;document.body.setAttribute('data-probe',JSON.stringify({scroll:d.scrollWidth,
width:d.clientWidth,height:window.innerHeight,verdict:r.bottom,text:v.textContent,
wide:[].slice.call(document.querySelectorAll('body *')).filter(function(e){return e.getBoundingClientRect().right>
d.clientWidth+1&&!e.closest('.scroll');}).map(function(e){return e.tagName+'.'+e.className;}).slice(0,5)}));})();
</script>"""


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium (`make browser-test` installs Debian's chromium)")
@pytest.mark.parametrize("width", [800, 1400])
def test_the_report_fits_the_page_in_chromium_and_answers_on_the_first_screen(small_report, tmp_path, width):
    """Rendered by headless Chromium at 800 and 1400 px: nothing makes the page scroll sideways (wide tables scroll
    in their own box), and the first verdict card's answer is on the first screen."""
    _, path = small_report
    page = tmp_path / "probe.html"  # a copy with a measuring script; the report itself carries no script
    page.write_text(path.read_text().replace("</body>", _PROBE + "</body>"))
    out = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
                          f"--window-size={width},900", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    import html as html_lib
    import re

    m = re.search(r'data-probe="([^"]*)"', out.stdout)
    assert m, f"Chromium printed no page: {out.stderr[-2000:]}"
    probe = json.loads(html_lib.unescape(m.group(1)))
    assert probe["scroll"] <= probe["width"], f"the page scrolls sideways at {width} px: {probe}"
    assert not probe["wide"], probe
    assert probe["verdict"] <= probe["height"], f"the verdict is below the first screen at {width} px: {probe}"
    assert "than full" in probe["text"] or "nothing beats full" in probe["text"]
