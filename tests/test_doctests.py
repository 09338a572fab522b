"""The examples in the public API's docstrings run and say what they show (``python -m doctest`` semantics)."""
import doctest
import importlib

import pytest

MODULES = ["branchy.core.jsonio", "branchy.core.config", "branchy.core.options", "branchy.core.header", "branchy.core.registry",
           "branchy.cache.arrays",
           "branchy.cache.files", "branchy.exits.rule", "branchy.models.pooling", "placement.selection",
           "analysis.core.paired"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0, f"{name} has no docstring example"
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples in {name} failed (run pytest -s for the diff)"
