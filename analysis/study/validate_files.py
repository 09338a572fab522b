"""``branchy validate`` on files: a study folder (``--run``) or step-by-step outputs (``--checkpoint``, ``--cache``,
``--predictors``, ``--placement``, ``--thresholds``); writes ``validate[_BACKEND].csv`` and ``.png``."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from branchy.cache import FeatureCache
from branchy.exits import ExitRule
from placement import Placement

from ..core.policies import PolicyConfig
from .validate import validate


def validate_run(run: str | Path, *, n: int = 300, reps: int = 3, batch_size: int = 64,
                 backend: str = "eager") -> tuple[pd.DataFrame, Path]:
    """:func:`validate` on a study folder (model/, cache/, predictors/, simulate/thresholds.json,
    placement/*/placement.json); writes ``validate/validate.csv`` and ``validate/validate.png``."""
    run = Path(run)
    ckpt = run / "model" / "model.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"no {ckpt}: validate needs a study folder written by `branchy run` or `branchy demo` "
                                f"(or give --checkpoint, --cache, --predictors and --placement of step-by-step outputs)")
    from .config import load_study

    cfg = load_study(run / "study.yaml").policies if (run / "study.yaml").is_file() else PolicyConfig()
    return validate_files(ckpt, run / "cache", out=run / "validate",
                          predictors=run / "predictors" if (run / "predictors").is_dir() else None,
                          placements=sorted(run.glob("placement/*/placement.json")),
                          rule=(run / "simulate" / "thresholds.json") if (run / "simulate" / "thresholds.json").is_file()
                          else None, cfg=cfg, n=n, reps=reps, batch_size=batch_size,
                          backend=backend)


def _predictors_and_placements(cache: FeatureCache, predictors, pl_paths: list[Path]) -> tuple[dict | None, dict]:
    """The predictors folder's predictors (or None) and the placements by label, with the refits a
    risk-controlled placement was certified with (its ``predictors/`` beside it) added to the predictors."""
    from predictors.store import load_predictors

    preds = load_predictors(predictors, cache) if predictors is not None else None
    pls = {}
    for p in pl_paths:
        pls[f"placement ({p.parent.name})"] = Placement.load(p)
        if (p.parent / "predictors").is_dir():
            own = load_predictors(p.parent / "predictors", cache)
            if preds and set(own) & set(preds) and len(pl_paths) > 1:
                raise ValueError(f"{p.parent}/predictors refits predictors that other placements use too: validate "
                                 f"a risk-controlled placement on its own")
            preds = {**(preds or {}), **own}
    return preds, pls


def _data_of(meta: dict, cache: FeatureCache, ckpt: Path):
    """The dataset the checkpoint was trained on (else the one the cache names), as a DataConfig."""
    from branchy.data import DataConfig
    from branchy.train import data_config_of

    data = data_config_of(meta)
    if data is None:
        name = (cache.manifest.get("dataset") or {}).get("name")
        if not name:
            raise ValueError(f"{ckpt} records no dataset: validate needs the test images the cache was dumped from")
        data = DataConfig(name)
    return data


def validate_files(checkpoint: str | Path, cache_dir: str | Path, *, out: str | Path, predictors=None,
                   placements=(), rule=None, cfg: PolicyConfig | None = None, n: int = 300, reps: int = 3,
                   batch_size: int = 64, backend: str = "eager") -> tuple[pd.DataFrame, Path]:
    """:func:`validate` on step-by-step outputs (``branchy train`` / ``dump`` / ``fit-predictors`` / ``place``): a
    checkpoint, its cache, optionally a predictors folder and placement files (``placement.json``; a placement
    written with risk control brings its own ``predictors/`` beside it), and an exit rule file (default: the rule
    calibrated on calib). The test images come from the dataset the checkpoint was trained on. Writes
    ``OUT/validate[_BACKEND].csv`` and ``.png``."""
    from branchy.core import check_writable
    from branchy.runtime import BACKENDS
    from branchy.train import load_checkpoint

    from ..present import plots

    out = Path(out)
    check_writable(out, folder=True, what="validate folder")
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt}: give the model.pt that `branchy train` wrote")
    BACKENDS.get(backend)
    pl_paths = [Path(p) for p in placements]
    for p in pl_paths:
        if not p.is_file():
            raise FileNotFoundError(f"no placement at {p}: give the placement.json that `branchy place` wrote")
    if rule is not None and not Path(rule).is_file():
        raise FileNotFoundError(f"no exit rule file at {rule}: give a study's simulate/thresholds.json or leave it out")
    model, meta = load_checkpoint(ckpt)
    cache = FeatureCache.open(cache_dir, model=model)
    cache.costs_for(backend)  # measured on that backend? (a clear error before any data is loaded)
    preds, pls = _predictors_and_placements(cache, predictors, pl_paths)
    splits = _data_of(meta, cache, ckpt).load()
    cache.check(dataset=splits)
    rule_obj = ExitRule.load(rule) if rule is not None else None
    n = min(n, cache.size("test"))
    x = splits.test.batch(torch.arange(n))[0]
    df = validate(cache, model, x, predictors=preds, cfg=cfg or PolicyConfig(), rule=rule_obj, placements=pls,
                  reps=reps, batch_size=batch_size, backend=backend)
    out.mkdir(parents=True, exist_ok=True)
    tag = "" if backend == "eager" else f"_{backend}"
    df.to_csv(out / f"validate{tag}.csv", index=False)
    fig, _ = plots.plot_validate(df, title=f"simulated vs measured ({backend}, batch 1, {n} test samples)")
    plots.save(fig, out / f"validate{tag}.png")
    return df, out


__all__ = ["validate_files", "validate_run"]
