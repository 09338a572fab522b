"""Training schemes side by side on the embedded MNIST-5k (B-LeNet, exits after blocks 0 and 1, the demo's
settings): test accuracy (%) per exit and training time, for joint (BranchyNet), boostnet, ic-only
(frozen trunk) and ztw (frozen trunk + cascade connections + ensemble). boostnet trains as BoostNet does, with
SGD (momentum 0.9; the default optimizer "auto" picks it) at lr 0.05, SGD's counterpart of Adam's 3e-3 here (at
3e-3 SGD reaches only 92.0 / 93.8 / 96.5 %); the other schemes train with Adam.

Run: .venv/bin/python bench/bench_schemes.py     (about 2 minutes on 2 CPU cores)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from branchy.data import load_dataset  # noqa: E402
from branchy.models import BackboneConfig  # noqa: E402
from branchy.train import TrainConfig, evaluate, train  # noqa: E402

splits = load_dataset("mnist5k")
net = BackboneConfig("b-lenet", exits=(0, 1))
base = dict(batch_size=64, lr=3e-3, augment_shift=2)
for name, kw in [("joint", dict(epochs=30)), ("boostnet", dict(epochs=30, scheme="boostnet", lr=0.05)),
                 ("ic-only", dict(scheme="ic-only", trunk_epochs=30, epochs=15)),
                 ("ztw", dict(scheme="ztw", trunk_epochs=30, epochs=15, ensemble_epochs=3))]:
    t = time.perf_counter()
    model = train(TrainConfig(**{**base, **kw}), net, splits, progress=False).model
    acc = evaluate(model, splits.test).accuracy
    print(f"{name:9s} test accuracy % per exit: {' / '.join(f'{100 * a:.1f}' for a in acc)}  "
          f"({time.perf_counter() - t:.0f} s)", flush=True)
