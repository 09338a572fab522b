"""Segment costs measured elsewhere (an exported package's ``runner.py profile`` on the device) as a named measured
profile of a cache: ``costs_NAME.csv`` beside the cache's own tables, profile ``measured-NAME``. Numpy, pandas and
json only: importing needs no torch."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd

from ..core import atomic_write, json_safe
from .files import file_entry
from .reader import MANIFEST, FeatureCache
from .writer import recover_target, target_lock

__all__ = ["commit_costs_table", "import_costs"]

_SEGMENTS = ("stage", "exit", "buffer")
_RESERVED = {"eager", "compiled", "onnxruntime"}


def _read(costs: str | os.PathLike | dict) -> dict:
    if isinstance(costs, dict):
        return costs
    try:
        d = json.loads(Path(costs).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no costs file at {costs}: write it on the device with `python runner.py PKG profile "
                                f"--out costs.json`") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{costs} is not JSON ({e}): copy the costs file runner.py wrote") from None
    if not isinstance(d, dict) or d.get("format") != "branchy-costs":
        raise ValueError(f"{costs} is not a branchy costs file (runner.py profile writes one)")
    return d


def _table(cache: FeatureCache, d: dict, origin: str) -> pd.DataFrame:
    """The cache's cost table with the file's ms at batch 1; the file must time exactly the cache's segments."""
    rows = pd.DataFrame(d.get("segments") or [])
    if not {"segment", "k", "ms_b1"} <= set(rows.columns):
        raise ValueError(f"{origin}: no segment timings (segment, k, ms_b1) in it")
    mine = rows[rows.segment.isin(_SEGMENTS)]
    want = {(s, k) for s in _SEGMENTS for k in range(cache.num_exits)}
    have = {(s, int(k)) for s, k in zip(mine.segment, mine.k)}
    if have != want or len(mine) != len(want):
        missing, extra = sorted(want - have), sorted(have - want)
        raise ValueError(f"{origin} does not time this cache's segments ({cache.num_exits} exits): "
                         + "; ".join(x for x in (f"missing {missing}" if missing else "",
                                                 f"extra {extra}" if extra else "",
                                                 "a segment timed twice" if not (missing or extra) else "") if x)
                         + ": profile the package exported from this cache's model")
    bad = mine[~(pd.to_numeric(mine.ms_b1, errors="coerce") > 0)]
    if len(bad):
        raise ValueError(f"{origin}: {len(bad)} segment(s) with a time that is not a positive number of ms "
                         f"(e.g. {bad.segment.iloc[0]} {int(bad.k.iloc[0])}: {bad.ms_b1.iloc[0]!r})")
    base = cache.costs[["segment", "k", "macs", "params", "act_bytes"]].copy()
    t = base.merge(mine[["segment", "k", "ms_b1"] + (["ms_b1_spread"] if "ms_b1_spread" in mine else [])]
                   .astype({"k": int}), on=["segment", "k"], how="left")
    return t.assign(rounds=d.get("rounds"), threads=d.get("threads"), device=d.get("machine", "device"),
                    unstable=t.get("ms_b1_spread", pd.Series(0.0, index=t.index)).fillna(0) > 0.10)


def import_costs(path: str | os.PathLike, costs: str | os.PathLike | dict, name: str) -> FeatureCache:
    """Add the segment timings of ``costs`` (a ``runner.py profile`` file, or its dict) to the cache at ``path`` as
    profile ``measured-NAME``: checked against the cache's model (fingerprint) and segments (every stage, exit and
    buffer, none missing or extra); written like a re-profiling (``costs_NAME.csv`` then the manifest, under the
    cache's write lock). Gate and jump timings in the file are the predictors' (left out of the cache's table)."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.+]*", name) or name in _RESERVED:
        raise ValueError(f"profile name {name!r}: lower-case letters, digits, '_', '.', '+' (no '-'), not one of "
                         f"{sorted(_RESERVED)}; the profile is then measured-{name}")
    origin = str(costs) if not isinstance(costs, dict) else "the costs"
    d = _read(costs)
    p = Path(path)
    cache = FeatureCache.open(p)
    fp = (cache.manifest.get("model") or {}).get("fingerprint")
    got = (d.get("model") or {}).get("fingerprint")
    if got != fp:
        raise ValueError(f"{origin} times model weights {got}, this cache holds {fp}: export the package from the "
                         f"checkpoint this cache was dumped from")
    table = _table(cache, d, origin)
    with target_lock(p, "import costs"):
        recover_target(p)
        m = FeatureCache.open(p).manifest
        file = f"costs_{name}.csv"
        meta = {k: d.get(k) for k in ("package", "machine", "processor", "system", "onnxruntime", "measured_at")}
        m["backends"] = dict(m.get("backends") or {}, **{name: {
            "costs": file, "threads": d.get("threads"), "device": d.get("machine", "device"), "imported": meta,
            "overhead": {k: float((d.get("overhead") or {}).get(k, 0.0)) for k in ("sample_ms", "decision_ms")}}})
        commit_costs_table(p, m, file, table)
    return FeatureCache.open(p)


def commit_costs_table(p: Path, m: dict, file: str, table: pd.DataFrame, mark=None) -> None:
    """Write cost table ``file`` into the cache at ``p`` crash-safely (under its write lock): ``file.new``, then the
    manifest ``m`` recording it (its size and, from schema 2, SHA-256: the commit point), then the rename; a kill
    in between is completed by the next writer. ``mark(step)``: called after each step (crash tests)."""
    new = p / (file + ".new")
    table.to_csv(new, index=False)
    entry = file_entry(new) if m.get("schema_version", 1) >= 2 else new.stat().st_size  # schema 1: sizes only
    m["files"] = dict(m["files"], **{file: entry})
    if mark:
        mark("new-written")
    atomic_write(p / MANIFEST, json.dumps(json_safe(m), indent=2, allow_nan=False))
    if mark:
        mark("manifest-replaced")
    os.replace(new, p / file)
