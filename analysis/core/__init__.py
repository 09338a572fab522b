"""The simulator core: costs and device profiles, the vectorised simulator, the one evaluator (evidence),
threshold sweeps and fronts, calibration on calib, Learn-then-Test risk control, bootstrap statistics.
Imports nothing else from ``analysis``."""
