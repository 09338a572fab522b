"""The placement settings a study, ``branchy place`` and the API share (:class:`PlacementConfig`), in a module of
their own so that reading and checking them imports no simulator."""
from __future__ import annotations

from dataclasses import dataclass

from branchy.core import check_extra, check_int, check_name, setting
from placement import STRATEGIES, Constraint
from placement.optuna_storage import check_storage

from ..core.costs import DEFAULT_PROFILE, get_profile

__all__ = ["PlacementConfig"]


@dataclass(frozen=True)
class PlacementConfig:
    """The placement search: ``strategies`` scored on calib under ``profile`` (default
    :data:`~analysis.core.costs.DEFAULT_PROFILE`, the cache's own timings) for the fastest placement within
    ``max_acc_drop`` accuracy points of ``full``, or (when ``latency_budget`` ms is given, which replaces
    ``max_acc_drop``) the most accurate one under the budget."""

    strategies: tuple[str, ...] = setting(("budget",), "placement strategies (see `branchy strategies`)",
                                          cli="--strategy", choices=STRATEGIES.names)
    max_acc_drop: float | None = setting(0.5, "fastest placement within this many accuracy points of full on calib")
    latency_budget: float | None = setting(None, "most accurate placement under this mean latency (ms per sample at "
                                                 "batch 1); replaces max_acc_drop")
    profile: str = setting(DEFAULT_PROFILE, "device profile name or JSON/YAML file (see `branchy profiles`)",
                           cli=("--device-profile", "--profile"))
    n_jobs: int = setting(1, "parallel scoring through joblib (-1: all cores)")
    scheduler: str | None = setting(None, "a Dask scheduler's address (tcp://host:8786): score placements on its "
                                          "workers through joblib's dask backend (pip install dask[distributed])")
    seed: int = setting(0, "seed of randomised strategies")
    trials: int | None = setting(None, "nsga2: new placements to score (none: the strategy's default)")
    storage: str | None = setting(None, "nsga2: Optuna storage URL (e.g. sqlite:///search.db) so the search persists "
                                        "and a later run resumes it")
    study_name: str | None = setting(None, "nsga2: name of the stored study (with storage)")

    def __post_init__(self) -> None:
        if not self.strategies:
            raise ValueError(f"strategies: name at least one of {', '.join(STRATEGIES.names())}")
        for st in self.strategies:
            check_name("strategies", STRATEGIES, st)
        if "nsga2" in self.strategies:
            check_extra("optuna", extra="optuna", purpose="the nsga2 placement strategy")
        self.constraint  # noqa: B018 - its checks
        get_profile(self.profile)
        check_int("n_jobs", self.n_jobs)
        if self.n_jobs == 0:
            raise ValueError("n_jobs must be >= 1 or negative (-1: all cores), got 0")
        check_int("seed", self.seed, 0)
        if self.trials is not None:
            check_int("trials", self.trials, 1)
        if self.study_name is not None and self.storage is None:
            raise ValueError(f"study_name {self.study_name!r} names a stored study: give storage too "
                             f"(e.g. sqlite:///search.db)")
        if (self.trials is not None or self.storage is not None) and "nsga2" not in self.strategies:
            raise ValueError("trials, storage and study_name set the nsga2 strategy, which strategies does not name")
        if self.storage is not None:
            check_storage(self.storage)  # before any work: not a URL, no folder, not a (SQLite) Optuna storage

    def options(self, strategy: str) -> dict:
        """The keyword options this config gives ``strategy`` (only nsga2 takes any)."""
        if strategy != "nsga2":
            return {}
        out = {"trials": self.trials, "storage": self.storage, "study_name": self.study_name}
        return {k: v for k, v in out.items() if v is not None}

    @property
    def constraint(self) -> Constraint:
        if self.latency_budget is not None:
            return Constraint(max_acc_drop=None, latency_budget=self.latency_budget)
        return Constraint(max_acc_drop=self.max_acc_drop)
