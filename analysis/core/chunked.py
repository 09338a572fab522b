"""Simulation of a split larger than memory: its rows read from the cache's memory maps a chunk at a time, each
chunk simulated (:func:`~analysis.core.evidence.outcome`) and folded into running totals, so memory stays flat
however many rows the split has. The summary equals :func:`~analysis.core.stats.summarize` of the whole split
in memory (without bootstrap intervals): means are sums over chunks, and percentiles are exact, since a
sample's latency is a sum of segment costs along its path and takes one of few values, counted per value."""
from __future__ import annotations

import numpy as np

from branchy.cache import FeatureCache, row_slices
from branchy.exits import ExitRule

from .costs import DEFAULT_PROFILE, CostModel, DeviceProfile
from .evidence import Evidence, outcome
from .policies import POLICIES, PolicyConfig
from .simulate import Outcome

CHUNK_ROWS = 1 << 16
#: distinct latency values counted before percentiles are refused (a path's latency is one of a few values)
MAX_LATENCY_VALUES = 1 << 20


class RunningSummary:
    """Totals of outcomes added chunk by chunk; :meth:`summary` gives what ``summarize(o, n_boot=0)`` gives for
    all of them at once."""

    def __init__(self, policy: str = "", num_exits: int = 0) -> None:
        self.policy, self.num_exits = policy, num_exits
        self.n, self.correct, self.lat_sum, self.macs_sum = 0, 0, 0.0, 0.0
        self.peak_buf, self.buf_sum = 0.0, 0.0
        self.exits = np.zeros(num_exits, np.int64)
        self.parts: dict[str, float] = {}
        self.values: dict[float, int] = {}

    def add(self, o: Outcome) -> None:
        self.policy = self.policy or o.policy
        if len(self.exits) < o.num_exits:
            self.exits = np.pad(self.exits, (0, o.num_exits - len(self.exits)))
            self.num_exits = o.num_exits
        self.n += o.n
        self.correct += int(o.correct.sum())
        self.lat_sum += float(o.latency_ms.sum())
        self.macs_sum += float(o.macs.sum())
        if o.n:
            self.peak_buf = max(self.peak_buf, float(o.buffered_bytes.max()))
        self.buf_sum += float(o.buffered_bytes.sum())
        self.exits += np.bincount(o.exit, minlength=len(self.exits))[: len(self.exits)]
        for part, v in o.breakdown.items():
            self.parts[part] = self.parts.get(part, 0.0) + float(np.sum(v))
        vals, counts = np.unique(o.latency_ms, return_counts=True)
        for v, c in zip(vals.tolist(), counts.tolist()):
            self.values[v] = self.values.get(v, 0) + c
        if len(self.values) > MAX_LATENCY_VALUES:
            raise ValueError(f"{self.policy}: more than {MAX_LATENCY_VALUES} distinct latencies: per-sample costs "
                             f"vary continuously, so exact percentiles need every sample; simulate in memory")

    def percentile(self, q: float) -> float:
        """The inverted-CDF percentile (numpy's ``method='inverted_cdf'``) from the counted values."""
        vals = np.array(sorted(self.values))
        cum = np.cumsum([self.values[v] for v in vals])
        return float(vals[min(int(np.searchsorted(cum, self.n * (q / 100), side="left")), len(vals) - 1)])

    def summary(self) -> dict:
        if not self.n:
            raise ValueError("no samples were simulated")
        n = self.n
        out = {"policy": self.policy, "n": n, "accuracy_%": 100 * self.correct / n, "mean_ms": self.lat_sum / n,
               "p50_ms": self.percentile(50), "p95_ms": self.percentile(95), "p99_ms": self.percentile(99),
               "mean_MACs": self.macs_sum / n, "peak_buffer_bytes": self.peak_buf, "mean_buffer_bytes": self.buf_sum / n}
        for k, c in enumerate(self.exits):
            out[f"exit{k}_%"] = 100 * c / n
        for part, v in self.parts.items():
            out[f"{part}_ms"] = v / n
        return out


def simulate_chunked(cache: FeatureCache, split: str, policy, rule: ExitRule, *, predictors: dict | None = None,
                     cuts: dict | None = None, overlap: bool = False, profile: str | DeviceProfile = DEFAULT_PROFILE,
                     costs: CostModel | None = None, chunk_rows: int = CHUNK_ROWS) -> dict:
    """The summary of ``policy`` (a fixed policy's name or a :class:`~placement.Placement`, with gate ``cuts``
    tuned beforehand, e.g. on calib) on ``split`` under ``rule``, ``chunk_rows`` samples at a time."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    costs = costs or CostModel.from_cache(cache, profile)
    named = POLICIES.get(policy) if isinstance(policy, str) else None  # a registered policy run as it is
    cfg = PolicyConfig(measure=rule.measure, overlap=overlap)
    acc = RunningSummary()
    for rows in row_slices(cache.size(split), chunk_rows):
        ev = Evidence.build(cache, split, measure=rule.measure, predictors=predictors, costs=costs, rows=rows)
        if named is None:
            o = outcome(ev, policy, rule, cuts=cuts, overlap=overlap)
        else:
            o = named.run(ev, rule, cfg) if named.run is not None else None
        if o is None:
            raise ValueError(f"policy {policy!r} is decided on calib, not run as it is: give its Placement")
        acc.add(o)
    return acc.summary()


__all__ = ["CHUNK_ROWS", "MAX_LATENCY_VALUES", "RunningSummary", "simulate_chunked"]
