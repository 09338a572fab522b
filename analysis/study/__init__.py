"""The study: policies decided on calib and compared on test, the placement objective and search, the real
runtime against the simulator, the study config, the main job end to end, its outputs and the HTML report.
Imports :mod:`analysis.core` and :mod:`analysis.present`; only :mod:`analysis.cli` imports it."""
