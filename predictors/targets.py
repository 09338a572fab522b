"""What a predictor learns, derived from a cache: an exit's entropy, the gate at exit k, the target
exit under an exit rule (an :class:`~branchy.exits.ExitRule`, or thresholds read as entropy), or the
oracle exit. Exits are 0-based; the last exit always answers."""
from __future__ import annotations

import numpy as np

from branchy.cache import FeatureCache, row_slices
from branchy.exits import confidence
from branchy.core import Registry
from branchy.exits import ExitRule, per_exit

TARGETS: Registry = Registry("predictor target")


check_thresholds = per_exit  # one per exit, or per side exit


def as_rule(rule, num_exits: int) -> ExitRule:
    """An :class:`ExitRule`, or thresholds (one per exit or per side exit) read as an entropy rule."""
    if isinstance(rule, ExitRule):
        if rule.num_exits != num_exits:
            raise ValueError(f"exit rule with {rule.num_exits} thresholds for {num_exits} exits")
        return rule
    return ExitRule.given(check_thresholds(rule, num_exits), num_exits)


CHUNK = 1 << 16  # rows of logits read at a time


def passes(cache: FeatureCache, split: str, rule) -> np.ndarray:
    """``[N, K]`` bool: exit k's confidence passes the rule's T_k (the last exit always passes); the logits are
    read a chunk of rows at a time."""
    r = as_rule(rule, cache.num_exits)
    return _by_chunks(cache, split, lambda z, _: r.passes_logits(z), np.zeros((0, cache.num_exits), bool))


def _by_chunks(cache: FeatureCache, split: str, fn, empty) -> np.ndarray:
    """``fn(logits of a chunk of rows, rows)`` over the split, concatenated."""
    parts = [fn(cache.logits(split, rows=sl), sl) for sl in row_slices(cache.size(split), CHUNK)]
    return np.concatenate(parts) if parts else empty


def entropy_target(cache: FeatureCache, split: str, k: int) -> np.ndarray:
    """Entropy (nats) of exit k: the regression target of the NN-based entropy predictor."""
    return _by_chunks(cache, split, lambda z, _: confidence(z[:, k], "entropy"), np.zeros(0))


def gate_target(cache: FeatureCache, split: str, k: int, rule) -> np.ndarray:
    """1 where the sample would leave at exit k under the rule (so entering branch k is worth it)."""
    return passes(cache, split, rule)[:, k].astype(np.int64)


def exit_target(cache: FeatureCache, split: str, rule) -> np.ndarray:
    """The first exit at which the sample leaves under the rule (the last exit when none)."""
    return passes(cache, split, rule).argmax(1).astype(np.int64)


def targets_from_correct(correct: np.ndarray) -> np.ndarray:
    """``[N, K-1]`` bool from ``correct`` ``[N, K]``: side exit k's answer is right, or no later exit's is (leaving
    at k is no worse than going on)."""
    c = np.asarray(correct, bool)
    later = np.flip(np.logical_or.accumulate(np.flip(c, 1), 1), 1)  # later[:, j]: any of exits j..K-1 right
    return c[:, :-1] | ~later[:, 1:]


def leave_target(cache: FeatureCache, split: str, k: int) -> np.ndarray:
    """1 where leaving at side exit ``k`` is no worse than going on (its answer is right, or no later exit's is):
    the learned exit decision's target (no exit rule involved)."""
    if not 0 <= k < cache.num_exits - 1:
        raise ValueError(f"a leave predictor decides at a side exit: 0..{cache.num_exits - 2}, got {k}")

    def fn(z, rows):
        return targets_from_correct(z.argmax(-1) == cache.labels(split, rows=rows)[:, None])[:, k].astype(np.int64)
    return _by_chunks(cache, split, fn, np.zeros(0, np.int64))


def leave_cost(cache: FeatureCache) -> np.ndarray:
    """``[K]`` cost of leaving at each exit knowing in advance that it is the one, as the simulator's oracle counts
    it (``analysis.core.simulate.oracle_exit_cost``): the stages up to it and its head (with chained exits also
    every earlier head run on the way and its buffer), in the cache's measured ms at batch 1, or in MACs when the
    cache has no timing."""
    def vec(seg, col):
        return cache.cost_vector(seg, col)
    stage, head, buf = vec("stage", "ms_b1"), vec("exit", "ms_b1"), vec("buffer", "ms_b1")
    read = vec("buffer", "ms_b1_read") if "ms_b1_read" in cache.costs.columns else buf  # in-context profiles
    read = np.where(np.isnan(read), buf, read)
    if np.isnan(np.concatenate([stage, head, buf])).any():
        stage, head, buf = vec("stage", "macs"), vec("exit", "macs"), np.zeros(cache.num_exits)
        read = buf
    cost = np.cumsum(stage) + head
    if cache.chained:
        through = (buf + read + head)[:-1]
        cost = cost + np.concatenate([[0.0], np.cumsum(through)])
    return cost


def oracle_target(cache: FeatureCache, split: str, exit_cost=None) -> np.ndarray:
    """The simulator's oracle exit: the cheapest exit whose answer is correct, else the cheapest exit. ``exit_cost``
    (``[K]``): the cost of leaving at each exit (default :func:`leave_cost`, the cache's measured ms)."""
    cost = leave_cost(cache) if exit_cost is None else np.asarray(exit_cost, dtype=float)
    if cost.shape != (cache.num_exits,):
        raise ValueError(f"exit_cost must hold one cost per exit ({cache.num_exits}), got shape {cost.shape}")

    def cheapest_right(z, rows):
        correct = z.argmax(-1) == cache.labels(split, rows=rows)[:, None]
        cand = np.where(correct, cost[None, :], np.inf)
        return np.where(correct.any(1), cand.argmin(1), int(cost.argmin())).astype(np.int64)
    return _by_chunks(cache, split, cheapest_right, np.zeros(0, np.int64))


TARGETS.register("entropy", lambda cache, split, k, rule: entropy_target(cache, split, _need_k(k, "entropy")),
                 doc="exit k's entropy (nats): the NN-based entropy predictor's regression target")
TARGETS.register("gate", lambda cache, split, k, rule: gate_target(cache, split, _need_k(k, "gate"),
                                                                   _need_t(rule, "gate")),
                 doc="1 where the sample leaves at exit k under the rule: enter the branch or skip it")
TARGETS.register("exit", lambda cache, split, k, rule: exit_target(cache, split, _need_t(rule, "exit")),
                 doc="the first exit the sample leaves at under the rule: the NN-based exit predictor's class")
TARGETS.register("leave", lambda cache, split, k, rule: leave_target(cache, split, _need_k(k, "leave")),
                 doc="1 where leaving at side exit k is no worse than going on (its answer is right or no later one "
                     "is): a learned exit decision, read after exit k's head with the confidences so far")
TARGETS.register("oracle", lambda cache, split, k, rule: oracle_target(cache, split),
                 doc="the cheapest exit whose answer is correct (the cheapest exit when none is): the simulator's oracle")


def make_target(cache: FeatureCache, split: str, target: str, *, k: int | None = None, rule=None) -> np.ndarray:
    """The ``target`` (:data:`TARGETS`) of every sample of ``split``; ``k``: the exit it is for, ``rule``: the exit rule."""
    if target not in TARGETS.names():
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS.names())}")
    return TARGETS.get(target)(cache, split, k, rule)


def _need_k(k, target):
    if k is None:
        raise ValueError(f"target {target!r} needs the exit it predicts for (--for K)")
    return k


def _need_t(t, target):
    if t is None:
        raise ValueError(f"target {target!r} needs an exit rule (thresholds T, one per exit)")
    return t


__all__ = ["CHUNK", "TARGETS", "as_rule", "check_thresholds", "entropy_target", "exit_target", "gate_target",
           "leave_cost", "leave_target", "targets_from_correct", "make_target", "oracle_target", "passes"]
