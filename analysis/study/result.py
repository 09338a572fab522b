"""What a finished study returns (:func:`analysis.study.pipeline.run_study`): every artefact it made, by name."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class StudyResult:
    """A finished study: every artefact it made, by name (readable as ``result["cache"]`` too)."""

    out: Path  # the study's folder
    cache: Any  # the branchy.cache.FeatureCache
    test_eval: pd.DataFrame  # test accuracy per exit
    predictors: dict  # name -> fitted predictor
    predictor_table: pd.DataFrame  # their quality on calib (out of fold) and test
    rule: Any  # the exit rule (``thresholds``: its thresholds)
    simulation: dict  # every policy per profile (analysis.study.outputs.simulate_to)
    placements: dict  # strategy -> (search result, comparison table)
    config: Any  # the analysis.study.config.StudyConfig it ran
    validate: pd.DataFrame | None = None  # the real runtime against the simulator (None when skipped)
    references: pd.DataFrame | None = None  # does a predictor pay, per profile (simulate/references.csv)
    report: Path | None = None  # the HTML report (None without one)
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
