"""A finished study read back from its run folder (what ``branchy report --run DIR`` renders): the config it ran
(``study.yaml``), its cache, exit rule, predictors, tables and chosen placements, with nothing recomputed."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .result import StudyResult

__all__ = ["RunFolderError", "load_run"]


class RunFolderError(ValueError):
    """A run folder that is not a finished study (a part is missing)."""


def _csv(path: Path) -> pd.DataFrame | None:
    """A table the study wrote, or None where it wrote none (an empty file is an empty table)."""
    if not path.exists():
        return None
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _need(run: Path, rel: str, made_by: str) -> Path:
    p = run / rel
    if not p.exists():
        raise RunFolderError(f"{run} is not a finished study: {rel} is missing (written by {made_by}); run the study "
                             f"again with `branchy run --config {run / 'study.yaml'}` (finished steps are reused)")
    return p


def _placements(run: Path, cfg, cache) -> dict:
    """``{strategy: (SearchResult, comparison)}`` of every strategy the config ran that left a folder."""
    from placement import Placement
    from placement.search import SearchResult

    out = {}
    for strategy in cfg.placement.strategies:
        d = run / "placement" / strategy
        if not (d / "placement.json").exists():
            continue
        table = _csv(d / "candidates.csv")
        table = table if table is not None else pd.DataFrame()
        compare = _csv(d / "comparison.csv")
        full = compare[(compare.policy == "full") & (compare.split == "calib")]["accuracy_%"] \
            if compare is not None and {"policy", "split"} <= set(compare.columns) else pd.Series(dtype=float)
        res = SearchResult(strategy=strategy, chosen=Placement.load(d / "placement.json"), table=table,
                           full_accuracy=float(full.iloc[0]) if len(full) else float("nan"),
                           constraint=cfg.placement.constraint)
        out[strategy] = (res, compare if compare is not None else pd.DataFrame())
    return out


def _simulation(run: Path) -> dict:
    sim = run / "simulate"
    explained = sim / "gate_sentences.json"
    return {"summary": pd.read_csv(_need(run, "simulate/summary.csv", "the simulate step")),
            "pareto": _csv(sim / "pareto.csv"), "gates": _csv(sim / "gates.csv"),
            "breakeven": _csv(sim / "breakeven.csv"),
            "explained": json.loads(explained.read_text()) if explained.exists() else {}}


def load_run(run: str | Path) -> StudyResult:
    """The study that wrote folder ``run``, as :func:`analysis.study.pipeline.run_study` returned it (predictors
    loaded and checked against the cache; the real-run and reference tables where the study made them)."""
    from branchy.cache import FeatureCache
    from branchy.exits import ExitRule
    from predictors.store import load_predictors

    from .config import load_study

    run = Path(run)
    if not run.is_dir():
        raise RunFolderError(f"{run} is not a folder: give the study's output folder (its `out:`), e.g. runs/demo")
    cfg = load_study(_need(run, "study.yaml", "every study"))
    cache = FeatureCache.open(_need(run, "cache", "the dump step"))
    rule = ExitRule.load(_need(run, "simulate/thresholds.json", "the simulate step"))
    preds = load_predictors(run / "predictors", cache) if (run / "predictors" / "predictors.json").exists() else {}
    ptable = _csv(run / "predictors" / "evaluation.csv")
    vals = [t for f in sorted((run / "validate").glob("validate*.csv")) if (t := _csv(f)) is not None and len(t)]
    return StudyResult(out=run, cache=cache, test_eval=pd.DataFrame(), predictors=preds,
                       predictor_table=ptable if ptable is not None else pd.DataFrame(), rule=rule,
                       simulation=_simulation(run), placements=_placements(run, cfg, cache), config=cfg,
                       validate=pd.concat(vals, ignore_index=True) if vals else None,
                       references=_csv(run / "simulate" / "references.csv"))
