"""docs/architecture.md: no import runs upward (branchy < {predictors, placement} < analysis; predictors and
placement are siblings, neither imports the other)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["branchy", "predictors", "placement", "analysis"]


FLOORS = {"branchy": 0, "predictors": 1, "placement": 1, "analysis": 2}  # siblings share a floor


@pytest.mark.parametrize("pkg", LAYERS)
def test_no_upward_imports(pkg):
    above = {p for p, f in FLOORS.items() if f >= FLOORS[pkg] and p != pkg}  # above, or a sibling
    for f in (ROOT / pkg).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in above, f"{f.relative_to(ROOT)} imports {n}: upward in the layering"


def _module_imports(pkg: str) -> dict[str, set[str]]:
    """Per module of ``pkg`` (dotted name), the modules of the same package it imports, at any depth of the
    file (imports inside functions count: a lazy import is still a dependency)."""
    mods = {}
    for f in (ROOT / pkg).rglob("*.py"):
        rel = f.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        mods[name] = f
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, f in mods.items():
        base = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    stem = base[: len(base) - node.level + 1]
                    mod = ".".join(stem + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for t in targets:
                if t in mods and t != name and t.split(".")[0] == pkg and t != pkg:
                    graph[name].add(t)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


@pytest.mark.parametrize("pkg", LAYERS)
def test_no_import_cycle_inside_a_package(pkg):
    cyc = _cycle(_module_imports(pkg))
    assert cyc is None, f"import cycle in {pkg}: {' -> '.join(cyc)}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


ANALYSIS_FLOORS = ["analysis.core", "analysis.present", "analysis.study", "analysis.deploy", "analysis.cli"]


def test_analysis_subpackages_keep_their_floors():
    """Inside analysis: core < present < study < deploy < cli, no import runs upward (lazy imports included)."""
    def floor(mod: str) -> int | None:
        for i, f in enumerate(ANALYSIS_FLOORS):
            if mod == f or mod.startswith(f + "."):
                return i
        return None

    graph = _module_imports("analysis")
    assert {floor(m) for m in graph if m != "analysis"} == set(range(len(ANALYSIS_FLOORS))), \
        "a module of analysis sits on no floor"
    for mod, deps in graph.items():
        for d in deps:
            if floor(mod) is not None and floor(d) is not None:
                assert floor(d) <= floor(mod), f"{mod} imports {d}: upward inside analysis ({' < '.join(ANALYSIS_FLOORS)})"



BRANCHY_FLOORS = {"branchy.core": 0, "branchy.data": 1, "branchy.models": 1, "branchy.exits": 1,
                  "branchy.train": 2, "branchy.runtime": 2, "branchy.cache": 3}  # equal floors: siblings


def _subpackage(mod: str) -> str | None:
    """``branchy.cache`` for ``branchy.cache.dumping``; None for the package's own top-level files
    (``branchy``, ``branchy.__main__``)."""
    parts = mod.split(".")
    return None if len(parts) < 2 or parts[1].startswith("__") else ".".join(parts[:2])


def _floor_violations(graph: dict[str, set[str]], floors: dict[str, int]) -> list[str]:
    """Every import of ``graph`` that runs upward or sideways between subpackages, or into another subpackage's
    module instead of through its facade."""
    bad = []
    for mod, deps in sorted(graph.items()):
        here = _subpackage(mod)
        for d in sorted(deps):
            there = _subpackage(d)
            if here is None or there is None or there == here:
                continue
            if floors[there] >= floors[here]:
                bad.append(f"{mod} imports {d}: upward or sideways")
            elif d != there:
                bad.append(f"{mod} imports {d}: go through the facade {there}, not into its modules")
    return bad


def test_branchy_subpackages_keep_their_floors():
    """Inside branchy: core < {data, models, exits} < {train, runtime} < cache; no import runs upward or to a
    sibling, and a subpackage reaches another only through its facade (``from ..cache import X``): what a
    sibling needs is that subpackage's API. Lazy imports count."""
    graph = _module_imports("branchy")
    assert {_subpackage(m) for m in graph} - {None} == set(BRANCHY_FLOORS), "a module sits in no subpackage"
    assert {m for m in graph if _subpackage(m) is None} == {"branchy", "branchy.__main__"}, "a stray top-level module"
    assert _floor_violations(graph, BRANCHY_FLOORS) == []


def test_the_floor_check_sees_sideways_upward_and_private_reaches():
    graph = {"branchy.data.load": {"branchy.models"}, "branchy.core.config": {"branchy.cache"},
             "branchy.cache.dumping": {"branchy.train.loop", "branchy.train", "branchy.cache.reader"}}
    assert _floor_violations(graph, BRANCHY_FLOORS) == [
        "branchy.cache.dumping imports branchy.train.loop: go through the facade branchy.train, not into its modules",
        "branchy.core.config imports branchy.cache: upward or sideways",
        "branchy.data.load imports branchy.models: upward or sideways"]
