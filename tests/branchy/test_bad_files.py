"""Hostile and broken input files (issue 12): bad ``.npz`` datasets fail at load time with one-line messages,
and ``thresholds.json`` is standard JSON. (The report's escaping: tests/analysis/test_report.py;
``placement.json``: tests/placement/test_placement.py.)"""
import json
import pickle
import traceback

import numpy as np
import pytest

from branchy.data import load_dataset, min_per_class
from branchy.core import json_float, write_json
from branchy.exits import ExitRule
from tests.helpers import no_json_constants

G = np.random.default_rng(0)


def _img(n, *shape, dtype=np.float32):
    return G.random((n, *shape)).astype(dtype)


def _labels(n, classes=4):
    return np.arange(n) % classes


def _savez(**arrays):
    return lambda p: np.savez(p, **arrays)


def _raw(data: bytes):
    return lambda p: p.write_bytes(data)


def _npy(p):
    with open(p, "wb") as f:
        np.save(f, _img(20, 8, 8))


def _pickled(p):
    with open(p, "wb") as f:
        pickle.dump({"x": _img(20, 8, 8), "y": _labels(20)}, f)


def _nan_at(v):
    x = _img(20, 8, 8)
    x[3, 2, 2] = v
    return x


CASES = [  # id, writer, kwargs, exception, phrase of the message
    ("zero-samples", _savez(x=np.zeros((0, 8, 8), np.float32), y=np.zeros(0, np.int64)), {}, ValueError,
     "holds 0 samples"),
    ("single-class", _savez(x=_img(20, 8, 8), y=np.full(20, 7)), {}, ValueError,
     "y holds a single class (7)"),
    ("too-few-per-class", _savez(x=_img(16, 8, 8), y=_labels(16)), {}, ValueError,
     "needs at least 5 samples per class; 4 class(es) have fewer: 0 (4)"),
    ("too-few-one-class", _savez(x=_img(21, 8, 8), y=np.r_[np.zeros(18, int), 1, 1, 1]), {}, ValueError,
     "1 class(es) have fewer: 1 (3)"),
    ("channels-ambiguous", _savez(x=_img(20, 3, 8, 3), y=_labels(20)), {}, ValueError,
     "could be [N, C, H, W] or channels-last [N, H, W, C]"),
    ("bad-layout", _savez(x=_img(20, 8, 8, 3), y=_labels(20), layout="HWC"), {}, ValueError,
     "layout must be 'NCHW' or 'NHWC'"),
    ("nan", _savez(x=_nan_at(np.nan), y=_labels(20)), {}, ValueError, "NaN or infinite values in 1 of 20"),
    ("inf", _savez(x=_nan_at(np.inf), y=_labels(20)), {}, ValueError, "NaN or infinite values in 1 of 20"),
    ("float-labels", _savez(x=_img(20, 8, 8), y=_labels(20).astype(float)), {}, ValueError,
     "y must hold integer class labels"),
    ("negative-labels", _savez(x=_img(20, 8, 8), y=_labels(20) - 1), {}, ValueError,
     "labels must be 0..C-1, found -1"),
    ("one-hot-labels", _savez(x=_img(20, 8, 8), y=np.eye(4, dtype=int)[_labels(20)]), {}, ValueError,
     "not one-hot"),
    ("length-mismatch", _savez(x=_img(20, 8, 8), y=_labels(19)), {}, ValueError,
     "x holds 20 samples but y holds 19 labels"),
    ("missing-y", _savez(x=_img(20, 8, 8), labels=_labels(20)), {}, ValueError,
     "missing ['y'], found ['labels', 'x']"),
    ("missing-both", _savez(images=_img(20, 8, 8)), {}, ValueError, "missing ['x', 'y'], found ['images']"),
    ("string-x", _savez(x=np.full((20, 8, 8), "a"), y=_labels(20)), {}, ValueError, "x must hold numbers"),
    ("object-x", _savez(x=np.array([None] * 20, dtype=object), y=_labels(20)), {}, ValueError,
     "array 'x' holds Python objects"),
    ("garbage", _raw(b"this is not a zip file\n" * 20), {}, ValueError, "not an .npz archive"),
    ("pickled", _pickled, {}, ValueError, "not an .npz archive"),
    ("empty-file", _raw(b""), {}, ValueError, "not a readable .npz archive"),
    ("broken-zip", _raw(b"PK\x03\x04" + b"\0" * 40), {}, ValueError, "not a readable .npz archive"),
    ("npy-not-npz", _npy, {}, ValueError, "holds a single array"),
    ("bad-fractions", _savez(x=_img(20, 8, 8), y=_labels(20)), {"fractions": (0.5, 0.5, 0.5)}, ValueError,
     "fractions must be three positive shares"),
]


@pytest.mark.parametrize("writer,kwargs,exc,phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_npz_is_refused_at_load_with_one_line(tmp_path, writer, kwargs, exc, phrase):
    p = tmp_path / "data.npz"
    writer(p)
    with pytest.raises(exc) as info:
        load_dataset("npz", path=p, **kwargs)
    msg = str(info.value)
    assert phrase in msg
    assert "\n" not in msg and str(p) in msg
    shown = "".join(traceback.format_exception(info.value))  # what the user sees, chained errors included
    assert "allow_pickle" not in shown and "pickle.load" not in shown


def test_min_per_class():
    assert min_per_class((0.6, 0.2, 0.2)) == 5
    assert min_per_class((0.8, 0.1, 0.1)) == 10


def test_npz_exactly_enough_per_class_loads(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=_img(20, 8, 8), y=_labels(20))  # 5 per class: the least the split accepts
    s = load_dataset("npz", path=p)
    assert s.info.num_classes == 4 and sum(s.sizes().values()) == 20
    for split in ("train", "calib", "test"):
        assert set(s[split].y.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("c", [1, 3])
def test_npz_channels_last_is_transposed_with_a_warning(tmp_path, c):
    p = tmp_path / "d.npz"
    x = G.integers(0, 255, (20, 8, 6, c), dtype=np.uint8)
    np.savez(p, x=x, y=_labels(20))
    with pytest.warns(UserWarning, match="channels-last"):
        s = load_dataset("npz", path=p)
    assert s.info.input_shape == (c, 8, 6)
    both = np.concatenate([s[k].x.numpy() for k in ("train", "calib", "test")])
    ref = {r.tobytes() for r in x.transpose(0, 3, 1, 2)}
    assert {r.tobytes() for r in both} == ref  # the images themselves, moved, not reshaped


@pytest.mark.parametrize("file_layout,arg,shape", [("NHWC", None, (3, 3, 8)), ("NCHW", None, (3, 8, 3)),
                                                   (None, "NHWC", (3, 3, 8)), ("NHWC", "nchw", (3, 8, 3))])
def test_npz_ambiguous_layout_is_settled_by_layout(tmp_path, file_layout, arg, shape):
    p = tmp_path / "d.npz"
    extra = {} if file_layout is None else {"layout": file_layout}
    np.savez(p, x=_img(20, 3, 8, 3), y=_labels(20), **extra)
    s = load_dataset("npz", path=p, layout=arg)
    assert s.info.input_shape == shape


def test_npz_channels_first_is_left_alone(tmp_path, recwarn):
    p = tmp_path / "d.npz"
    np.savez(p, x=_img(20, 3, 8, 8), y=_labels(20))
    assert load_dataset("npz", path=p).info.input_shape == (3, 8, 8)
    assert not [w for w in recwarn if "channels-last" in str(w.message)]


# ----------------------------------------------------------------------------- thresholds.json
@pytest.mark.parametrize("rule", [
    ExitRule("entropy", (np.inf, -np.inf, 0.25, 0.0), "given", "calib"),
    ExitRule("max_prob", (-np.inf, np.inf, 0.7, 0.0), "target-acc 99% sequential", "calib"),
])
def test_thresholds_json_is_standard_and_round_trips(tmp_path, rule):
    p = rule.save(tmp_path / "thresholds.json")
    text = p.read_text()
    d = json.loads(text, parse_constant=no_json_constants)  # no Infinity / NaN literals
    json.dumps(d, allow_nan=False)
    assert "Infinity" not in text and {"inf", "-inf"} <= set(map(str, d["thresholds"]))
    back = ExitRule.load(p)
    assert back == rule and back.thresholds == rule.thresholds
    assert np.isposinf(back.thresholds[0]) == np.isposinf(rule.thresholds[0])


def test_thresholds_json_old_infinity_form_still_reads(tmp_path):
    rule = ExitRule("entropy", (np.inf, -np.inf, 0.5), "given", "calib")
    p = tmp_path / "thresholds.json"
    p.write_text(json.dumps(rule.to_dict()))  # the old writer: bare Infinity / -Infinity
    assert "-Infinity" in p.read_text()
    assert ExitRule.load(p) == rule


@pytest.mark.parametrize("value,exc,phrase", [("nan", ValueError, "NaN"), ("big", ValueError, "not a number"),
                                              (True, ValueError, "not a number")])
def test_thresholds_json_bad_values(tmp_path, value, exc, phrase):
    p = tmp_path / "thresholds.json"
    write_json(p, {"measure": "entropy", "thresholds": [value, 1.0]})
    with pytest.raises(exc, match=phrase):
        ExitRule.load(p)


def test_json_float():
    assert json_float("-inf") == -np.inf and json_float("Infinity") == np.inf and json_float(2) == 2.0
