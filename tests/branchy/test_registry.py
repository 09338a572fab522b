import pytest

from branchy.registry import Registry, UnknownNameError


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
    from branchy.measures import LOWER_IS_CONFIDENT, MEASURES, confidence
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
    assert TARGETS.names() == ["entropy", "exit", "gate", "oracle"]
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

    from branchy import measures

    m = measures.Measure("top2", lambda z: np.sort(measures.softmax(z), -1)[..., -2], False, "probability")
    monkeypatch.setitem(measures.MEASURES._items, "top2", m)
    monkeypatch.setitem(measures.MEASURES._docs, "top2", "second probability")
    assert measures.confidence(np.array([[3.0, 1.0, 0.0]]), "top2").shape == (1,)
    with pytest.raises(ValueError, match="no torch form"):
        measures.confidence_torch(torch.tensor([[3.0, 1.0, 0.0]]), "top2")
