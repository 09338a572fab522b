"""DESIGN.md §2: no import runs upward (branchy < predictors < placement < analysis)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["branchy", "predictors", "placement", "analysis"]


@pytest.mark.parametrize("pkg", LAYERS)
def test_no_upward_imports(pkg):
    above = set(LAYERS[LAYERS.index(pkg) + 1 :])
    for f in (ROOT / pkg).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in above, f"{f.relative_to(ROOT)} imports {n}: upward in the layering"
