"""When does a gate pay? Per side exit ``i`` and predictor position ``a <= i`` (the gate runs after stage ``a``),
the break-even predictor cost and gate quality at which a gate in front of exit ``i`` beats the cascade, from the
calib exit rates and the segment costs. Every figure comes from the simulator (a virtual gate of chosen quality),
so everything it charges counts: heads, buffering, the runtime's overhead.

A gate with true-skip rate TS (the share of the samples reaching exit ``i`` that the exit would *not* accept,
which the gate sends past it) and false-skip rate FS (the share of those the exit *would* accept, sent past it
too), costing G ms each time it runs, changes the cascade's mean latency (ms per sample, batch 1) by::

    delta(TS, FS, G) = c * G - TS * S + FS * P

and its accuracy by ``FS * A`` points, where

- ``S`` (``saving_ms``): the mean latency saved when every non-accepted sample skips exit ``i`` (exact for any
  gate: a true skip saves the same head for every sample),
- ``P`` (``penalty_ms``): the mean latency added when every accepted sample skips it too (they run on to a later
  exit; an expectation over which accepted samples a gate skips),
- ``c`` (``runs_share``): the share of samples the gate runs on (those that reach stage ``a``),
- ``A`` (``acc_change_pts``): the accuracy change, in points, when every accepted sample skips.

The formula is exact when FS = 0 (or for a gate on the last side exit); otherwise ``FS * P`` is the expected
penalty when the false skips fall on accepted samples at random: a real gate's false skips are not random (it skips
the accepted samples it is least sure of), and the simulated change can differ by a few per cent (up to 4 % for
random gates in the tests). Read as the model it is: a gate pays (delta < 0) iff ``G < (TS * S - FS * P) / c``, i.e.
iff ``TS > (c * G + FS * P) / S``; every decision the toolkit takes simulates the real gate instead.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from branchy.exits import ExitRule
from placement import Gate, Placement
from predictors import PredictorSpec

from .evidence import Evidence, outcome

VIRTUAL = "_virtual_gate"  # virtual gates go by this name plus their exit in the evidence
_COLUMNS = {"reach_pct": "reach_%", "accept_pct": "accept_%"}  # BreakEven field -> break_even_table column


@dataclass(frozen=True)
class BreakEven:
    """The linear model of one gate position (see the module docstring); ms per sample at batch 1."""

    exit: int
    at: int
    reach_pct: float  # % of samples that reach exit ``exit`` in the cascade
    accept_pct: float  # % of those that exit ``exit`` accepts
    saving_ms: float  # S
    penalty_ms: float  # P
    runs_share: float  # c
    acc_change_pts: float  # A

    @classmethod
    def from_row(cls, row) -> "BreakEven":
        """From a row of :func:`break_even_table` (``reach_%``, ``accept_%``; a table written before 0.3 says
        ``reach_pct``, ``accept_pct``)."""
        col = {f: _COLUMNS.get(f, f) for f in cls.__dataclass_fields__}
        col = {f: c if c in row or f not in row else f for f, c in col.items()}  # an old file's column names
        return cls(**{f: (int(row[c]) if f in ("exit", "at") else float(row[c])) for f, c in col.items()})

    def row(self) -> dict:
        """This model as a row of :func:`break_even_table` (percent columns end in ``_%``)."""
        return {_COLUMNS.get(f, f): v for f, v in self.__dict__.items()}

    def delta_ms(self, true_skip: float, false_skip: float, cost_ms: float) -> float:
        """Change of the cascade's mean latency (ms per sample) with a gate of this quality and cost."""
        return self.runs_share * cost_ms - true_skip * self.saving_ms + false_skip * self.penalty_ms

    def max_cost_ms(self, true_skip: float = 1.0, false_skip: float = 0.0) -> float:
        """The break-even predictor cost: the gate pays below it (<= 0: it never pays at this quality)."""
        gain = true_skip * self.saving_ms - false_skip * self.penalty_ms
        return gain / self.runs_share if self.runs_share > 0 else (np.inf if gain > 0 else 0.0)

    def min_true_skip(self, cost_ms: float, false_skip: float = 0.0) -> float:
        """The break-even gate quality: the true-skip rate it must beat at this cost and false-skip rate
        (> 1: no gate of that cost and false-skip rate pays)."""
        need = self.runs_share * cost_ms + false_skip * self.penalty_ms
        return need / self.saving_ms if self.saving_ms > 0 else np.inf


def _with_virtual_gates(ev: Evidence, rule: ExitRule, gates: dict, cost_ms: float) -> tuple[Evidence, Placement]:
    """The evidence with one virtual gate per entry of ``gates`` (side exit -> (stage it runs after, enter [N]
    bool)), each costing ``cost_ms`` per run, and the cascade placement that uses them."""
    k = ev.num_exits
    names = {i: f"{VIRTUAL}{i}" for i in gates}
    scores, specs, pcost = dict(ev.scores), dict(ev.specs), dict(ev.pcost)
    for i, (at, enter) in gates.items():
        scores[names[i]] = np.asarray(enter, bool).astype(np.float64)
        specs[names[i]] = PredictorSpec("gate", at, "linear", i, rule)
        pcost[names[i]] = (float(cost_ms), 0.0)
    pl = Placement(Placement.plain(k).kept, tuple(Gate(names[j], gates[j][0]) if j in gates else None
                                                  for j in range(k)))
    return replace(ev, scores=scores, specs=specs, pcost=pcost), pl


def virtual_gate_outcome(ev: Evidence, rule: ExitRule, exit: int, at: int, enter: np.ndarray, cost_ms: float, *,
                         overlap: bool = False):
    """The cascade with one gate after stage ``at`` in front of exit ``exit`` that enters exactly where
    ``enter`` [N] is true, at ``cost_ms`` per run: what any real gate with those decisions would do."""
    e, pl = _with_virtual_gates(ev, rule, {exit: (at, enter)}, cost_ms)
    return outcome(e, pl, rule, cuts={exit: 0.5}, overlap=overlap, name=f"gate@{at}->{exit}")


def perfect_gates_outcome(ev: Evidence, rule: ExitRule, *, cost_ms: float = 0.0, overlap: bool = False):
    """The cascade with a perfect gate right in front of every side exit (after the stage it follows): it enters
    exactly the samples the exit accepts and costs ``cost_ms`` per run (0: free). With the same kept exits and the
    same exit rule no gated or jump placement is faster (a perfect gate skips every head that would not let the
    sample out and keeps every exit that would), so ``perfect / cascade`` is the most any predictor can save over
    *this* cascade; it is no bound for placements that also remove exits or retune thresholds."""
    k = ev.num_exits
    if ev.chained:
        raise ValueError(f"the cache's exits are chained ({ev.chain}): no exit can be gated")
    would = ev.passes(rule)
    e, pl = _with_virtual_gates(ev, rule, {i: (i, would[:, i]) for i in range(k - 1)}, cost_ms)
    return outcome(e, pl, rule, cuts={i: 0.5 for i in range(k - 1)}, overlap=overlap, name="perfect gates")


def break_even(ev: Evidence, rule: ExitRule, exit: int, at: int, *, overlap: bool = False) -> BreakEven:
    """The break-even model of a gate after stage ``at`` in front of side exit ``exit`` on ``ev`` (calib)."""
    k = ev.num_exits
    if not 0 <= at <= exit < k - 1:
        raise ValueError(f"a gate sits after stage at <= the side exit it is for: 0 <= at <= exit <= {k - 2}, got "
                         f"at={at}, exit={exit}")
    if ev.chained:
        raise ValueError(f"the cache's exits are chained ({ev.chain}): no exit can be skipped without changing the "
                         f"later exits' answers, so gates have no break-even")
    base = outcome(ev, Placement.plain(k), rule, overlap=overlap)
    would = ev.passes(rule)[:, exit]
    perfect = virtual_gate_outcome(ev, rule, exit, at, would, 0.0, overlap=overlap)
    never = virtual_gate_outcome(ev, rule, exit, at, np.zeros(ev.n, bool), 0.0, overlap=overlap)
    costed = virtual_gate_outcome(ev, rule, exit, at, would, 1.0, overlap=overlap)
    reach = base.exit >= exit
    return BreakEven(exit, at, 100 * float(reach.mean()), 100 * float(would[reach].mean()) if reach.any() else 0.0,
                     float(base.latency_ms.mean() - perfect.latency_ms.mean()),
                     float(never.latency_ms.mean() - perfect.latency_ms.mean()),
                     float(costed.latency_ms.mean() - perfect.latency_ms.mean()),
                     100 * float(never.correct.mean() - perfect.correct.mean()))


def break_even_table(ev: Evidence, rule: ExitRule, *, false_skip: float = 0.02, overlap: bool = False
                     ) -> pd.DataFrame:
    """:func:`break_even` for every position ``at <= exit`` of every side exit, with the break-even cost of a
    perfect gate (``max_cost_ms``) and of one that wrongly skips ``false_skip`` of the accepted samples
    (``max_cost_ms_fs2%`` for ``false_skip=0.02``: a fraction here, as every rate of the model; the command line's
    ``--false-skip`` is in percent). Percent columns end in ``_%`` (``reach_%``, ``accept_%``), points in ``_pts``."""
    rows = []
    for i in range(ev.num_exits - 1):
        for a in range(i + 1):
            b = break_even(ev, rule, i, a, overlap=overlap)
            rows.append({**b.row(), "max_cost_ms": b.max_cost_ms(1.0, 0.0),
                         f"max_cost_ms_fs{100 * false_skip:g}%": b.max_cost_ms(1.0, false_skip)})
    return pd.DataFrame(rows)


def explain_gates(table: pd.DataFrame, gates: pd.DataFrame | None = None, *, false_skip: float = 0.02) -> list[str]:
    """One paragraph per side exit: what skipping it can save, the cost below which a gate pays and the true-skip
    rate it needs at ``false_skip`` (a fraction, as every rate of the model; at the cost of the best real predictor,
    if any), whether removing the exit outright does better, and how the best real predictor measures up (``gates``:
    :func:`analysis.study.compare.gate_table` rows, calib out of fold). ms per sample at batch 1."""
    lines = []
    for i, d in table.groupby("exit"):
        b = BreakEven.from_row(d.loc[d.max_cost_ms.idxmax()])
        head = f"exit {i} (reached by {b.reach_pct:.0f} % of samples, accepts {b.accept_pct:.0f} % of them): "
        if b.saving_ms <= 0:
            lines.append(head + "skipping it saves nothing under these costs, so no gate can pay.")
            continue
        real = None if gates is None or not len(gates) else gates[gates.exit == i]
        r, g = None, 0.0
        if real is not None and len(real):
            r = real.loc[real.saving_ms.idxmax()]
            g = float(r.G_ms)
            b = BreakEven.from_row(d[d["at"] == int(r["at"])].iloc[0])
        need = b.min_true_skip(g, false_skip)
        removal = b.delta_ms(1.0, 1.0, 0.0)
        text = (f"skipping it saves up to {b.saving_ms:.3g} ms per sample. A gate after stage {b.at} pays if it "
                f"costs < {b.max_cost_ms(1.0, false_skip):.3g} ms and"
                + (f", at {g:.3g} ms," if g > 0 else "")
                + (f" skips >= {100 * need:.0f} % of the samples the exit would not accept" if need <= 1 else
                   " skips more of the samples the exit would not accept than there are (so never)")
                + f" while wrongly skipping <= {100 * false_skip:g} %.")
        if removal < 0:
            text += (f" Removing the exit outright saves {-removal:.3g} ms ({b.acc_change_pts:+.2g} accuracy points); "
                     f"a perfect gate beats that only if it costs < {b.penalty_ms / b.runs_share:.3g} ms.")
        if r is not None:
            ts, fs = float(r["true_skip_%"]) / 100, float(r["false_skip_%"]) / 100
            delta = b.delta_ms(ts, fs, g)
            verdict = "pays" if delta < 0 else "does not pay"
            if delta < 0 and delta >= removal:
                verdict += " against the cascade but not against removing the exit"
            text += (f" The best predictor here, {r.predictor}, costs {g:.3g} ms and skips {100 * ts:.0f} % / wrongly "
                     f"{100 * fs:.0f} %: it {verdict} ({delta:+.3g} ms per sample, expected from its rates).")
        else:
            text += " No gate predictor is fitted for it."
        lines.append(head + text)
    return lines


__all__ = ["BreakEven", "break_even", "break_even_table", "explain_gates", "perfect_gates_outcome",
           "virtual_gate_outcome"]
