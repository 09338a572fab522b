"""predictors: targets from the cache, entropy forecasters, exit classifiers and gates, their cost."""
from .fit import evaluation_table, fit_predictor, fit_predictors
from .fitted import FittedPredictor
from .spec import PredictorSpec
from .inputs import make_inputs
from .models import PREDICTOR_MODELS, list_predictor_models, make_estimator
from .store import load_predictors, save_predictors
from .targets import TARGETS, exit_target, gate_target, make_target, oracle_target, passes

__all__ = ["FittedPredictor", "PredictorSpec", "evaluation_table", "fit_predictor", "fit_predictors",
           "load_predictors",
           "save_predictors", "make_inputs", "PREDICTOR_MODELS", "list_predictor_models", "make_estimator",
           "TARGETS", "exit_target", "gate_target", "make_target", "oracle_target", "passes"]
