import logging

import numpy as np
import pytest
import yaml

from analysis.cli import main
from analysis.study.config import StudyConfigError, load_study, parse_study

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def _plain(v):
    """Tuples as lists, recursively (YAML has lists only)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load_every_value_they_write(path):
    raw = yaml.safe_load(path.read_text())
    cfg = load_study(path)
    assert cfg.data.dataset == raw["data"]["dataset"] and cfg.model.name == raw["model"]["name"]
    assert list(cfg.model.exits) == raw["model"]["exits"] and cfg.train.epochs == raw["train"]["epochs"]
    saved = cfg.to_dict()  # what is written next to every result
    for section, value in raw.items():
        if isinstance(value, dict):
            for key, v in value.items():
                assert _plain(saved[section][key]) == v, f"{path.name}: {section}.{key}"
        else:
            assert _plain(saved[section]) == value, f"{path.name}: {section}"


BASE = {"data": {"dataset": "mnist5k"}, "model": {"name": "b-lenet"}}


@pytest.mark.parametrize("patch,msg", [
    ({"model": {"name": "b-vgg"}}, r"model: unknown model 'b-vgg'; known: b-alexnet"),
    ({"data": {"dataset": "imagenet"}}, r"data: unknown dataset 'imagenet'"),
    ({"train": {"epochs": -3}}, r"train: epochs must be a whole number >= 1, got -3"),
    ({"train": {"epoch": 3}}, r"train: unknown field\(s\) \['epoch'\]"),
    ({"model": {"options": {"depth": 3}}}, r"model: b-lenet has no option 'depth' \(it takes no options\)"),
    ({"data": {"path": "x.npz"}}, r"data: dataset mnist5k takes no path \(its options: seed, sizes\)"),
    ({"data": "__remove__"}, r"missing required field\(s\) \['data'\]"),
    ({"policies": {"max_acc_drop": 1.0}}, r"policies: max_acc_drop EPS and risk DELTA go together"),
    ({"model": {"exits": [0, 1]}, "train": {"exit_weights": [1, 1]}}, r"train.exit_weights has 2 values but model.exits"),
    ({"profiles": ["measured", "tpu"]}, r"profiles: unknown device profile 'tpu'"),
    ({"placement": {"strategies": ["anneal"]}}, r"unknown placement strategy 'anneal'"),
    ({"predictors": {"model": "svm"}}, r"predictors: unknown predictor model 'svm'"),
    ({"policies": {"target_acc": 150}}, r"policies: target_acc must be a finite number in \(0, 100\]"),
    ({"dump": {"pooling": "max"}}, r"dump: unknown pooling 'max'"),
    ({"data": {"dataset": "npz"}}, r"data: dataset npz needs path \(data.path, CLI --data-path\)"),
    ({"train": {"scheme": "distill"}}, r"train: unknown training scheme 'distill'; known: joint, trunk-first, boostnet"),
    ({"train": {"scheme": "ztw"}}, r"train: scheme 'ztw' trains exits on a frozen trunk"),
])
def test_bad_configs_fail_before_any_work(patch, msg, tmp_path, capsys):
    raw = {k: dict(v) for k, v in BASE.items()}
    for k, v in patch.items():
        if v == "__remove__":
            del raw[k]
            continue
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) and k in raw else v
        if isinstance(raw[k], dict):
            raw[k] = {kk: vv for kk, vv in raw[k].items() if vv != "__drop__"}
    with pytest.raises(StudyConfigError, match=msg):
        parse_study(raw)
    f = tmp_path / "s.yaml"
    raw["out"] = str(tmp_path / "out")
    f.write_text(yaml.safe_dump(raw))
    assert main(["run", str(f)]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was started


@pytest.mark.slow
def test_a_study_on_a_users_npz_runs_end_to_end(tmp_path, capsys, caplog):
    """What docs/user-guide.md tells a new user to do, on their own arrays."""
    g = np.random.default_rng(0)
    n = 600
    y = g.integers(0, 3, n)
    x = g.normal(0, 0.3, (n, 16, 16)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 4 * c : 4 * c + 4, 2:14] += 2.0
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    cfg = {
        "name": "my npz study", "out": str(tmp_path / "run"),
        "data": {"dataset": "npz", "path": str(tmp_path / "mine.npz")},
        "model": {"name": "b-lenet", "exits": [0, 1]},
        "train": {"epochs": 2, "batch_size": 32},
        "dump": {"profile_time": 0.01},
        "predictors": {"model": "linear"},
        "policies": {"bootstrap": 50, "target_acc": 90},
        "profiles": ["measured", "mcu-npu"],
        "placement": {"strategies": ["greedy"], "profile": "mcu-npu"},
    }
    f = tmp_path / "study.yaml"
    f.write_text(yaml.safe_dump(cfg))
    caplog.set_level(logging.INFO, logger="branchy")
    assert main(["run", str(f)]) == 0
    out = capsys.readouterr().out
    assert "headline (mcu-npu)" in caplog.text and "oracle" in out  # the log (branchy.study), the tables (stdout)
    run = tmp_path / "run"
    for rel in ("study.yaml", "report.html", "model/model.pt", "cache/manifest.json", "predictors/predictors.json",
                "simulate/summary.csv", "placement/greedy/placement.json"):
        assert (run / rel).exists(), rel
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 6 and "my npz study" in html
    # `branchy report --run` renders the same verdict from the folder alone (nothing recomputed)
    assert main(["report", "--run", str(run), "--out", str(tmp_path / "again.html")]) == 0
    again_html = (tmp_path / "again.html").read_text()

    def verdict(h):
        return h[h.index('id="verdict"'):h.index('id="pay"')]

    assert verdict(again_html) == verdict(html) and 'class="card' in verdict(html)
    assert again_html.count("data:image/png;base64") >= html.count("data:image/png;base64") - 1
    # a second run reuses every step
    caplog.clear()
    assert main(["run", str(f)]) == 0
    again = caplog.text
    assert "reusing" in again and "training" not in again.split("reusing")[0]
