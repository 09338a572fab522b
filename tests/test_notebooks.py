"""The four notebooks: each .ipynb is in sync with its jupytext .py, and all run, in order, on tiny
settings (BRANCHY_NB_SMALL=1) with the Agg backend."""
import os
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.py"))


def test_four_notebooks_paired():
    assert [p.stem for p in NOTEBOOKS] == ["01_cache_features", "02_train_predictors", "03_placement_search",
                                           "04_latency_vs_accuracy"]
    for py in NOTEBOOKS:
        ipynb = py.with_suffix(".ipynb")
        assert ipynb.exists(), f"{ipynb.name} missing: run `jupytext --sync {py}`"
        a = [c.source for c in jupytext.read(py).cells]
        b = [c.source for c in nbformat.read(ipynb, as_version=4).cells]
        assert a == b, f"{ipynb.name} is out of sync with {py.name}: run `jupytext --sync {py}`"


@pytest.mark.slow
def test_notebooks_execute_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("BRANCHY_NB_SMALL", "1")
    monkeypatch.setenv("BRANCHY_NB_OUT", str(tmp_path / "nb"))
    # the inline backend renders with Agg and sends the PNG to the notebook
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for py in NOTEBOOKS:
        nb = jupytext.read(py)
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
        images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
        assert images >= 1, f"{py.name} showed no plot"
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors
        streams = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                          if o.get("output_type") == "stream")
        assert "IProgress not found" not in streams, f"{py.name}: progress bars fell back to text (ipywidgets?)"
