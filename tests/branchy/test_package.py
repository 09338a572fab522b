"""branchy's facades: every subpackage's public names import, the 0.2 module paths still work (with a warning),
and a facade's name is never shadowed by a submodule of the same name."""
import importlib
import subprocess
import sys

import pytest

import branchy

SUBPACKAGES = ["core", "data", "models", "exits", "train", "runtime", "cache"]


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_every_public_name_of_a_facade_imports(sub):
    pkg = importlib.import_module(f"branchy.{sub}")
    for name in pkg.__all__:
        value = getattr(pkg, name)
        assert not (hasattr(value, "__path__") or type(value).__name__ == "module"), f"branchy.{sub}.{name} is a module"


def test_top_level_names_import():
    for name in branchy.__all__:
        assert getattr(branchy, name) is not None


def test_every_old_module_path_imports_the_new_module_with_a_warning():
    """In a fresh process (nothing imported yet), each 0.2 path warns, naming the new place, and is that module."""
    code = ("import warnings, importlib, sys, branchy\n"
            "for old, new in branchy.MOVED.items():\n"
            "    with warnings.catch_warnings(record=True) as w:\n"
            "        warnings.simplefilter('always')\n"
            "        m = importlib.import_module('branchy.' + old)\n"
            "    said = [str(x.message) for x in w if x.category is DeprecationWarning]\n"
            "    assert said == [f'branchy.{old} moved to branchy.{new}; import it from there (or from its package)'], said\n"
            "    assert m is sys.modules['branchy.' + old] is importlib.import_module('branchy.' + new)\n"
            "print(len(branchy.MOVED))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(len(branchy.MOVED))


def test_dump_is_the_function_after_its_module_is_imported():
    code = ("import branchy.cache.dumping, branchy.cache.reprofiling; from branchy.cache import dump, reprofile; "
            "assert callable(dump) and callable(reprofile) and dump.__module__ == 'branchy.cache.dumping'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_an_unknown_name_is_an_attribute_error_that_names_it():
    with pytest.raises(AttributeError, match="'branchy.cache' has no attribute 'nope'"):
        importlib.import_module("branchy.cache").nope
