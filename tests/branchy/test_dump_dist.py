"""The multi-process dump under torchrun (2 ranks, gloo, CPU): equal to a single-process dump byte for byte, and
a killed rank leaves no cache behind."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from branchy.cache import FeatureCache
from branchy.cache.distributed import shard_rows

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import os, sys, torch
torch.set_num_threads(1)
from tests.helpers import make_splits
from branchy.models import build_model
from branchy.cache import dump, dump_distributed
mode, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = build_model("b-lenet", exits=(0, 1), num_classes=4).eval()
splits = make_splits(n=(50, 37, 41))  # sizes that are not multiples of the ranks or of the batch
if mode == "kill" and os.environ.get("RANK") == "1":
    def batch(idx):  # rank 1 dies (kill -9) at its first calib batch, after writing its train rows
        os.kill(os.getpid(), 9)
    splits.calib.batch = batch
if mode == "raise" and os.environ.get("RANK") == "1":
    def batch(idx):
        raise ValueError("a bad image file")
    splits.test.batch = batch
if mode == "single":
    dump(model, splits, out, batch_size=8, profile=False, progress=False)
elif mode == "exists":  # what the CLI would print: the error's type decides "error" vs "internal error"
    from branchy.core import SetupError
    try:
        dump_distributed(model, splits, out, batch_size=8, profile=False, progress=False)
    except (SetupError, OSError, ValueError) as e:
        print(f"RANK{os.environ['RANK']} expected {type(e).__name__}: {e}", flush=True)
        sys.exit(2)
else:
    dump_distributed(model, splits, out, batch_size=8, profile=False, progress=False)
"""


def _run(tmp_path, args, ranks=None, timeout=240):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), *args] if ranks is None else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", str(script), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def test_shards_are_whole_batches_in_order_without_padding():
    for n in (0, 1, 7, 8, 9, 37, 50, 1000):
        for world in (1, 2, 3, 5):
            spans = [shard_rows(n, 8, world, r) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous: every row once, in order
            assert all(a % 8 == 0 for a, _ in spans)  # each starts on a batch of the single-process dump
            counts = [-(-(b - a) // 8) for a, b in spans]
            assert max(counts) - min(counts) <= 1
    with pytest.raises(ValueError, match="rank 2"):
        shard_rows(10, 8, 2, 2)


@pytest.mark.slow
def test_two_rank_dump_equals_single_process_and_a_killed_rank_leaves_no_cache(tmp_path):
    single = _run(tmp_path, ["single", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr[-3000:]
    two = _run(tmp_path, ["dist", str(tmp_path / "two")], ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = FeatureCache.open(tmp_path / "one", verify=True), FeatureCache.open(tmp_path / "two", verify=True)
    fa, fb = a.manifest["files"], b.manifest["files"]
    data = [f for f in fa if f.endswith(".npy")]
    assert len(data) == 3 * 5  # per split: labels, logits and a feature file per exit (2 side exits + final)
    for f in data:  # size and SHA-256 of every array file: byte for byte
        assert fa[f] == fb[f], f
    assert b.manifest["ranks"] == 2 and b.manifest["dist_backend"] == "gloo"
    np.testing.assert_array_equal(a.logits("calib"), b.logits("calib"))
    # rank 1 killed mid-dump: the job fails, no cache appears, and the next dump starts cleanly
    killed = _run(tmp_path, ["kill", str(tmp_path / "k")], ranks=2)
    assert killed.returncode != 0
    assert not (tmp_path / "k").exists()
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith("k.")]
    assert all(n == "k.lock" or n.startswith("k.partial-") for n in left), left
    again = _run(tmp_path, ["single", str(tmp_path / "k")])
    assert again.returncode == 0, again.stderr[-3000:]
    assert FeatureCache.open(tmp_path / "k", verify=True).manifest["files"]["calib/logits.npy"] == \
        fa["calib/logits.npy"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("k.partial")]
    json.dumps(b.manifest)  # the manifest stays plain JSON
    # rank 1 fails in Python: every rank stops with the error in words, and rank 0 removes its partial folder
    failed = _run(tmp_path, ["raise", str(tmp_path / "r")], ranks=2)
    assert failed.returncode != 0
    assert "1 of 2 ranks failed" in failed.stderr and "rank 1: ValueError: a bad image file" in failed.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("r.") and p.name != "r.lock"]


def test_a_refusal_by_rank_0_is_an_expected_one_line_error_on_every_rank(tmp_path):
    (tmp_path / "there").mkdir()  # an existing --out: rank 0 refuses, the others must say so, not report a bug
    r = _run(tmp_path, ["exists", str(tmp_path / "there")], ranks=2)
    assert r.returncode != 0
    assert "RANK0 expected FileExistsError" in r.stdout and "already exists" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "RANK1 expected RankFailedError: rank 1: the distributed dump did not start: rank 0: FileExistsError" \
        in r.stdout, r.stdout + r.stderr[-2000:]
