"""setup.cfg and the code agree: every third-party module our packages import is declared (install_requires or an
extra), every declared package is used, a package only an extra installs is imported only where it is used, and
its absence is a one-line error naming the extra; the ``dev`` extra holds everything the tests import."""
import ast
import configparser
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["branchy", "predictors", "placement", "analysis"]
# distribution name -> the modules it provides (where they differ from the name)
PROVIDES = {"scikit-learn": {"sklearn"}, "pyyaml": {"yaml"}, "pillow": {"PIL"}, "dask": {"dask", "distributed"},
            "jinja2": {"jinja2", "markupsafe"}}  # jinja2 requires MarkupSafe (its Markup type)
# declared, never imported by name: why they are there
USED_INDIRECTLY = {"onnx": "torch.onnx.export (the onnxruntime backend)",
                   "onnxscript": "torch.onnx.export(dynamo=True) (the onnxruntime backend)",
                   "timm": "attach_exits on timm models (the user's own import; tests importorskip it)",
                   "ipykernel": "the notebook tests' kernel", "ipywidgets": "progress bars in notebooks",
                   "hypothesis": "tests", "pytest": "tests", "jupytext": "tests", "nbclient": "tests",
                   "nbformat": "tests", "psutil": "bench"}


def _requirements() -> dict[str, set[str]]:
    """``{"install_requires" | extra name: {distribution names}}`` from setup.cfg (lower case, no extras/pins)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    out = {"install_requires": cfg["options"]["install_requires"]}
    out.update(cfg["options.extras_require"])
    return {k: {re.split(r"[\[<>=!~; ]", line.strip())[0].lower() for line in v.splitlines() if line.strip()}
            for k, v in out.items()}


def _modules(dist: str) -> set[str]:
    return PROVIDES.get(dist, {dist.replace("-", "_")})


def _imports(folders: list[str]) -> dict[str, list[tuple[str, bool]]]:
    """Third-party top-level module -> [(file, imported at module level)], over ``folders``."""
    own = set(PACKAGES) | {"tests"}
    found: dict[str, list[tuple[str, bool]]] = {}

    def visit(node, path, top):
        for child in ast.iter_child_nodes(node):
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            elif isinstance(child, ast.Call) and getattr(child.func, "id", None) == "require_extra" \
                    and child.args and isinstance(child.args[0], ast.Constant):
                names = [child.args[0].value]  # require_extra("optuna", ...): a lazy import
            for n in names:
                mod = n.split(".")[0]
                if mod not in sys.stdlib_module_names and mod not in own:
                    found.setdefault(mod, []).append((path, top))
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, path, inner)

    for folder in folders:
        for f in (ROOT / folder).rglob("*.py"):
            visit(ast.parse(f.read_text()), str(f.relative_to(ROOT)), True)
    return found


def test_every_import_is_declared_and_every_declaration_is_used():
    req = _requirements()
    declared = {m: d for deps in req.values() for d in deps for m in _modules(d)}
    imported = _imports(PACKAGES)
    undeclared = {m: sorted({f for f, _ in v})[:3] for m, v in imported.items() if m not in declared}
    assert not undeclared, f"imported but not in setup.cfg (install_requires or an extra): {undeclared}"
    runtime = req["install_requires"] | set().union(*(d for k, d in req.items() if k not in ("install_requires", "dev")))
    unused = sorted(d for d in runtime if not _modules(d) & set(imported) and d not in USED_INDIRECTLY)
    assert not unused, f"declared in setup.cfg but imported nowhere in {PACKAGES}: {unused}"


def test_a_package_only_an_extra_installs_is_imported_where_it_is_used():
    """``import branchy, predictors, placement, analysis`` works without any extra: an extra's package is
    imported inside the function that needs it (or through require_extra)."""
    req = _requirements()
    extra_only = {m for k, deps in req.items() if k != "install_requires" for d in deps - req["install_requires"]
                  for m in _modules(d)}
    eager = {m: sorted(f for f, top in v if top) for m, v in _imports(PACKAGES).items() if m in extra_only}
    assert not any(eager.values()), f"an extra's package imported at module level: {eager}"


def test_the_dev_extra_holds_everything_the_tests_import():
    req = _requirements()
    have = {m for d in req["install_requires"] | req["dev"] for m in _modules(d)}
    optional = {"timm"}  # tests importorskip it: absent, they are skipped with the reason
    missing = {m: sorted({f for f, _ in v})[:3] for m, v in _imports(["tests"]).items()
               if m not in have and m not in optional}
    assert not missing, f"tests import what neither install_requires nor the dev extra installs: {missing}"
    assert "timm" not in req["dev"] and "timm" in req["timm"] and "optuna" in req["optuna"]


def test_a_missing_extra_is_a_one_line_setup_error_naming_the_extra(monkeypatch):
    from analysis.cli.base import EXPECTED_ERRORS
    from branchy.core import MissingExtraError, require_extra
    from placement import SearchSpace, search
    from placement.evaluator import connect_scheduler

    absent = "surely_not_installed_xyz"
    with pytest.raises(MissingExtraError) as e:
        require_extra(absent, extra="xyz", purpose="the xyz feature")
    assert str(e.value) == ("the xyz feature needs surely_not_installed_xyz, which is not installed: "
                            "pip install 'branchy-study[xyz]'")
    assert isinstance(e.value, EXPECTED_ERRORS) and isinstance(e.value, ImportError)  # the CLI says it in one line
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    space = SearchSpace(2, ((), ()), (), (1.0, 2.0))
    row = {"accuracy_%": 90.0, "mean_ms": 1.0, "p95_ms": 1.0, "mean_MACs": 1.0}
    with pytest.raises(MissingExtraError, match=r"the nsga2 placement strategy needs optuna, which is not "
                                                r"installed: pip install 'branchy-study\[optuna\]'"):
        search("nsga2", space, lambda p: row, progress=False)
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(MissingExtraError, match=r"needs dask.distributed: pip install 'branchy-study\[cluster\]'"):
        connect_scheduler("tcp://127.0.0.1:1")


def test_a_study_naming_nsga2_without_optuna_fails_before_any_work(monkeypatch):
    import branchy.core.extras as extras
    from analysis.study.placement_config import PlacementConfig
    from branchy.core import MissingExtraError

    real = extras.find_spec
    monkeypatch.setattr(extras, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"nsga2 placement strategy needs optuna.*branchy-study\[optuna\]"):
        PlacementConfig(strategies=("budget", "nsga2"))
    PlacementConfig(strategies=("budget",))  # a study without it never asks
