"""Predictor files (format 3): nothing read from a predictors folder can run code, names cannot leave the
folder, and every check (names, format, cache fingerprint, SHA-256) comes before a model file is parsed."""
import hashlib
import io
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from predictors import PredictorSpec, fit_predictor, list_predictor_models, load_predictors, save_predictors
from predictors.store import FORMAT_VERSION, INDEX, SKOPS_TRUSTED, check_name
from tests.helpers import priced_cache, synthetic_arrays

T = (0.5, 0.5, np.inf)
#: tiny fits: a few epochs / iterations per model (a model registered later runs with its defaults)
PARAMS = {"nn": {"max_epochs": 5, "hidden": (8,)}, "mlp": {"max_iter": 20}, "hgb": {"max_iter": 5}}


class Boom:
    """Creates the file ``path`` whenever it is unpickled or rebuilt from its state: the proof that a
    loader ran code from a file."""

    def __init__(self, path):
        self.path = str(path)

    def __setstate__(self, state):
        Path(state["path"]).write_text("code ran")
        self.__dict__.update(state)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return priced_cache(tmp_path_factory.mktemp("pf") / "cache", synthetic_arrays(n=(60, 80, 60)))


@pytest.fixture(scope="module")
def other_cache(tmp_path_factory):
    return priced_cache(tmp_path_factory.mktemp("pf") / "other", synthetic_arrays(n=(60, 80, 60), seed=5))


def _fit(cache, target, model, **kw):
    spec = {"gate": lambda: PredictorSpec("gate", 0, model, 1, T, params=PARAMS.get(model, {}), **kw),
            "entropy": lambda: PredictorSpec("entropy", 0, model, 1, params=PARAMS.get(model, {}), **kw),
            "exit": lambda: PredictorSpec("exit", 1, model, None, T, params=PARAMS.get(model, {}), **kw)}[target]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_predictor(cache, spec, folds=2, timing=0.01)


@pytest.fixture(scope="module")
def pair(cache):
    """A scikit-learn predictor (skops) and a torch one (npz + pt)."""
    return [_fit(cache, "gate", "linear"), _fit(cache, "gate", "nn")]


def _saved(pair, tmp_path) -> Path:
    d = tmp_path / "p"
    save_predictors(pair, d)
    return d


def _index(d: Path) -> dict:
    return json.loads((d / INDEX).read_text())


def _write_index(d: Path, index: dict) -> None:
    (d / INDEX).write_text(json.dumps(index))


def _replace_file(d: Path, name: str, fname: str, data: bytes) -> None:
    """Put ``data`` in ``fname`` and record its SHA-256 in the index (so only the content checks are left)."""
    (d / fname).write_bytes(data)
    index = _index(d)
    index["predictors"][name]["files"][fname] = hashlib.sha256(data).hexdigest()
    _write_index(d, index)


@pytest.fixture
def reads(monkeypatch):
    """Every file read or parsed during a load: Path.read_bytes, np.load, skops and torch loaders."""
    import skops.io as sio

    seen = []

    def spy(label, fn):
        def wrapped(*a, **k):
            seen.append((label, str(a[0]) if a and isinstance(a[0], (str, os.PathLike)) else label))
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(Path, "read_bytes", spy("read_bytes", Path.read_bytes))
    monkeypatch.setattr(np, "load", spy("np.load", np.load))
    monkeypatch.setattr(sio, "loads", spy("skops.loads", sio.loads))
    monkeypatch.setattr(sio, "load", spy("skops.load", sio.load))
    monkeypatch.setattr(sio, "get_untrusted_types", spy("skops.get_untrusted_types", sio.get_untrusted_types))
    monkeypatch.setattr(torch, "load", spy("torch.load", torch.load))
    return seen


# ----------------------------------------------------------------------------- (a) round trip
@pytest.mark.parametrize("target", ["gate", "entropy"])
@pytest.mark.parametrize("model", list_predictor_models())
def test_every_model_and_task_reloads_bit_for_bit(cache, tmp_path, model, target):
    p = _fit(cache, target, model)
    d = tmp_path / "p"
    save_predictors([p], d)
    files = sorted(f.name for f in d.iterdir())
    assert not any(f.endswith((".joblib", ".tmp", ".pkl")) for f in files), files
    rng = torch.random.get_rng_state()
    q = load_predictors(d, cache)[p.spec.name]
    assert torch.equal(rng, torch.random.get_rng_state())  # loading draws nothing from torch's generator
    assert type(q.estimator) is type(p.estimator)
    assert q.spec == p.spec and q.cost == p.cost and q.folds == p.folds and q.fit_split == p.fit_split
    assert q.cache_fingerprint == p.cache_fingerprint
    for split in ("calib", "test"):  # calib: out of fold; test: the refitted model itself
        np.testing.assert_array_equal(q.predict(cache, split), p.predict(cache, split))
    x = p.inputs(cache, "test")
    np.testing.assert_array_equal(q.raw_inputs(x), p.raw_inputs(x))
    if p.classes is not None:
        np.testing.assert_array_equal(q.classes, p.classes)
        assert q.classes.dtype == p.classes.dtype


@pytest.mark.parametrize("model", ["nn", "hgb"])
def test_multiclass_and_a_second_save_round_trip(cache, tmp_path, model):
    p = _fit(cache, "exit", model)
    save_predictors([p], tmp_path / "p")
    q = load_predictors(tmp_path / "p", cache)[p.spec.name]
    save_predictors([q], tmp_path / "p2")  # what was loaded saves again
    r = load_predictors(tmp_path / "p2", cache)[p.spec.name]
    x = p.inputs(cache, "test")
    np.testing.assert_array_equal(r.raw_inputs(x), p.raw_inputs(x))
    np.testing.assert_array_equal(r.predict(cache, "calib"), p.predict(cache, "calib"))


def test_layout_and_atomic_writes_index_last(pair, tmp_path, monkeypatch):
    import predictors.store as store

    order = []
    real = store.atomic_write
    monkeypatch.setattr(store, "atomic_write", lambda path, data: (order.append(path.name), real(path, data)))
    d = _saved(pair, tmp_path)
    assert order[-1] == INDEX and order.count(INDEX) == 1
    lin, nn = (p.spec.name for p in pair)
    assert sorted(f.name for f in d.iterdir()) == sorted([INDEX, f"{lin}.npz", f"{lin}.skops", f"{nn}.npz", f"{nn}.pt"])
    index = _index(d)
    assert index["version"] == FORMAT_VERSION == 3
    assert index["predictors"][nn]["spec"]["rule"]["thresholds"][-1] == "inf"  # standard JSON
    json.loads((d / INDEX).read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    for name in (lin, nn):
        for fname, h in index["predictors"][name]["files"].items():
            assert hashlib.sha256((d / fname).read_bytes()).hexdigest() == h


def test_a_replaced_predictor_of_another_kind_leaves_no_stale_file(cache, pair, tmp_path):
    d = _saved(pair, tmp_path)
    nn = pair[1]
    from dataclasses import replace

    from sklearn.dummy import DummyClassifier

    const = replace(nn, estimator=DummyClassifier(strategy="prior").fit(np.zeros((4, 6)), [0, 1, 0, 1]))
    save_predictors([const], d)
    assert not (d / f"{nn.spec.name}.pt").exists() and (d / f"{nn.spec.name}.skops").exists()
    assert isinstance(load_predictors(d, cache)[nn.spec.name].estimator, DummyClassifier)


def test_a_torch_classifier_without_a_network_round_trips(cache, pair, tmp_path):
    from dataclasses import replace

    from predictors.torch_mlp import TorchMLPClassifier

    one = replace(pair[1], estimator=TorchMLPClassifier(max_epochs=2).fit(np.ones((5, 6)), np.ones(5, int)))
    save_predictors([one], tmp_path / "p")
    assert not (tmp_path / "p" / f"{one.spec.name}.pt").exists()
    q = load_predictors(tmp_path / "p", cache)[one.spec.name]
    assert q.estimator.net_ is None
    x = one.inputs(cache, "test")
    np.testing.assert_array_equal(q.estimator.predict_proba(x), one.estimator.predict_proba(x))


# ----------------------------------------------------------------------------- (b) names that leave the folder
def test_names_are_checked():
    for good in ("gate_at0_for1_nn", "a.b-c_1"):
        assert check_name(good) == good
    for bad in ("../x", "/abs/x", ".hidden", "a/b", "a\\b", "", "x\n", "..", "a b", None):
        with pytest.raises(ValueError, match="refused"):
            check_name(bad)


def _outside_files(tmp_path, pair, d):
    """Copies of a real predictor's files outside the folder (valid content, valid hashes)."""
    lin = pair[0].spec.name
    for s in (".npz", ".skops"):
        shutil.copy(d / f"{lin}{s}", tmp_path / f"x{s}")
    return _index(d)["predictors"][lin]


@pytest.mark.parametrize("how", ["dotdot", "absolute", "files-dotdot", "files-absolute", "symlink"])
def test_an_entry_leaving_the_folder_is_refused_before_any_file_is_read(pair, tmp_path, reads, how):
    d = _saved(pair, tmp_path)
    entry = _outside_files(tmp_path, pair, d)
    index = _index(d)
    out = str(tmp_path / "x")
    if how == "dotdot":
        index["predictors"]["../x"] = {**entry, "files": {f"../x{s}": entry["files"][f"{pair[0].spec.name}{s}"]
                                                          for s in (".npz", ".skops")}}
    elif how == "absolute":
        index["predictors"][out] = {**entry, "files": {f"{out}{s}": entry["files"][f"{pair[0].spec.name}{s}"]
                                                       for s in (".npz", ".skops")}}
    elif how in ("files-dotdot", "files-absolute"):
        lin = pair[0].spec.name
        target = "../x.skops" if how == "files-dotdot" else f"{out}.skops"
        files = dict(entry["files"])
        files[target] = files.pop(f"{lin}.skops")
        index["predictors"][lin]["files"] = files
    else:  # a file of a valid entry that is a link to a file outside
        lin = pair[0].spec.name
        (d / f"{lin}.skops").unlink()
        (d / f"{lin}.skops").symlink_to(tmp_path / "x.skops")
    _write_index(d, index)
    reads.clear()  # what saving read does not count
    with pytest.raises(ValueError, match="outside the predictors folder|is refused"):
        load_predictors(d)
    assert reads == []  # refused while checking the index: no file read, parsed or unpickled


# ----------------------------------------------------------------------------- (c) crafted files cannot run code
def test_the_boom_payloads_are_live(tmp_path):
    """Controls: the payloads used below do run code when read by a trusting loader."""
    import skops.io as sio

    m1, m2, m3 = tmp_path / "m1", tmp_path / "m2", tmp_path / "m3"
    b = sio.dumps(Boom(m1))
    sio.loads(b, trusted=sio.get_untrusted_types(data=b))
    buf = io.BytesIO()
    torch.save({"0.weight": Boom(m2)}, buf)
    torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    pickle.loads(pickle.dumps(Boom(m3)))
    assert m1.exists() and m2.exists() and m3.exists()


def test_a_skops_file_with_a_type_off_the_allow_list_is_refused(pair, tmp_path):
    import skops.io as sio
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    d = _saved(pair, tmp_path)
    lin = pair[0].spec.name
    marker = tmp_path / "marker"
    _replace_file(d, lin, f"{lin}.skops", sio.dumps(Boom(marker)))
    with pytest.raises(ValueError, match=r"not on the predictor allow-list: .*Boom.*refit with `branchy fit-predictors"):
        load_predictors(d)
    assert not marker.exists()
    _replace_file(d, lin, f"{lin}.skops", sio.dumps(make_pipeline(FunctionTransformer(os.system))))
    with pytest.raises(ValueError, match=r"not on the predictor allow-list: .*system"):
        load_predictors(d)
    assert not any("Boom" in t or "system" in t for t in SKOPS_TRUSTED)


def test_a_pt_file_holding_a_pickled_object_is_refused_by_weights_only(pair, tmp_path):
    d = _saved(pair, tmp_path)
    nn = pair[1].spec.name
    marker = tmp_path / "marker"
    buf = io.BytesIO()
    torch.save({"0.weight": Boom(marker)}, buf)
    _replace_file(d, nn, f"{nn}.pt", buf.getvalue())
    with pytest.raises(ValueError, match=r"\.pt is not a readable predictor network .*Python objects"):
        load_predictors(d)
    assert not marker.exists()
    _replace_file(d, nn, f"{nn}.pt", pickle.dumps(Boom(marker)))  # a raw pickle named .pt: one error, no warning
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=r"\.pt is not a readable predictor network"):
            load_predictors(d)
    assert not [str(w.message) for w in seen if "pickle" in str(w.message)]  # torch's pickle-protocol note
    assert not marker.exists()


def test_an_npz_holding_a_pickled_object_is_refused(pair, tmp_path):
    d = _saved(pair, tmp_path)
    nn = pair[1].spec.name
    marker = tmp_path / "marker"
    buf = io.BytesIO()
    np.savez(buf, oof=np.array([Boom(marker)], dtype=object))
    _replace_file(d, nn, f"{nn}.npz", buf.getvalue())
    with pytest.raises(ValueError, match=r"\.npz is not a readable predictor array file"):
        load_predictors(d)
    assert not marker.exists()
    _replace_file(d, nn, f"{nn}.npz", pickle.dumps(Boom(marker)))  # a bare pickle named .npz
    with pytest.raises(ValueError, match=r"\.npz is not a readable predictor array file"):
        load_predictors(d)
    assert not marker.exists()
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))  # one array, not an archive
    _replace_file(d, nn, f"{nn}.npz", buf.getvalue())
    with pytest.raises(ValueError, match=r"\.npz is not a readable predictor array file \(a single array"):
        load_predictors(d)


# ----------------------------------------------------------------------------- (d) the old pickled format
@pytest.mark.parametrize("version", [2, None])
def test_old_joblib_folders_are_refused_unread_and_replaced(cache, pair, tmp_path, reads, version):
    d = tmp_path / "old"
    d.mkdir()
    marker = tmp_path / "marker"
    name = pair[1].spec.name
    (d / f"{name}.joblib").write_bytes(pickle.dumps(Boom(marker)))
    index = {"predictors": {name: {"spec": {}, "folds": 5}}}
    if version is not None:
        index["version"] = version
    _write_index(d, index)
    (d / "evaluation.csv").write_text("kept\n")
    (d / "notes.joblib.txt").write_text("kept\n")
    with pytest.raises(ValueError, match=r"predictor format version 2 \(pickled \.joblib files.*not read.*reads predictor format version 3: refit "
                                         r"with `branchy fit-predictors --cache CACHE --out .*` \(or rerun the study"):
        load_predictors(d, cache)
    assert not marker.exists() and reads == []
    save_predictors(pair, d)  # starts anew: deletes the pickles, nothing it does not know
    assert not (d / f"{name}.joblib").exists()
    assert (d / "evaluation.csv").read_text() == "kept\n" and (d / "notes.joblib.txt").exists()
    assert set(load_predictors(d, cache)) == {p.spec.name for p in pair}
    assert not marker.exists()


# ----------------------------------------------------------------------------- (e) hashes
@pytest.mark.parametrize("which", [".npz", ".skops", ".pt"])
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_file_is_named_by_its_hash(pair, tmp_path, which, damage):
    d = _saved(pair, tmp_path)
    name = pair[0 if which == ".skops" else 1].spec.name
    f = d / f"{name}{which}"
    b = bytearray(f.read_bytes())
    if damage == "flip":
        b[len(b) // 2] ^= 0xFF
    else:
        b = b[: len(b) // 2]
    f.write_bytes(bytes(b))
    with pytest.raises(ValueError, match=rf"{f.name}: its SHA-256 does not match {INDEX}.*branchy fit-predictors"):
        load_predictors(d)


@pytest.mark.parametrize("which", [".npz", ".skops", ".pt"])
def test_a_truncated_file_with_a_matching_hash_is_a_clear_error(pair, tmp_path, which):
    d = _saved(pair, tmp_path)
    name = pair[0 if which == ".skops" else 1].spec.name
    b = (d / f"{name}{which}").read_bytes()
    _replace_file(d, name, f"{name}{which}", b[: len(b) // 2])
    with pytest.raises(ValueError, match=rf"{name}\{which} is not a readable .*branchy fit-predictors"):
        load_predictors(d)


# ----------------------------------------------------------------------------- (f) the cache fingerprint first
def test_another_cache_is_refused_before_any_model_file_is_read(pair, other_cache, tmp_path, reads):
    d = _saved(pair, tmp_path)
    reads.clear()
    with pytest.raises(ValueError, match="fitted on cache .* refit it with `branchy fit-predictors`"):
        load_predictors(d, other_cache)
    assert reads == []
    for f in d.glob("*.skops"):  # even without its model files, the fingerprint is what is reported
        f.unlink()
    with pytest.raises(ValueError, match="fitted on cache"):
        load_predictors(d, other_cache)


# ----------------------------------------------------------------------------- malformed indexes
def _mangle(d, pair, how):
    index = _index(d)
    lin = pair[0].spec.name
    if how == "not-json":
        (d / INDEX).write_text("{not json")
        return
    if how == "list":
        index = [1, 2]
    elif how == "no-predictors":
        index["predictors"] = ["x"]
    elif how == "newer":
        index["version"] = 99
    elif how == "missing-key":
        del index["predictors"][lin]["files"]
    elif how == "entry-not-mapping":
        index["predictors"][lin] = 3
    elif how == "other-spec":
        index["predictors"][lin]["spec"]["at"] = 1
    elif how == "bad-spec":
        index["predictors"][lin]["spec"]["target"] = "os.system"
    elif how == "bad-hash":
        index["predictors"][lin]["files"][f"{lin}.npz"] = "abc"
    elif how == "extra-file":
        index["predictors"][lin]["files"]["evaluation.csv"] = "0" * 64
    elif how == "bad-kind":
        index["predictors"][lin]["estimator"]["kind"] = "joblib"
    _write_index(d, index)


@pytest.mark.parametrize("how, match", [
    ("not-json", "predictors.json is not valid JSON"),
    ("list", "predictors.json is not a predictor index"),
    ("no-predictors", "has no 'predictors' mapping"),
    ("newer", "predictor format version 99, newer than this toolkit's 3: upgrade"),
    ("missing-key", "gate_at0_for1_linear lacks files"),
    ("entry-not-mapping", "gate_at0_for1_linear is not a mapping"),
    ("other-spec", "the entry gate_at0_for1_linear holds the spec of gate_at1_for1_linear"),
    ("bad-spec", "not a predictor spec .*unknown target"),
    ("bad-hash", "has no SHA-256 in the index"),
    ("extra-file", r"names files .*evaluation.csv.*, want"),
    ("bad-kind", "unknown model kind 'joblib'"),
])
def test_a_malformed_index_is_one_clear_error(pair, tmp_path, reads, how, match):
    d = _saved(pair, tmp_path)
    _mangle(d, pair, how)
    reads.clear()
    with pytest.raises(ValueError, match=match) as e:
        load_predictors(d)
    assert "branchy" in str(e.value) or "upgrade" in str(e.value)
    assert reads == []


def test_a_missing_file_and_a_model_of_another_kind(cache, pair, tmp_path):
    import skops.io as sio
    from sklearn.preprocessing import StandardScaler

    d = _saved(pair, tmp_path)
    lin, nn = (p.spec.name for p in pair)
    (d / f"{nn}.pt").unlink()
    with pytest.raises(FileNotFoundError, match=rf"lists {nn} but {nn}.pt is missing: refit"):
        load_predictors(d)
    d = _saved(pair, tmp_path / "again")
    _replace_file(d, lin, f"{lin}.skops", sio.dumps(StandardScaler().fit(np.zeros((3, 6)))))
    with pytest.raises(ValueError, match=f"{lin}'s model is a StandardScaler, not a linear classification model"):
        load_predictors(d)
    with pytest.raises(FileNotFoundError, match="fit-predictors"):
        load_predictors(tmp_path / "none")


KILL_SAVE = """
import sys, warnings
warnings.simplefilter("ignore")
from predictors.store import load_predictors, save_predictors
save_predictors(list(load_predictors(sys.argv[1]).values()), sys.argv[2])
"""


def test_a_save_killed_before_its_index_is_refused_whole_then_redone(pair, cache, other_cache, tmp_path):
    """SIGKILL at the fault-injection point between the predictor files and the index (branchy.core.faults): the folder
    never loads a mix of old and new predictors; it is refused naming the file, and a new save mends it."""
    import os
    import subprocess
    import sys

    from branchy.core.faults import ENV

    old = _saved(pair, tmp_path)  # tmp_path / "p": the predictors fitted on `cache`
    new = tmp_path / "new"
    save_predictors([_fit(other_cache, "gate", "linear"), _fit(other_cache, "gate", "nn")], new)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, ENV: "predictors:files-written", "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", KILL_SAVE, str(new), str(old)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    with pytest.raises(ValueError, match="SHA-256"):
        load_predictors(old)
    r = subprocess.run([sys.executable, "-c", KILL_SAVE, str(new), str(old)], env={**env, ENV: ""},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    again = load_predictors(old, other_cache)
    assert set(again) == {p.spec.name for p in pair}
    assert not [f for f in old.iterdir() if f.name.endswith(".tmp")]
