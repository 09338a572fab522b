"""``branchy export`` on files: a study folder (``--run``) or step-by-step outputs (``--checkpoint``, ``--cache``,
``--placement``, ``--predictors``, ``--thresholds``)."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.policies import PolicyConfig
from .export import export_package

__all__ = ["export_files", "export_run"]


def export_run(run: str | Path, out: str | Path, *, strategy: str | None = None) -> tuple[Path, dict]:
    """The chosen placement of ``strategy`` (default: the study's first) of study folder ``run`` as a package."""
    from ..study.config import load_study

    run = Path(run)
    if not (run / "study.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a study folder (no study.yaml): give the folder `branchy run` or "
                                f"`branchy demo` wrote, or the step-by-step outputs")
    cfg = load_study(run / "study.yaml")
    strategy = strategy or cfg.placement.strategies[0]
    pl = run / "placement" / strategy / "placement.json"
    if not pl.is_file():
        have = sorted(p.parent.name for p in run.glob("placement/*/placement.json"))
        raise FileNotFoundError(f"{run} has no placement of strategy {strategy!r} (it has: {', '.join(have) or 'none'})")
    own = pl.parent / "predictors"  # a risk-controlled placement brings its refits
    preds = own if own.is_dir() else (run / "predictors" if (run / "predictors").is_dir() else None)
    return export_files(run / "model" / "model.pt", run / "cache", pl, out, predictors=preds,
                        rule=run / "simulate" / "thresholds.json", cfg=cfg.policies, name=f"{cfg.name}: {strategy}")


def export_files(checkpoint, cache_dir, placement, out, *, predictors=None, rule=None, cfg: PolicyConfig | None = None,
                 name: str = "") -> tuple[Path, dict]:
    """Step-by-step outputs as a package: the checkpoint, its cache, a ``placement.json``, the predictors its gates
    name and the exit rule (default: calibrated on calib)."""
    from branchy.cache import FeatureCache
    from branchy.exits import ExitRule
    from branchy.train import data_config_of, load_checkpoint
    from placement import Placement
    from predictors.store import load_predictors

    from ..core.policies import calibrate

    for what, p in (("checkpoint", checkpoint), ("placement", placement), ("exit rule file", rule)):
        if p is not None and not Path(p).is_file():
            raise FileNotFoundError(f"no {what} at {p}")
    model, meta = load_checkpoint(checkpoint)
    cache = FeatureCache.open(cache_dir, model=model)
    preds = load_predictors(predictors, cache) if predictors is not None else {}
    pl = Placement.load(placement)
    missing = sorted({g.predictor for g in (*pl.gates, pl.jump) if g is not None} - set(preds))
    if missing:
        raise ValueError(f"{placement} names predictors {missing}, which {predictors or 'no predictors folder'} does "
                         f"not hold: give --predictors (the folder the placement was searched with)")
    cfg = cfg or PolicyConfig()
    r = ExitRule.load(rule) if rule is not None else calibrate(cache, cfg)
    data = data_config_of(meta)
    if data is None:
        raise ValueError(f"{checkpoint} records no dataset: the package needs its input normalisation")
    out = export_package(model, cache, preds, pl, r, out, splits=data.load(), cfg=cfg, name=name)
    return out, json.loads((out / "plan.json").read_text())
