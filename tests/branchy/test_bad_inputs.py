"""Issue 12 (safety), the branchy side: every bad input is refused in one line that names the bad value and
the fix, before any work (no data loaded, nothing written)."""
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from branchy.core import paths
from branchy.cache import DumpConfig, cache_from_arrays, dump
from branchy.data import DataConfig
from branchy.models import BackboneConfig, build_model, check_options
from branchy.core import check_writable
from branchy.train import load_checkpoint, save_checkpoint
from branchy.core import resolve_device
from branchy.train import TrainConfig, train
from tests.helpers import make_splits, priced_cache, refused as _refused


# ----------------------------------------------------------------------------- 1. TrainConfig
@pytest.mark.parametrize("kw,phrase", [
    (dict(epochs=2.5), "epochs must be a whole number >= 1, got 2.5"),
    (dict(epochs=0), "epochs must be a whole number >= 1, got 0"),
    (dict(epochs=True), "epochs must be a whole number"),
    (dict(batch_size=0), "batch_size must be a whole number >= 1"),
    (dict(batch_size="64"), "batch_size must be a whole number >= 1, got '64'"),
    (dict(lr=0.0), "lr must be a finite number > 0, got 0.0"),
    (dict(lr=-1e-3), "lr must be a finite number > 0"),
    (dict(lr=math.nan), "lr must be a finite number > 0, got nan"),
    (dict(momentum=1.5), "momentum must be a finite number in [0, 1)"),
    (dict(weight_decay=-1.0), "weight_decay must be a finite number >= 0"),
    (dict(augment_shift=-1), "augment_shift must be a whole number >= 0, got -1"),
    (dict(trunk_epochs=-1), "trunk_epochs must be a whole number >= 0"),
    (dict(ensemble_epochs=1.5), "ensemble_epochs must be a whole number >= 0"),
    (dict(seed=-3), "seed must be a whole number >= 0"),
    (dict(exit_weights=(1.0, math.nan, 1.0)), "a NaN or inf weight makes the loss NaN"),
    (dict(exit_weights=(1.0, math.inf, 1.0)), "exit_weights must be finite numbers >= 0"),
    (dict(exit_weights=(1.0, -1.0, 1.0)), "exit_weights must be >= 0"),
    (dict(exit_weights=(0.0, 0.0, 0.0)), "exit_weights are all 0, so nothing would train"),
    (dict(exit_weights=()), "exit_weights is empty"),
    (dict(exit_weights=(1.0, "a", 1.0)), "exit_weights must be numbers"),
    (dict(device="tpu"), "device must be one of auto, cpu, cuda, cuda:N (N a GPU index) or mps, got 'tpu'"),
    (dict(device="cuda:x"), "device must be one of auto, cpu, cuda, cuda:N"),
])
def test_train_config_refuses(kw, phrase):
    base = dict(epochs=1, batch_size=8, device="cpu")
    _refused(ValueError, phrase, TrainConfig, **{**base, **kw})


def test_a_frozen_trunk_scheme_needs_a_trained_trunk_from_somewhere():
    from branchy.train import check_trunk_source

    _refused(ValueError, "scheme 'ic-only' trains exits on a frozen trunk: give trunk_epochs >= 1 or an init_checkpoint "
             "holding a trained trunk, or pass the trained net itself to train()", check_trunk_source,
             TrainConfig(scheme="ic-only"))
    check_trunk_source(TrainConfig(scheme="ic-only", trunk_epochs=1))


@pytest.mark.parametrize("device", ["tpu", "CPU", "", "cuda:"])
def test_resolve_device_names_the_valid_devices(device):
    """Regression: torch.device's RuntimeError escaped as an internal error."""
    _refused(ValueError, "device must be one of auto, cpu, cuda, cuda:N", resolve_device, device)
    _refused(ValueError, f"got {device!r}", DumpConfig, device=device)


@pytest.mark.parametrize("kw,phrase", [
    (dict(exits=(0, -1)), "exits must be block indices"),
    (dict(exits="01"), "exits must be block indices"),
    (dict(options=["depth=20"]), "model options must be a dict"),
    (dict(name="no-such-net"), "unknown model 'no-such-net'; known:"),
    (dict(name="b-resnet", options={"depth": "abc"}), "depth: expected an integer, got 'abc'"),
])
def test_backbone_config_refuses(kw, phrase):
    _refused(ValueError, phrase, BackboneConfig, **kw)


def test_train_config_accepts_numpy_ints_and_good_values():
    cfg = TrainConfig(epochs=np.int64(3), batch_size=16, lr=1e-3, exit_weights=(1.0, 0.0, 0.5))
    assert cfg.epochs == 3
    assert BackboneConfig("b-resnet", exits=(np.int64(1),), options={"depth": "8"}) == \
        BackboneConfig("b-resnet", exits=(1,), options={"depth": 8})


# ----------------------------------------------------------------------------- 4. backbone options
@pytest.mark.parametrize("name,options,phrase", [
    ("b-resnet", {"depth": "abc"}, "b-resnet option depth: expected an integer, got 'abc'; e.g. --option depth=20"),
    ("b-resnet", {"depth": 20.5}, "depth: expected an integer, got 20.5"),
    ("b-resnet", {"depth": True}, "depth: expected an integer, got True"),
    ("b-resnet", {"dept": 20}, "b-resnet has no option 'dept' (its options: depth)"),
    ("b-lenet", {"width": 2}, "b-lenet has no option 'width' (it takes no options)"),
    ("b-resnet", {"num_classes": 3}, "num_classes is not a backbone option of b-resnet: it is set by the data"),
    ("b-resnet", {"exits": [1]}, "it is set by --exits"),
    ("b-alexnet", {"width": "wide"}, "b-alexnet option width: expected a number, got 'wide'"),
    ("b-alexnet", {"width": "nan"}, "width: expected a finite number, got nan"),
    ("torchvision", {"arch": 18}, "torchvision option arch: expected a string, got 18"),
    ("torchvision", {"arch_kwargs": "x"}, "arch_kwargs: expected a mapping"),
    ("no-such-net", {}, "unknown model 'no-such-net'; known:"),
])
def test_backbone_options_are_checked_against_the_builder(name, options, phrase):
    _refused(KeyError if name == "no-such-net" else ValueError, phrase, check_options, name, options)


def test_backbone_and_dataset_options_follow_one_coercion():
    """One set of rules for every option: a bool is only true or false (YAML reads yes/on for the CLI), a
    whole-number string is an int, a comma list splits where a list goes."""
    from branchy.core import typed_options

    def f(*, flag: bool = False, n: int = 1, names: tuple[str, ...] = ("a",), free=None):
        return None

    assert typed_options(f, {"flag": True, "n": "3", "names": "x,y", "free": "z"}, "f") == \
        {"flag": True, "n": 3, "names": ("x", "y"), "free": "z"}
    _refused(ValueError, "f option flag: expected true or false, got 'yes'", typed_options, f, {"flag": "yes"}, "f")
    _refused(ValueError, "f option n: expected an integer, got 2.5", typed_options, f, {"n": 2.5}, "f")


def test_backbone_option_ranges_are_checked_by_the_builder():
    _refused(ValueError, "b-alexnet width must be > 0", build_model, "b-alexnet", width=-1.0)
    _refused(ValueError, "compression in (0, 1]", build_model, "b-densenet", compression=2.0)


def test_string_options_are_converted_to_the_parameters_type():
    assert check_options("b-resnet", {"depth": "56"}) == {"depth": 56}
    assert check_options("b-alexnet", {"width": "0.25"}) == {"width": 0.25}
    assert check_options("torchvision", {"nodes": "layer1,layer2", "final_node": None}) == \
        {"nodes": ["layer1", "layer2"], "final_node": None}
    m = build_model("b-resnet", depth="8", num_classes=3)
    assert m.config.options == {"depth": 8}


def test_configs_are_refused_before_any_data_is_touched(tmp_path):
    data = DataConfig("cifar10", root=str(tmp_path / "nodata"))  # naming a dataset loads nothing
    _refused(ValueError, "dataset mnist5k takes no path", DataConfig, "mnist5k", path="x.npz")
    _refused(ValueError, "dataset mnist5k has no option calib_size; its options: seed, sizes", DataConfig,
             "mnist5k", options={"calib_size": 10})
    _refused(ValueError, "dataset npz needs path", DataConfig, "npz")
    _refused(ValueError, "unknown dataset 'mnist6k'", DataConfig, "mnist6k")
    assert data.loader_options() == {"seed": 0, "root": str(tmp_path / "nodata"), "download": False}
    assert not (tmp_path / "nodata").exists()


@pytest.mark.parametrize("opt,phrase", [
    ("in_memory=maybe", "imagefolder dataset option in_memory: expected true or false, got 'maybe'"),
    ("stats_sample=0", "imagefolder dataset option stats_sample must be a whole number >= 1, got 0"),
    ("image_size=-5", "imagefolder dataset option image_size must be a whole number >= 1, got -5"),
    ("image_size=2.5", "imagefolder dataset option image_size: expected an integer, got 2.5"),
    ("fractions=[0.6,0.2]", "imagefolder dataset option fractions must be three positive shares"),
])
def test_data_options_are_typed_like_every_setting(tmp_path, opt, phrase):
    """Issue 23: --data-option values are read by the rules of every config field and checked by the loader's
    ranges when the config is made: nothing is listed, decoded or downloaded."""
    import argparse

    import yaml

    from branchy.core import ConfigError, add_arguments, from_arguments, from_mapping

    parser = argparse.ArgumentParser()
    add_arguments(parser, DataConfig)
    ns = parser.parse_args(["--dataset", "imagefolder", "--data-root", str(tmp_path / "nodata"), "--data-option", opt])
    msg = _refused(ValueError, phrase, from_arguments, DataConfig, ns)
    assert not msg.startswith("--dataset")  # not blamed on the --dataset flag
    key, value = opt.split("=")
    raw = {"dataset": "imagefolder", "root": str(tmp_path / "nodata"), "options": {key: yaml.safe_load(value)}}
    _refused(ConfigError, f"data: {phrase}", from_mapping, DataConfig, raw, "data")
    assert not (tmp_path / "nodata").exists()


def test_data_options_reach_the_loader_converted():
    cfg = DataConfig("imagefolder", root="x", options={"in_memory": False, "image_size": "16", "stats_sample": 7.0,
                                                       "fractions": "0.8,0.1,0.1"})
    assert cfg.options["image_size"] == "16"  # the config keeps what was given (its equality is unchanged)
    assert {k: v for k, v in cfg.loader_options().items() if k in cfg.options} == \
        {"in_memory": False, "image_size": 16, "stats_sample": 7, "fractions": (0.8, 0.1, 0.1)}
    assert DataConfig("mnist5k-c", options={"sizes": [150, 100, 100]}).loader_options()["sizes"] == (150, 100, 100)
    assert DataConfig("cifar10", options={"calib_size": "100"}).loader_options()["calib_size"] == 100
    _refused(ValueError, "cifar10 dataset option calib_size must be a whole number >= 1, got 0", DataConfig,
             "cifar10", options={"calib_size": 0})
    _refused(ValueError, "cifar10 dataset option download: expected true or false, got 'sure'", DataConfig,
             "cifar10", download="sure")


# ----------------------------------------------------------------------------- 5. checkpoints
def _pickle_of_other_objects(p: Path) -> Path:
    torch.save({"where": Path("/x")}, p)  # a pickled Python object that is not a tensor
    return p


@pytest.mark.parametrize("make,exc,phrase", [
    (lambda d: (d / "a.txt").write_text("hello, I am text\n") and d / "a.txt", ValueError,
     "is not a readable branchy checkpoint (torch could not read it as weights"),
    (lambda d: (d / "e.pt").write_bytes(b"") or d / "e.pt", ValueError, "the file is empty or cut short"),
    (lambda d: (d / "g.pt").write_bytes(os.urandom(64)) and d / "g.pt", ValueError,
     "give a file written by `branchy train`"),
    (lambda d: _pickle_of_other_objects(d / "o.pt"), ValueError,
     "it holds Python objects that are not tensors or plain data"),
    (lambda d: (d / "p.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=4)) and d / "p.pkl", ValueError,
     "give a file written by `branchy train`"),
    (lambda d: torch.save({"a": torch.zeros(2)}, d / "s.pt") or d / "s.pt", ValueError,
     "is not a branchy checkpoint (no 'branchy-checkpoint' header)"),
    (lambda d: torch.save({"format": "branchy-checkpoint", "version": 1}, d / "k.pt") or d / "k.pt", ValueError,
     "is an incomplete branchy checkpoint (no model_config, state_dict, fingerprint)"),
    (lambda d: torch.save({"format": "branchy-checkpoint", "version": 1, "model_config": {"name": "b-lenet"},
                           "state_dict": {}, "fingerprint": "x"}, d / "c.pt") or d / "c.pt", ValueError,
     "is a damaged branchy checkpoint (its model_config lacks or garbles"),
    (lambda d: d / "missing.pt", FileNotFoundError, "no checkpoint at"),
    (lambda d: d, FileNotFoundError, "is a folder: give the model.pt inside it"),
])
def test_not_a_checkpoint_is_refused_without_torch_advice(tmp_path, make, exc, phrase):
    _refused(exc, phrase, load_checkpoint, make(tmp_path))


def test_a_real_checkpoint_still_loads(tmp_path):
    p = save_checkpoint(build_model("b-lenet", num_classes=3), tmp_path / "m.pt")
    model, meta = load_checkpoint(p)
    assert model.config.num_classes == 3 and meta["format"] == "branchy-checkpoint"


# ----------------------------------------------------------------------------- 6. output locations
@pytest.fixture
def a_file(tmp_path) -> Path:
    f = tmp_path / "notes.txt"
    f.write_text("x")
    return f


def test_output_under_a_file_is_refused(tmp_path, a_file):
    _refused(NotADirectoryError, f"is under the file '{a_file}', not a folder", check_writable, a_file / "run" / "x")
    _refused(NotADirectoryError, "is a file, not a folder", check_writable, a_file, folder=True)
    _refused(NotADirectoryError, "is under the file", save_checkpoint, build_model("b-lenet"), a_file / "m.pt")
    _refused(IsADirectoryError, "is a folder: give a file name such as", save_checkpoint, build_model("b-lenet"),
             tmp_path)
    cfg, data = TrainConfig(epochs=1, device="cpu"), DataConfig("cifar10", root=str(tmp_path / "nodata"))
    _refused(NotADirectoryError, "is under the file", train, cfg, BackboneConfig(), data, out_dir=a_file / "run",
             progress=False)
    assert not (tmp_path / "nodata").exists()


def test_writable_locations_pass_and_leave_nothing(tmp_path):
    assert check_writable(tmp_path / "new" / "deeper", folder=True) == tmp_path / "new" / "deeper"
    assert check_writable(tmp_path / "m.pt") == tmp_path / "m.pt"
    assert list(tmp_path.iterdir()) == []  # the probe is removed, nothing is created


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions; the monkeypatched test covers it")
def test_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        _refused(PermissionError, f"the folder '{ro}' is not writable", check_writable, ro / "cache")
        _refused(PermissionError, "is not writable", save_checkpoint, build_model("b-lenet"), ro / "x" / "m.pt")
    finally:
        ro.chmod(0o755)


def test_read_only_location_is_refused_monkeypatched(tmp_path, monkeypatch):
    def refuse(*a, **kw):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(paths.tempfile, "mkstemp", refuse)
    msg = _refused(PermissionError, f"the folder '{tmp_path}' is not writable (Read-only file system)",
                   check_writable, tmp_path / "out" / "cache")
    assert "choose another location" in msg
    _refused(PermissionError, "is not writable", save_checkpoint, build_model("b-lenet"), tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


# ----------------------------------------------------------------------------- 2. dump arguments
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("b-lenet", num_classes=3), make_splits(n=(6, 3, 3), classes=3)


@pytest.mark.parametrize("kw,phrase", [
    (dict(feature_dtype="int8"), "feature_dtype must be one of float16, float32, float64, got 'int8'"),
    (dict(feature_dtype="uint16"), "would truncate or garble the features"),
    (dict(feature_dtype="garbage"), "got 'garbage'"),
    (dict(profile_time=-1.0), "profile_time must be a finite number of seconds > 0, got -1.0"),
    (dict(profile_time=math.nan), "profile_time must be a finite number"),
    (dict(batch_size=0), "batch_size must be a whole number >= 1, got 0"),
    (dict(batch_size=2.5), "batch_size must be a whole number >= 1, got 2.5"),
    (dict(pooling="max"), "unknown pooling 'max'"),
])
def test_dump_refuses_bad_arguments_before_any_work(tiny, tmp_path, kw, phrase):
    model, splits = tiny
    out = tmp_path / "sub" / "cache"
    _refused(ValueError, phrase, dump, model, splits, out, device="cpu", progress=False, **kw)
    assert not (tmp_path / "sub").exists()  # no lock file, no partial folder


def test_dump_under_a_file_is_refused(tiny, a_file):
    model, splits = tiny
    _refused(NotADirectoryError, "is under the file", dump, model, splits, a_file / "cache", device="cpu",
             progress=False)


# ----------------------------------------------------------------------------- 3. cache_from_arrays
def _arrays(n=6, k=2, c=3, d=2, seed=0) -> dict:
    g = np.random.default_rng(seed)
    return {sp: (g.integers(0, c, n), g.normal(size=(n, k, c)).astype(np.float32),
                 [g.normal(size=(n, d)) for _ in range(k)]) for sp in ("train", "calib", "test")}


def _spoil(split: str, what: str, change):
    """``_arrays()`` with ``change(array)`` applied to one split's labels, logits or features (a list)."""
    def make():
        data = _arrays()
        y, z, f = data[split]
        parts = {"labels": y, "logits": z, "features": f}
        parts[what] = change(parts[what])
        data[split] = (parts["labels"], parts["logits"], parts["features"])
        return data
    return make


def _set(idx, value):
    def change(a):
        a = np.array(a)
        a[idx] = value
        return a
    return change


@pytest.mark.parametrize("make,phrase", [
    (_spoil("calib", "labels", _set(0, 3)),
     "calib: 1 labels are outside 0..2 (C=3 from the logits' last dimension), e.g. 3"),
    (_spoil("test", "labels", _set(1, -1)), "test: 1 labels are outside 0..2"),
    (_spoil("train", "labels", lambda y: y.astype(float)),
     "train: labels must be integer class indices 0..2, got dtype float64"),
    (_spoil("train", "logits", _set((0, 0, 0), np.nan)), "train: 1 logits are NaN or infinite"),
    (_spoil("test", "logits", _set((2, 1, 1), -np.inf)), "test: 1 logits are NaN or infinite"),
    (_spoil("calib", "features", lambda f: [f[0], _set((0, 0), np.nan)(f[1])]),
     "calib: features of exit 1 hold 1 NaN or infinite values"),
    (_spoil("train", "labels", lambda y: y[:-1]),
     "train: want labels [N], logits [N, K, C] and K feature arrays; got (5,), (6, 2, 3)"),
    (_spoil("test", "features", lambda f: [f[0][:-1], f[1]]),
     "test: features of exit 0 must be [N, D] with N=6, got (5, 2)"),
    (_spoil("test", "features", lambda f: [f[0], np.zeros((6, 4))]),
     "test: features of exit 1 have D=4, the train split's D=2"),
    (_spoil("calib", "logits", lambda z: z[:, :, :2]),
     "calib: logits (6, 2, 2) disagree with the other splits' K=2, C=3"),
    (lambda: {"train": _arrays()["train"]}, "needs every split"),
])
def test_cache_from_arrays_refuses_bad_arrays(tmp_path, make, phrase):
    out = tmp_path / "cache"
    _refused(ValueError, phrase, cache_from_arrays, out, make())
    assert list(tmp_path.iterdir()) == []  # refused before the lock and the partial folder


def test_cache_from_arrays_still_writes_good_arrays(tmp_path):
    cache = priced_cache(tmp_path / "cache", _arrays())
    assert cache.manifest["num_classes"] == 3


def test_a_cache_without_costs_refuses_to_be_priced_and_says_how(tmp_path):
    """cache_from_arrays without costs= used to price every segment with made-up unit costs, and `measured` then
    printed ms and speed-ups that meant nothing; now accuracy works and any latency profile is refused."""
    from analysis.core.costs import CostModel

    cache = cache_from_arrays(tmp_path / "bare", _arrays())
    assert cache.manifest["costs_source"] == "none" and len(cache.table("test"))
    for profile in ("measured", "raspberry-pi-4"):
        _refused(ValueError, "holds no costs (written from arrays without costs=): its latency cannot be simulated; "
                 "write it again with cache_from_arrays(..., costs=branchy.cache.cost_table(", CostModel.from_cache,
                 cache, profile)


def test_cost_table_prices_what_it_is_given_and_refuses_what_it_is_not(tmp_path):
    from analysis.core.costs import CostModel
    from branchy.cache import cost_table

    k = _arrays()["train"][1].shape[1]
    timed = cache_from_arrays(tmp_path / "ms", _arrays(), costs=cost_table(k, stage_ms=[1.0, 2.0, 3.0][:k],
                                                                           exit_ms=0.5, buffer_ms=0.0))
    np.testing.assert_allclose(CostModel.from_cache(timed, "measured").stage_ms, [1.0, 2.0, 3.0][:k])
    _refused(ValueError, "records no MACs for every stage and exit, so the modelled profile 'raspberry-pi-4'",
             CostModel.from_cache, timed, "raspberry-pi-4")
    counted = cache_from_arrays(tmp_path / "macs", _arrays(), costs=cost_table(k, stage_macs=2e6, exit_macs=1e5))
    rpi = CostModel.from_cache(counted, "raspberry-pi-4")
    assert np.all(rpi.stage_ms > 0)
    _refused(ValueError, "has no measured latency", CostModel.from_cache, counted, "measured")
    _refused(ValueError, f"stage_ms: give one number >= 0 or {k} (one per exit)", cost_table, k, stage_ms=[1.0] * (k + 1))
    _refused(ValueError, "exit_ms: give one number >= 0", cost_table, k, stage_ms=1.0, exit_ms=-1.0)
