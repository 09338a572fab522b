"""Exit decisions: confidence measures (entropy, max-prob, margin, ...) and the exit rule that owns the
measure, the thresholds and how they were tuned (numpy only)."""
from .measures import (LOWER_IS_CONFIDENT, MEASURES, all_confidences, check_measure, confidence, confidence_torch,
                       entropy)
from .rule import RULE_MEASURES, ExitRule, per_exit

__all__ = ["ExitRule", "LOWER_IS_CONFIDENT", "MEASURES", "RULE_MEASURES", "all_confidences", "check_measure",
           "confidence", "confidence_torch", "entropy", "per_exit"]
