"""The bad-input catalogue, by kind: runs the parametrised bad-input, crafted-file, integrity (kills, concurrent
writers) and CLI-error tests and prints how many cases each kind holds and how many fail. Every case asserts the
exception type (or exit code), a phrase of the message, and that nothing was written or misread.

    python bench/bench_bad_inputs.py

Last line: ``bad inputs: F of N cases fail (K kinds)``."""
from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KINDS = {  # test file (only those made of bad-input cases) -> the kind of bad input it catalogues
    "tests/branchy/test_bad_inputs.py": "arguments, configs, devices, data options (one-line errors)",
    "tests/branchy/test_bad_files.py": "damaged or crafted files (checkpoints, caches, YAML)",
    "tests/branchy/test_integrity.py": "kills, concurrent writers, interrupted commits",
    "tests/predictors/test_predictor_files.py": "predictor folders (tampering, pickles, kills)",
    "tests/placement/test_bad_inputs.py": "Optuna storages and Dask schedulers",
    "tests/analysis/test_cli_errors.py": "command lines (exit 2, one line)",
}


class _Count:
    def __init__(self) -> None:
        self.n, self.bad = Counter(), Counter()

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            f = report.nodeid.split("::")[0]
            if report.outcome == "skipped":
                return
            self.n[f] += 1
            self.bad[f] += report.outcome == "failed"


def main() -> int:
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    c = _Count()
    pytest.main(["-q", "-p", "no:cacheprovider", "--no-header", "-rN", *KINDS], plugins=[c])
    print(f"{'kind':58s} {'cases':>6s} {'fail':>5s}")
    for f, kind in KINDS.items():
        print(f"{kind:58s} {c.n[f]:6d} {c.bad[f]:5d}")
    n, bad = sum(c.n.values()), sum(c.bad.values())
    print(f"bad inputs: {bad} of {n} cases fail ({len(KINDS)} kinds)")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
