"""Running and timing a branchy net: the early-exit runtime, execution backends (eager, compiled, ONNX
Runtime), interleaved timing, per-segment cost profiles and path timing. Names are imported when first used, so
timing needs no torch."""
from ..core import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "EarlyExitRuntime": "engine",
    "BACKENDS": "backends", "compile_module": "backends", "example_inputs": "backends", "list_backends": "backends",
    "onnx_model": "backends", "prepare": "backends",
    "DRIFT_LIMIT": "timing", "busy_cores": "timing", "drift": "timing", "interleaved_times": "timing",
    "machine_state": "timing", "robust_summary": "timing",
    "COST_COLUMNS": "profile", "count_macs": "profile", "exit_with_confidence": "profile", "overhead_fns": "profile",
    "overhead_from_times": "profile", "profile_segments": "profile", "runtime_overhead": "profile",
    "in_context_costs": "pathtime", "param_names": "pathtime", "sample_inputs": "pathtime",
})
