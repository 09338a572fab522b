"""What a predictor learns, derived from a cache: an exit's entropy, the gate at exit k, the target
exit under an exit rule (an :class:`~branchy.rule.ExitRule`, or thresholds read as entropy), or the
oracle exit. Exits are 0-based; the last exit always answers."""
from __future__ import annotations

import numpy as np

from branchy.cache import FeatureCache
from branchy.measures import confidence
from branchy.rule import ExitRule, per_exit

TARGETS = ("entropy", "gate", "exit", "oracle")


check_thresholds = per_exit  # one per exit, or per side exit


def as_rule(rule, num_exits: int) -> ExitRule:
    """An :class:`ExitRule`, or thresholds (one per exit or per side exit) read as an entropy rule."""
    if isinstance(rule, ExitRule):
        if rule.num_exits != num_exits:
            raise ValueError(f"exit rule with {rule.num_exits} thresholds for {num_exits} exits")
        return rule
    return ExitRule.given(check_thresholds(rule, num_exits), num_exits)


def passes(cache: FeatureCache, split: str, rule) -> np.ndarray:
    """``[N, K]`` bool: exit k's confidence passes the rule's T_k (the last exit always passes)."""
    z = np.asarray(cache.logits(split))
    return as_rule(rule, z.shape[1]).passes_logits(z)


def entropy_target(cache: FeatureCache, split: str, k: int) -> np.ndarray:
    """Entropy (nats) of exit k: the regression target of the NN-based entropy predictor."""
    return confidence(np.asarray(cache.logits(split)[:, k]), "entropy")


def gate_target(cache: FeatureCache, split: str, k: int, rule) -> np.ndarray:
    """1 where the sample would leave at exit k under the rule (so entering branch k is worth it)."""
    return passes(cache, split, rule)[:, k].astype(np.int64)


def exit_target(cache: FeatureCache, split: str, rule) -> np.ndarray:
    """The first exit at which the sample leaves under the rule (the last exit when none)."""
    return passes(cache, split, rule).argmax(1).astype(np.int64)


def oracle_target(cache: FeatureCache, split: str) -> np.ndarray:
    """The first exit whose answer is correct (the last exit when none is)."""
    correct = np.asarray(cache.logits(split)).argmax(-1) == cache.labels(split)[:, None]
    correct[:, -1] = True
    return correct.argmax(1).astype(np.int64)


def make_target(cache: FeatureCache, split: str, target: str, *, k: int | None = None, rule=None) -> np.ndarray:
    if target == "entropy":
        return entropy_target(cache, split, _need_k(k, target))
    if target == "gate":
        return gate_target(cache, split, _need_k(k, target), _need_t(rule, target))
    if target == "exit":
        return exit_target(cache, split, _need_t(rule, target))
    if target == "oracle":
        return oracle_target(cache, split)
    raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")


def _need_k(k, target):
    if k is None:
        raise ValueError(f"target {target!r} needs the exit it predicts for (--for K)")
    return k


def _need_t(t, target):
    if t is None:
        raise ValueError(f"target {target!r} needs an exit rule (thresholds T, one per exit)")
    return t
