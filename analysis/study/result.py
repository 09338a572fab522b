"""What a finished study returns (:func:`analysis.study.pipeline.run_study`): every artefact it made, by name."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class StudyResult:
    """A finished study. ``out``: its folder; ``cache``: the :class:`branchy.cache.FeatureCache`; ``test_eval``: test
    accuracy per exit; ``predictors``: name -> fitted predictor; ``predictor_table``: their quality on calib (out of
    fold) and test; ``rule``: the exit rule (``thresholds``: its thresholds); ``simulation``: every policy per profile
    (:func:`analysis.study.outputs.simulate_to`); ``placements``: strategy -> (search result, comparison);
    ``config``: the :class:`analysis.study.config.StudyConfig`; ``validate``: the real runtime against the simulator
    (None when skipped); ``references``: does a predictor pay, per profile (``simulate/references.csv``);
    ``report``: the HTML report's path (None without one)."""

    out: Path
    cache: Any
    test_eval: pd.DataFrame
    predictors: dict
    predictor_table: pd.DataFrame
    rule: Any
    simulation: dict
    placements: dict
    config: Any
    validate: pd.DataFrame | None = None
    references: pd.DataFrame | None = None
    report: Path | None = None
    thresholds: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.thresholds = np.asarray(self.rule.thresholds)

    def __getitem__(self, key: str):
        """``result["cache"]``: the field of that name (as the dict this class replaces was read)."""
        if key not in {f.name for f in fields(self)}:
            raise KeyError(f"a study result has no {key!r}; it has {', '.join(f.name for f in fields(self))}")
        return getattr(self, key)

    def get(self, key: str, default=None):
        return getattr(self, key, default) if key in {f.name for f in fields(self)} else default

    def __contains__(self, key: str) -> bool:
        return key in {f.name for f in fields(self)}


__all__ = ["StudyResult"]
