"""The simulator (docs/semantics.md §3.3), vectorised over samples. Pure numpy: decisions (threshold passes,
gate openings, jump targets) come in as arrays, so nothing here imports the predictors.

Exits are 0-based, K of them; exit K-1 is the trunk's own classifier and always answers.
Per sample, on the path it takes:
  the runtime:       sample_ms, plus decision_ms per side exit entered (its own control flow)
  stage k:           S_k
  entering exit k:   W_k + E_k   (buffer the activation, run the head, decide)
  going on after it: R_k         (read the buffered activation back)
  a predictor after stage j: G (charged when the sample reaches stage j)
  the final exit:    E_{K-1}     (no buffering: the trunk ends there)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .costs import CostModel


@dataclass
class Outcome:
    """Per-sample result of a policy: exit taken, correct, latency (ms), MACs, peak buffered bytes, and
    the latency split into stages / exits / predictors / buffering (ms)."""

    policy: str
    exit: np.ndarray
    correct: np.ndarray
    latency_ms: np.ndarray
    macs: np.ndarray
    buffered_bytes: np.ndarray
    breakdown: dict = field(default_factory=dict)
    num_exits: int = 0
    path: dict | None = None  # per sample: "held" / "cont" [N, K-1] bool (side exits entered / gone on from)


    @property
    def n(self) -> int:
        return len(self.exit)

    def subset(self, mask: np.ndarray) -> "Outcome":
        return Outcome(self.policy, self.exit[mask], self.correct[mask], self.latency_ms[mask], self.macs[mask],
                       self.buffered_bytes[mask], {k: v[mask] for k, v in self.breakdown.items()}, self.num_exits,
                       None if self.path is None else {k: v[mask] for k, v in self.path.items()})


# ----------------------------------------------------------------------------- validation
def _check(costs: CostModel, name: str, arr, ndim: int = 2, dtype=None) -> np.ndarray:
    a = np.asarray(arr) if dtype is None else np.asarray(arr, dtype=dtype)
    k = costs.num_exits
    if a.ndim != ndim or (ndim == 2 and a.shape[1] != k) or (ndim == 1 and a.shape[0] == 0):
        want = "[N, K]" if ndim == 2 else "[N]"
        raise ValueError(f"{name} must be {want} with K={k} exits (as the cost model), got shape {a.shape}")
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise ValueError(f"{name} holds NaN")
    return a


def _kept(costs: CostModel, kept) -> np.ndarray:
    k = costs.num_exits
    if kept is None:
        return np.ones(k, bool)
    kept = np.asarray(kept, dtype=bool)
    if kept.shape != (k,):
        raise ValueError(f"kept must say for each of the K={k} exits whether it is kept, got shape {kept.shape}")
    if not kept[-1]:
        raise ValueError("the final exit (the trunk's classifier) cannot be removed")
    return kept


def _first(mask: np.ndarray) -> np.ndarray:
    """Index of the first True per row (the last column must be all True)."""
    return mask.argmax(1)


# ----------------------------------------------------------------------------- the common path cost
def path_outcome(policy: str, costs: CostModel, exit_: np.ndarray, entered: np.ndarray, correct: np.ndarray, *,
                 gate_ms: np.ndarray | float = 0.0, gate_macs: np.ndarray | float = 0.0, buffered: bool = True,
                 overlap: bool = False, leave_buffered: bool = True) -> Outcome:
    """Cost of each sample's path: stages 0..exit, the side exits it ``entered`` (``[N, K]``; the last
    column is ignored), the predictors (``gate_ms`` per sample), buffering unless ``buffered=False``.
    With ``overlap`` a side branch runs concurrently with the next trunk stage: a branch the sample goes
    on from adds only what exceeds S_{k+1}; MACs still count everything run (energy does not overlap).
    ``leave_buffered=False``: the exit a sample leaves at needs no buffer (it is known in advance there
    that the trunk stops: the oracle)."""
    k = costs.num_exits
    n = len(exit_)
    rows = np.arange(n)
    side = entered[:, : k - 1].astype(bool)
    leave = np.zeros_like(side)
    is_side = exit_ < k - 1
    leave[rows[is_side], exit_[is_side]] = True
    side = side | leave
    cont = side & ~leave
    S, E, W, R = costs.stage_ms, costs.exit_ms, costs.write_ms, costs.read_ms
    if not buffered:
        W, R = np.zeros(k), np.zeros(k)
    held = side if leave_buffered else cont  # branch points whose activation is buffered
    stage_ms = np.cumsum(S)[exit_]
    final = (exit_ == k - 1)
    if overlap:
        extra = np.maximum(0.0, (W + E + R)[: k - 1] - S[1:])
        exits_ms = cont.astype(float) @ extra + leave.astype(float) @ E[: k - 1] + final * E[-1]
        buf_ms = (leave if leave_buffered else np.zeros_like(leave)).astype(float) @ W[: k - 1]
    else:
        exits_ms = side.astype(float) @ E[: k - 1] + final * E[-1]
        buf_ms = held.astype(float) @ W[: k - 1] + cont.astype(float) @ R[: k - 1]
    gate_ms = np.broadcast_to(np.asarray(gate_ms, dtype=float), (n,))
    runtime_ms = costs.sample_ms + costs.decision_ms * held.sum(1)  # the runtime's own control flow
    latency = stage_ms + exits_ms + buf_ms + gate_ms + runtime_ms
    macs = (np.cumsum(costs.stage_macs)[exit_] + side.astype(float) @ costs.exit_macs[: k - 1]
            + final * costs.exit_macs[-1] + np.broadcast_to(np.asarray(gate_macs, dtype=float), (n,)))
    if overlap:  # a sample that leaves at side exit k also ran stage k+1 concurrently
        macs = macs + np.where(is_side, np.append(costs.stage_macs[1:], 0.0)[np.minimum(exit_, k - 1)], 0.0)
    buf_bytes = (held * costs.act_bytes[: k - 1]).max(1) if (buffered and k > 1) else np.zeros(n)
    ok = correct[rows, exit_].astype(bool)
    return Outcome(policy, exit_.astype(np.int64), ok, latency, macs, buf_bytes.astype(float),
                   {"stages": stage_ms, "exits": exits_ms, "predictors": np.array(gate_ms, dtype=float),
                    "buffering": buf_ms, "runtime": np.broadcast_to(runtime_ms, (n,)).astype(float)}, k,
                   None if overlap or not buffered or not leave_buffered else {"held": held, "cont": cont})


# ----------------------------------------------------------------------------- policies
def simulate_full(correct, costs: CostModel, *, chained: bool = False) -> Outcome:
    """The plain network: every stage, the final exit. With ``chained`` exits (BoostNet, ZTW) the final
    answer needs every side head too (each run on its buffered activation)."""
    correct = _check(costs, "correct", correct)
    n, k = correct.shape
    return path_outcome("full", costs, np.full(n, k - 1), np.full((n, k), bool(chained)), correct)


def simulate_cascade(passes, correct, costs: CostModel, *, kept=None, overlap: bool = False,
                     name: str = "cascade") -> Outcome:
    """BranchyNet: every kept side exit is entered in order; leave at the first whose confidence passes
    its threshold (``passes`` ``[N, K]``)."""
    passes, correct = _check(costs, "passes", passes), _check(costs, "correct", correct)
    kept = _kept(costs, kept)
    p = passes.astype(bool) & kept
    p[:, -1] = True
    ex = _first(p)
    entered = kept[None, :] & (np.arange(costs.num_exits)[None, :] <= ex[:, None])
    return path_outcome(name, costs, ex, entered, correct, overlap=overlap)


def simulate_patience(preds, correct, costs: CostModel, patience: int, *, kept=None, overlap: bool = False,
                      name: str = "patience") -> Outcome:
    """PABEE (Zhou et al. 2020): a counter of consecutive kept exits whose prediction equals the previous
    kept exit's; leave at the first kept exit where it reaches ``patience`` (P >= 1: P = 1 leaves at the
    second kept exit when it agrees with the first)."""
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    preds, correct = _check(costs, "preds", preds), _check(costs, "correct", correct)
    kept = _kept(costs, kept)
    n, k = preds.shape
    idx = np.nonzero(kept)[0]
    run = np.zeros((n, k), np.int64)
    prev, cnt = None, np.zeros(n, np.int64)
    for i in idx:
        if prev is not None:
            cnt = np.where(preds[:, i] == prev, cnt + 1, 0)
        run[:, i] = cnt
        prev = preds[:, i]
    p = (run >= patience) & kept
    p[:, -1] = True
    ex = _first(p)
    entered = kept[None, :] & (np.arange(k)[None, :] <= ex[:, None])
    return path_outcome(name, costs, ex, entered, correct, overlap=overlap)


def simulate_gated(passes, correct, costs: CostModel, *, enter=None, gate_at=None, gate_ms=None, gate_macs=None,
                   kept=None, jump: tuple | None = None, overlap: bool = False, reads=None, jump_reads: int = 0,
                   jump_sure=None, leave_ms=None, leave_macs=None, name: str = "gated") -> Outcome:
    """The thesis: a predictor in front of side exit k, placed after stage ``gate_at[k]`` (≤ k; −1 = no
    gate), decides whether to enter it (``enter`` ``[N, K]``). Not entered: no E_k, no buffering.
    ``gate_ms[k]`` is that predictor's cost G, charged when the sample reaches stage ``gate_at[k]``.

    ``jump = (at, target [N], G ms, G MACs)`` adds an exit predictor after stage ``at``: the side exits
    from ``at`` up to the named target are skipped (see :func:`simulate_jump`).

    ``reads[k]`` (and ``jump_reads``): the gate of exit k reads the confidences of exits ``0..reads[k]-1``;
    a sample it is evaluated for runs those heads (charged as entered) where the policy had not.

    ``jump_sure`` ``[N]`` bool (jump-and-leave): a sample the jump predictor is sure of leaves at the first kept exit
    from its target on (``max(target, at)``) without the confidence check.

    ``leave_ms[k]`` (and ``leave_macs``): a leave predictor read after exit k's head (the learned exit decision,
    whose verdict is ``passes[:, k]``), charged wherever exit k is entered."""
    passes, correct = _check(costs, "passes", passes), _check(costs, "correct", correct)
    kept = _kept(costs, kept)
    n, k = passes.shape
    enter = np.ones((n, k), bool) if enter is None else _check(costs, "enter", enter).astype(bool)
    gate_at = np.full(k, -1, np.int64) if gate_at is None else np.asarray(gate_at, dtype=np.int64)
    gate_ms = np.zeros(k) if gate_ms is None else np.asarray(gate_ms, dtype=float)
    gate_macs = np.zeros(k) if gate_macs is None else np.asarray(gate_macs, dtype=float)
    for nm, v in (("gate_at", gate_at), ("gate_ms", gate_ms), ("gate_macs", gate_macs)):
        if v.shape != (k,):
            raise ValueError(f"{nm} must have one value per exit (K={k}), got shape {v.shape}")
    if ((gate_at > np.arange(k)) | (gate_at < -1)).any():
        raise ValueError(f"gate_at[k] must be -1 (no gate) or a stage j <= k, got {gate_at.tolist()}")
    gated = (gate_at >= 0) & kept
    gated[-1] = False
    cols = np.arange(k)[None, :]
    open_ = kept[None, :] & (~gated[None, :] | enter)
    if jump is not None:
        at, target, jms, jmacs = jump
        if not 0 <= at < k:
            raise ValueError(f"jump predictor position {at} out of range 0..{k - 1}")
        t = np.asarray(target, dtype=np.int64)
        if t.shape != (n,):
            raise ValueError(f"target must be [N] with N={n}, got shape {t.shape}")
        if ((t < 0) | (t >= k)).any():
            raise ValueError(f"jump targets must be exits 0..{k - 1}")
        open_ &= (cols < at) | (cols >= np.maximum(t, at)[:, None])
    p = open_ & passes.astype(bool)
    if jump_sure is not None:
        if jump is None:
            raise ValueError("jump_sure needs a jump predictor")
        sure = np.asarray(jump_sure, bool)
        if sure.shape != (n,):
            raise ValueError(f"jump_sure must be [N] with N={n}, got shape {sure.shape}")
        p |= sure[:, None] & open_ & (cols >= np.maximum(t, at)[:, None])  # leave at the first open exit from t
    p[:, -1] = True
    ex = _first(p)
    entered = open_ & (cols <= ex[:, None])
    # a gate for exit k is evaluated when the sample reaches stage gate_at[k]; skipped exits need none
    charged = gated[None, :] & (gate_at[None, :] <= ex[:, None])
    if jump is not None:  # gates after the jump predictor, for exits it skips, are not evaluated
        skipped = (cols >= at) & (cols < np.maximum(t, at)[:, None])
        charged &= ~(skipped & (gate_at[None, :] >= at))
    g_ms, g_macs = charged @ gate_ms, charged @ gate_macs
    if jump is not None:
        reached = (ex >= at).astype(float)
        g_ms, g_macs = g_ms + reached * jms, g_macs + reached * jmacs
    reads = np.zeros(k, np.int64) if reads is None else np.asarray(reads, dtype=np.int64)
    side_cols = cols < k - 1
    for e in np.nonzero(gated & (reads > 0))[0]:  # heads run only to feed a predictor their confidence
        entered |= charged[:, e : e + 1] & (cols < reads[e]) & side_cols & (cols < ex[:, None])
    if jump is not None and jump_reads > 0:
        entered |= (ex >= at)[:, None] & (cols < jump_reads) & side_cols & (cols < ex[:, None])
    if leave_ms is not None or leave_macs is not None:
        lms = np.zeros(k) if leave_ms is None else np.asarray(leave_ms, dtype=float)
        lmacs = np.zeros(k) if leave_macs is None else np.asarray(leave_macs, dtype=float)
        if lms.shape != (k,) or lmacs.shape != (k,):
            raise ValueError(f"leave_ms and leave_macs must have one value per exit (K={k})")
        g_ms, g_macs = g_ms + entered @ lms, g_macs + entered @ lmacs
    return path_outcome(name, costs, ex, entered, correct, gate_ms=g_ms, gate_macs=g_macs, overlap=overlap)


def simulate_jump(passes, correct, costs: CostModel, *, at: int, target, gate_ms: float, gate_macs: float = 0.0,
                  kept=None, overlap: bool = False, name: str = "jump") -> Outcome:
    """Exit predictor after stage ``at``: it names a target exit t (``target`` ``[N]``); the sample skips
    the side exits from ``at`` up to t, enters t, and if not confident there goes on as a cascade.
    Exits before ``at`` behave as in the cascade."""
    return simulate_gated(passes, correct, costs, kept=kept, jump=(at, target, gate_ms, gate_macs), overlap=overlap,
                          name=name)


def oracle_exit_cost(costs: CostModel, *, kept=None, chained: bool = False) -> np.ndarray:
    """``[K]`` ms of leaving at each exit knowing in advance that it is the one: the stages to it and its
    head, no buffer; with ``chained`` exits also every earlier kept head (buffered while it runs)."""
    k = costs.num_exits
    kept = _kept(costs, kept)
    alone = np.cumsum(costs.stage_ms) + costs.exit_ms
    if chained:
        through = np.where(kept[: k - 1], (costs.write_ms + costs.exit_ms + costs.read_ms)[: k - 1], 0.0)
        alone = alone + np.concatenate([[0.0], np.cumsum(through)])
    return alone


def simulate_oracle(correct, costs: CostModel, *, kept=None, chained: bool = False, name: str = "oracle",
                    good=None) -> Outcome:
    """The cheapest kept exit whose answer is correct; when none is, the cheapest kept exit (its wrong
    answer costs least). A per-sample lower bound on latency at the accuracy it reaches. With ``chained``
    exits leaving at k also runs every earlier kept head. ``good`` (``[N, K]`` bool, default ``correct``): the
    exits the oracle may pick; the answer given is still scored by ``correct`` (the accuracy-matched oracle passes
    "agrees with the final exit", see :func:`simulate_matched_oracle`)."""
    correct = _check(costs, "correct", correct).astype(bool)
    good = correct if good is None else _check(costs, "good", good).astype(bool)
    kept = _kept(costs, kept)
    n, k = correct.shape
    alone = np.where(kept, oracle_exit_cost(costs, kept=kept, chained=chained), np.inf)
    cand = np.where(good, alone[None, :], np.inf)
    ex = np.where(np.isfinite(cand).any(1), cand.argmin(1), int(alone.argmin()))
    cols = np.arange(k)[None, :]
    entered = (kept[None, :] & (cols < ex[:, None])) if chained else np.zeros((n, k), bool)
    return path_outcome(name, costs, ex, entered, correct, leave_buffered=False)


def simulate_matched_oracle(preds, correct, costs: CostModel, *, chained: bool = False,
                            name: str = "matched-oracle") -> Outcome:
    """The accuracy-matched oracle: the cheapest exit whose answer (``preds``, ``[N, K]`` class ids) agrees with
    the final exit's: every answer is ``full``'s, so its accuracy is exactly ``full``'s, and it never uses a label.
    It still knows ``full``'s answer in advance, so no deployable policy reaches it either, but it is the bar for a
    policy that keeps ``full``'s accuracy (the label oracle also gains accuracy where an early exit is right and the
    final one wrong)."""
    preds = np.asarray(preds)
    return simulate_oracle(correct, costs, chained=chained, name=name, good=preds == preds[:, -1:])


__all__ = ["Outcome", "oracle_exit_cost", "path_outcome", "simulate_cascade", "simulate_full", "simulate_gated",
           "simulate_jump", "simulate_matched_oracle", "simulate_oracle", "simulate_patience"]
