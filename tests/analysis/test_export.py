"""``branchy export``: the package runs without torch and takes the simulator's exits; tampering is refused; the
runner's on-device costs become a measured profile of the cache."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from analysis.deploy.export import ExportError, export_package, simulated
from analysis.deploy.runner import Package, PackageError, profile
from branchy.cache import dump, import_costs
from branchy.exits import ExitRule
from branchy.models import build_model
from placement import Gate, Placement
from predictors import PredictorSpec, fit_predictor

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

PLACEMENTS = {
    "jump and gate": Placement((True, True, True), (None, Gate("gate_at0_for1_nn", 0), None), Gate("exit_at0_nn", 0)),
    "exit 0 removed, gated exit 1": Placement((False, True, True), (None, Gate("gate_at1_for1_nn", 1), None)),
}


@pytest.fixture(scope="module")
def exported(toy_splits, tmp_path_factory):
    """A b-lenet, its cache, nn gates and a jump, and a package per placement (rule: entropy at the calib median,
    so samples leave at every exit)."""
    d = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    m = build_model("b-lenet", exits=(0, 1), num_classes=4).eval()
    cache = dump(m, toy_splits, d / "cache", progress=False, profile_time=0.01, pooling="grid:2")
    from branchy.exits import confidence

    z = cache.logits("calib")
    t = tuple(float(np.median(confidence(z[:, e], "entropy"))) for e in range(2)) + (np.inf,)
    rule = ExitRule("entropy", t, "median", "calib")
    nn = {"max_epochs": 10}
    preds = {p.spec.name: p for p in (fit_predictor(cache, PredictorSpec(tg, at, "nn", e, t, params=nn), folds=2,
                                                    timing=0.005)
                                      for tg, at, e in (("gate", 0, 1), ("gate", 1, 1), ("exit", 0, None)))}
    for e in (0, 1):  # the learned exit decision's leave predictors (logistic: exportable)
        lv = fit_predictor(cache, PredictorSpec("leave", e, "linear-cv", e, class_weight="balanced",
                                                with_confidences=True), folds=2, timing=0.005)
        preds[lv.spec.name] = lv
    own = tuple(float(np.quantile(confidence(z[:, e], "entropy"), q)) for e, q in ((0, 0.3), (1, 0.7))) + (np.inf,)
    learned = Placement.learned_on({0: "leave_at0_for0_linear-cv", 1: "leave_at1_for1_linear-cv"}, 3)
    pls = {**PLACEMENTS, "own thresholds": Placement((True, True, True), (None, None, None), thresholds=own),
           "learned": learned}
    pkgs = {n: export_package(m, cache, preds, pl, rule, d / n.replace(" ", "_").replace(",", ""), splits=toy_splits)
            for n, pl in pls.items()}
    return m, cache, preds, rule, pkgs, pls


_RUN = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import runner
pkg = runner.Package(sys.argv[1])
x = pkg.preprocess(np.load(sys.argv[2]))
one = [pkg.run_one(x[i:i + 1]) for i in range(len(x))]
g = None
if pkg.plan["graph"]:  # a learned exit decision has none
    graph = pkg.graph()
    g = [graph(x[i:i + 1]) for i in range(len(x))]
bp, be = pkg.run_batch(x)
assert "torch" not in sys.modules and "branchy" not in sys.modules, sorted(m for m in sys.modules if "torch" in m)
print(json.dumps({"one": one, "graph": g, "batch": [bp.tolist(), be.tolist()]}))
"""


def test_the_package_runs_without_torch_and_takes_the_simulators_exits(exported, toy_splits, tmp_path):
    """In a fresh process with only numpy and onnxruntime: the segment runner at batch 1 and on a batch, and the
    single graph, give every test sample the simulator's exit and prediction (and the torch runtime's)."""
    from analysis.study.validate import build_runtime

    m, cache, preds, rule, pkgs, pls = exported
    raw = toy_splits.test.x.numpy()
    np.save(tmp_path / "x.npy", raw)  # uint8 images, normalised by the runner as in training
    x = toy_splits.test.batch(torch.arange(len(raw)))[0]
    for name, pkg in pkgs.items():
        pl = pls[name]
        out = subprocess.run([sys.executable, "-c", _RUN, str(pkg), str(tmp_path / "x.npy")], capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        got = json.loads(out.stdout)
        sp, se = simulated(cache, preds, pl, rule)
        assert len(set(se.tolist())) >= 2, f"{name}: every sample leaves at one exit, the test says little"
        assert (got["graph"] is None) == (name == "learned")
        for how in ("one", "graph") if got["graph"] is not None else ("one",):
            p, e = np.array(got[how]).T
            assert (e == se).all() and (p == sp).all(), f"{name} ({how}): exits {e} vs simulated {se}"
        assert got["batch"] == [sp.tolist(), se.tolist()], name
        from analysis.study.plan import decide

        r, cuts, _ = decide(cache, preds, pl, rule)
        rt = build_runtime(m, pl, r, cuts, preds, cache.manifest["pooling"],
                           feature_dtype=cache.manifest["feature_dtype"])
        tp, te = rt(x)
        assert te.tolist() == se.tolist() and tp.tolist() == sp.tolist(), name
    own = json.loads((pkgs["own thresholds"] / "plan.json").read_text())["rule"]
    assert own["thresholds"][:2] == pytest.approx(list(pls["own thresholds"].thresholds[:2]))
    assert own["thresholds"][:2] != pytest.approx(list(rule.thresholds[:2]))
    plan = json.loads((pkgs["jump and gate"] / "plan.json").read_text())
    assert plan["rule"]["thresholds"][-1] is None and plan["jump"]["file"] == "jump.onnx"
    assert plan["input"]["normalise"] == {"scale": pytest.approx(1 / 255), "mean": [pytest.approx(0.3)],
                                          "std": [pytest.approx(0.3)], "raw_dtype": "uint8"}
    assert set(plan["files"]) == {f.name for f in pkgs["jump and gate"].iterdir()} - {"plan.json"}


def test_a_changed_or_missing_file_is_refused(exported, tmp_path):
    import shutil

    *_, pkgs, _ = exported
    pkg = shutil.copytree(pkgs["jump and gate"], tmp_path / "pkg")
    Package(pkg)  # as exported: fine
    data = bytearray((pkg / "gate_1.onnx").read_bytes())
    data[-1] ^= 1
    (pkg / "gate_1.onnx").write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"gate_1.onnx differs from the file exported \(SHA-256 mismatch\)"):
        Package(pkg)
    (pkg / "gate_1.onnx").unlink()
    with pytest.raises(PackageError, match=r"gate_1.onnx is missing"):
        Package(pkg)
    plan = json.loads((pkg / "plan.json").read_text())
    (pkg / "plan.json").write_text(json.dumps({**plan, "format_version": 99}))
    with pytest.raises(PackageError, match="format version 99"):
        Package(pkg)
    with pytest.raises(PackageError, match="no plan.json"):
        Package(tmp_path)


def test_export_refuses_what_it_cannot_carry(exported, toy_splits, tmp_path):
    m, cache, preds, rule, pkgs, _ = exported
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_package(m, cache, preds, PLACEMENTS["jump and gate"], rule, pkgs["jump and gate"], splits=toy_splits)
    lin = fit_predictor(cache, PredictorSpec("gate", 0, "linear", 1, rule.thresholds), folds=2, timing=0.005)
    pl = Placement((True, True, True), (None, Gate(lin.spec.name, 0), None))
    with pytest.raises(ExportError, match="linear predictor, which has no ONNX form here.*--predictor-model nn"):
        export_package(m, cache, {lin.spec.name: lin}, pl, rule, tmp_path / "lin", splits=toy_splits)
    assert not (tmp_path / "lin").exists()
    jl = Placement((True, True, True), (None, None, None), Gate("exit_at0_nn", 0), jump_leave=True)
    with pytest.raises(ExportError, match="jump-and-leave has no exported form"):
        export_package(m, cache, preds, jl, rule, tmp_path / "jl", splits=toy_splits)
    assert not (tmp_path / "jl").exists()


def test_costs_timed_on_the_device_become_a_measured_profile(exported, tmp_path):
    """runner.py profile -> branchy profile --import: a profile measured-NAME of the cache; a costs file with a
    segment missing or extra, or of other weights, is refused and the cache is left as it was."""
    import shutil

    from analysis.core.costs import CostModel
    from branchy.cache import FeatureCache

    _, cache, *_, pkgs, _ = exported
    c = shutil.copytree(cache.path, tmp_path / "cache")
    costs = profile(Package(pkgs["jump and gate"]), rounds=3, min_run_time=0.002)
    assert {(r["segment"], r["k"]) for r in costs["segments"]} >= {("stage", 2), ("buffer", 0), ("gate", 1)}
    assert costs["overhead"]["sample_ms"] >= 0 and json.loads(json.dumps(costs, allow_nan=False)) == costs
    for bad, msg in ((lambda d: d["segments"].pop(1), r"missing \[\('exit', 0\)\]"),
                     (lambda d: d["segments"].append({"segment": "stage", "k": 7, "ms_b1": 1.0}),
                      r"extra \[\('stage', 7\)\]"),
                     (lambda d: d["model"].update(fingerprint="0" * 16), "times model weights 0000")):
        d = json.loads(json.dumps(costs))
        bad(d)
        with pytest.raises(ValueError, match=msg):
            import_costs(c, d, "dev")
    assert "dev" not in FeatureCache.open(c).backends
    with pytest.raises(ValueError, match="profile name 'onnxruntime'"):
        import_costs(c, costs, "onnxruntime")
    got = import_costs(c, costs, "dev")
    cm = CostModel.from_cache(got, "measured-dev")
    want = {(r["segment"], r["k"]): r["ms_b1"] for r in costs["segments"]}
    assert cm.stage_ms.tolist() == [want[("stage", k)] for k in range(3)]
    assert cm.exit_ms.tolist() == [want[("exit", k)] for k in range(3)]
    assert cm.sample_ms == pytest.approx(costs["overhead"]["sample_ms"])
    FeatureCache.open(c, verify=True)  # the new table is hashed in the manifest


def test_the_runner_command_prints_predictions_and_refuses_a_wrong_input(exported, toy_splits, tmp_path):
    *_, pkgs, _ = exported
    pkg = pkgs["jump and gate"]
    np.save(tmp_path / "x.npy", toy_splits.test.x.numpy()[:5])
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 28, 28), np.float32))
    cmd = [sys.executable, str(pkg / "runner.py"), str(pkg), "--input"]
    for extra in ([], ["--graph"], ["--batch"]):
        out = subprocess.run(cmd + [str(tmp_path / "x.npy"), *extra], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and len(out.stdout.split("\n")) == 6, out.stderr
    assert len({subprocess.run(cmd + [str(tmp_path / "x.npy"), *e], capture_output=True, text=True).stdout
                for e in ([], ["--graph"], ["--batch"])}) == 1  # the three modes agree
    out = subprocess.run(cmd + [str(tmp_path / "bad.npy")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "takes finite images [N, 1, 28, 28]" in out.stderr


def test_the_runners_confidences_are_the_toolkits():
    """The runner's numpy confidences (no branchy on the device) equal the leave predictors' inputs bit for bit."""
    from analysis.deploy.runner import _confidences
    from branchy.exits import confidence

    z = np.random.default_rng(0).normal(scale=4, size=(50, 3, 7)).astype(np.float32)
    want = np.concatenate([confidence(z, m).astype(np.float32) for m in ("entropy", "max_prob", "margin")], 1)
    np.testing.assert_array_equal(_confidences(z), want)
