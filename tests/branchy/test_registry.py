import os
import subprocess
import sys
from pathlib import Path

import pytest

from branchy.core import Registry, UnknownNameError

ROOT = Path(__file__).resolve().parents[2]


def test_register_get_names_and_duplicates():
    r = Registry("thing")

    @r.register("a", doc="the a")
    def a():
        return 1

    r.register("B", lambda: 2)
    assert r.names() == ["a", "b"]
    assert r.get("A")() == 1
    assert r.describe()["a"] == "the a"
    with pytest.raises(ValueError, match="already registered"):
        r.register("a", lambda: 3)
    with pytest.raises(UnknownNameError, match="unknown thing 'zzz'; known: a, b"):
        r.get("zzz")


def test_measures_and_targets_are_registries_the_cli_lists(capsys):
    import numpy as np

    from analysis.cli import build_parser
    from branchy.exits import LOWER_IS_CONFIDENT, MEASURES, confidence
    from predictors.targets import TARGETS

    assert MEASURES.names() == ["entropy", "margin", "max_prob", "norm_entropy"]
    assert LOWER_IS_CONFIDENT == {"entropy": True, "margin": False, "max_prob": False, "norm_entropy": True}
    z = np.array([[2.0, 0.0, -1.0]])
    p = np.exp(z) / np.exp(z).sum()
    np.testing.assert_allclose(confidence(z, "entropy"), -(p * np.log(p)).sum())
    np.testing.assert_allclose(confidence(z, "norm_entropy"), -(p * np.log(p)).sum() / np.log(3))
    np.testing.assert_allclose(confidence(z, "margin"), np.sort(p[0])[-1] - np.sort(p[0])[-2])
    with pytest.raises(ValueError, match="unknown confidence measure 'ENTROPY'"):
        confidence(z, "ENTROPY")
    assert TARGETS.names() == ["entropy", "exit", "gate", "leave", "oracle"]
    parser = build_parser()
    a = parser.parse_args(["simulate", "--cache", "c", "--out", "o", "--measure", "norm_entropy"])
    assert getattr(a, "PolicyConfig.measure") == "norm_entropy"
    a = parser.parse_args(["fit-predictors", "--cache", "c", "--out", "o", "--target", "oracle,gate"])
    assert getattr(a, "PredictorsConfig.targets") == ("oracle", "gate")
    for cmd, flag, known in (("simulate", "--measure", MEASURES.names()), ("fit-predictors", "--target",
                                                                             TARGETS.names())):
        with pytest.raises(SystemExit):
            parser.parse_args([cmd, "--cache", "c", "--out", "o", flag, "bogus"])
        assert f"unknown value 'bogus'; known: {', '.join(known)}" in capsys.readouterr().err


def test_a_measure_without_a_torch_form_is_refused_by_the_runtime_not_computed_as_another(monkeypatch):
    import numpy as np
    import torch

    from branchy.exits import measures

    m = measures.Measure("top2", lambda z: np.sort(measures.softmax(z), -1)[..., -2], False, "probability")
    monkeypatch.setitem(measures.MEASURES._items, "top2", m)
    monkeypatch.setitem(measures.MEASURES._docs, "top2", "second probability")
    assert measures.confidence(np.array([[3.0, 1.0, 0.0]]), "top2").shape == (1,)
    with pytest.raises(ValueError, match="no torch form"):
        measures.confidence_torch(torch.tensor([[3.0, 1.0, 0.0]]), "top2")


def _install_plugin(root, group: str, name: str, target: str, module_text: str) -> None:
    """A fake installed distribution on ``root`` (a sys.path entry) with one entry point."""
    (root / "myplugin.py").write_text(module_text)
    info = root / "myplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {target}\n")


def _run_beside(root, code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python whose path holds ``root`` (where the fake plugin is installed)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{ROOT}"})


def test_an_installed_plugin_adds_a_dataset_and_a_backbone(tmp_path):
    """A package with entry points in ``branchy.datasets`` / ``branchy.models`` adds its names on first use,
    as a module that registers (dataset) or as an object registered under the entry point's name (backbone)."""
    _install_plugin(tmp_path, "branchy.datasets", "tiny", "myplugin", (
        "from branchy.data import register_dataset\n"
        "@register_dataset('tiny')\n"
        "def tiny(*, seed: int = 0):\n    'four digits'\n    return seed\n"
        "def net(*, in_channels, image_size, num_classes, exits=None, width: int = 2):\n    'a plugin net'\n"
        "    return width\n"))
    with open(tmp_path / "myplugin-0.1.dist-info" / "entry_points.txt", "a") as f:
        f.write("[branchy.models]\nplug-net = myplugin:net\n")
    code = ("from branchy.data import list_datasets, load_dataset\nfrom branchy.models import list_models, check_options\n"
            "assert 'tiny' in list_datasets() and load_dataset('tiny', seed='3') == 3\n"
            "assert 'plug-net' in list_models() and check_options('plug-net', {'width': '4'}) == {'width': 4}\n"
            "print('ok')")
    out = _run_beside(tmp_path, code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def _plugin_warnings(root, setup: str, call: str) -> str:
    """The warnings ``call`` gives (after ``setup``) in a fresh Python beside the fake plugin, one per line."""
    code = (f"import warnings\n{setup}\nwith warnings.catch_warnings(record=True) as w:\n"
            f"    warnings.simplefilter('always')\n    {call}\nprint(*[str(x.message) for x in w], sep='\\n')")
    out = _run_beside(root, code)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_broken_plugin_is_one_warning_and_the_rest_works(tmp_path):
    _install_plugin(tmp_path, "branchy.datasets", "broken", "myplugin", "raise ImportError('no such thing')\n")
    said = _plugin_warnings(tmp_path, "from branchy.data import list_datasets", "assert 'mnist5k' in list_datasets()")
    assert "dataset plugin 'broken' (myplugin, group branchy.datasets) did not load: ImportError: no such thing" \
        in said


def test_a_plugin_whose_name_is_taken_is_one_warning_and_the_built_in_wins(tmp_path):
    _install_plugin(tmp_path, "branchy.models", "b-lenet", "myplugin:net",
                    "def net(*, in_channels, image_size, num_classes, exits=None):\n    return None\n")
    said = _plugin_warnings(tmp_path, "from branchy.models import BACKBONES",
                            "assert BACKBONES.get('b-lenet').__module__ == 'branchy.models.zoo'")
    assert "model plugin 'b-lenet' (myplugin:net, group branchy.models) did not load: ValueError: model 'b-lenet' " \
           "is already registered" in said
