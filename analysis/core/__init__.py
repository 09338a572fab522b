"""The simulator core: costs and device profiles, the vectorised simulator, the one evaluator (evidence),
threshold sweeps and fronts, calibration on calib, Learn-then-Test risk control and conformal risk control
(``crc``), the learned exit policy's core (``learned``: a cross-fitted scorer per side exit, its cuts and its
simulation), bootstrap statistics.
Imports nothing else from ``analysis``."""
