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
