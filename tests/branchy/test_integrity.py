"""Issue 12 (safety): one writer per cache (lock), --overwrite swap recovery, SHA-256 integrity,
clear errors for malformed manifests and damaged arrays."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.cli import main as cli
from branchy.cache import CacheError, FeatureCache, file_sha256
from branchy.cache.writer import CacheLockedError, target_lock
from branchy.cache import cache_from_arrays, dump, reprofile
from branchy.models import build_model
from tests.helpers import synthetic_arrays


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("b-lenet", exits=(0, 1), num_classes=4).eval()


def _dump(model, splits, out, **kw):
    return dump(model, splits, out, batch_size=48, profile=False, progress=False, **kw)


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(out.name + ".*") if p.name != out.name + ".lock")


@pytest.fixture(scope="module")
def small_model():
    return _model()


@pytest.fixture(scope="module")
def dumped(small_model, toy_splits, tmp_path_factory) -> Path:
    """A clean dump; tests copy it before damaging it."""
    return _dump(small_model, toy_splits, tmp_path_factory.mktemp("clean") / "cache").path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- (a) one writer at a time
def test_a_second_dump_is_refused_at_once_and_the_first_ends_complete(small_model, toy_splits, tmp_path,
                                                                      monkeypatch):
    first = _model()
    target = tmp_path / "cache"
    entered, go = threading.Event(), threading.Event()
    real = first.forward_exits

    def held(x, return_features=False):  # the first dump waits, lock held, inside its first batch
        entered.set()
        go.wait(60)
        return real(x, return_features)

    monkeypatch.setattr(first, "forward_exits", held)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("cache", _dump(first, toy_splits, target)))
    t.start()
    try:
        assert entered.wait(60)
        mine = _leftovers(target)
        assert len(mine) == 1 and mine[0].startswith("cache.partial-")
        t0 = time.perf_counter()
        with pytest.raises(CacheLockedError) as e:
            _dump(small_model, toy_splits, target, overwrite=True)
        assert time.perf_counter() - t0 < 5  # refused at once, not after waiting
        msg = str(e.value)
        assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg and "started" in msg
        assert "being written by another process (dump by" in msg
        assert _leftovers(target) == mine  # the second did not touch the first's folder
    finally:
        go.set()
        t.join(120)
    cache = FeatureCache.open(target, verify=True)
    assert cache.path == result["cache"].path and _leftovers(target) == []
    x, _ = toy_splits["test"].batch(torch.arange(len(toy_splits["test"])))
    with torch.no_grad():
        ref = torch.stack(real(x), 1).numpy()
    np.testing.assert_allclose(cache.logits("test"), ref, rtol=1e-5, atol=1e-5)


HOLDER = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"what": "dump", "pid": os.getpid(), "host": "elsewhere", "started": "then"}).encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_lock_of_a_dead_process_frees_itself_and_its_partial_is_removed(tmp_path):
    target = tmp_path / "cache"
    data = synthetic_arrays(n=(20, 20, 20))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "cache.lock")], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        (tmp_path / "cache.partial-1-dead" / "train").mkdir(parents=True)  # what a killed dump leaves
        with pytest.raises(CacheLockedError, match=f"dump by pid {proc.pid} on elsewhere, started then"):
            cache_from_arrays(target, data)
        assert (tmp_path / "cache.partial-1-dead").exists()  # not removed while the lock is held
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    cache_from_arrays(target, data)
    assert _leftovers(target) == [] and FeatureCache.open(target, verify=True).size("test") == 20


def test_reprofile_takes_the_same_lock(dumped, small_model, tmp_path):
    c = _copy(dumped, tmp_path / "c")
    with target_lock(c, "dump"):
        with pytest.raises(CacheLockedError, match=f"dump by pid {os.getpid()}"):
            reprofile(c, small_model, rounds=3, min_run_time=0.01)


# ----------------------------------------------------------------------------- integrity
def test_manifest_records_the_sha256_of_every_file(dumped):
    m = json.loads((dumped / "manifest.json").read_text())
    assert m["schema_version"] == 2
    on_disk = sorted(p.relative_to(dumped).as_posix() for p in dumped.rglob("*") if p.is_file()
                     and p.name != "manifest.json")
    assert sorted(m["files"]) == on_disk
    for rel, e in m["files"].items():
        assert e == {"size": (dumped / rel).stat().st_size, "sha256": file_sha256(dumped / rel)}


def test_a_corrupt_file_fails_verify_and_cache_info_but_passes_the_cheap_size_check(dumped, tmp_path, capsys):
    c = _copy(dumped, tmp_path / "c")
    f = c / "train" / "logits.npy"
    f.write_bytes(np.random.default_rng(0).bytes(f.stat().st_size))
    cache = FeatureCache.open(c, verify=False)  # documented: sizes only when asked (or a large cache), and they match
    with pytest.raises(CacheError, match=r"corrupt: train/logits.npy does not match the SHA-256 .*--overwrite"):
        FeatureCache.open(c, verify=True)
    with pytest.raises(CacheError, match="train/logits.npy is not a readable .npy array") as e:
        cache.logits("train")  # reading it says so, and never suggests pickle
    assert "pickle" not in str(e.value)
    capsys.readouterr()
    assert cli(["cache-info", "--cache", str(c), "--verify"]) != 0
    err = capsys.readouterr().err
    assert "train/logits.npy" in err and "corrupt" in err and "Traceback" not in err
    assert cli(["cache-info", "--cache", str(dumped), "--verify"]) == 0
    assert f"all {len(cache.manifest['files'])} files" in capsys.readouterr().out


def test_a_damaged_npy_header_is_a_clear_error(dumped, tmp_path):
    c = _copy(dumped, tmp_path / "c")
    f = c / "test" / "feat_0.npy"
    b = bytearray(f.read_bytes())
    b[20:40] = b"\x00" * 20
    f.write_bytes(bytes(b))
    with pytest.raises(CacheError, match="feat_0.npy is not a readable .npy array.*--overwrite") as e:
        FeatureCache.open(c, verify=False).features("test", 0)  # the reader says so too
    assert "pickle" not in str(e.value)


def test_an_old_cache_without_hashes_opens_but_cannot_be_verified(dumped, tmp_path):
    c = _copy(dumped, tmp_path / "c")
    m = json.loads((c / "manifest.json").read_text())
    m["schema_version"], m["files"] = 1, {k: v["size"] for k, v in m["files"].items()}
    (c / "manifest.json").write_text(json.dumps(m))
    assert FeatureCache.open(c).size("test") == 48
    with pytest.raises(CacheError, match="records no SHA-256 hashes .* cannot be verified; redump it.*--overwrite"):
        FeatureCache.open(c, verify=True)


def test_reprofile_keeps_the_hashes_in_step(dumped, small_model, tmp_path):
    c = _copy(dumped, tmp_path / "c")
    before = json.loads((c / "manifest.json").read_text())["files"]["costs.csv"]
    cache = reprofile(c, small_model, rounds=3, batch_size=8, min_run_time=0.01)
    after = cache.manifest["files"]["costs.csv"]
    assert after != before and after["sha256"] == file_sha256(c / "costs.csv")
    assert FeatureCache.open(c, verify=True) and not list(c.glob("*.new"))


def test_a_reprofile_killed_after_its_manifest_is_completed_by_the_next_writer(dumped, small_model, tmp_path):
    from branchy.cache import file_entry
    from branchy.cache.writer import recover_target

    c = _copy(dumped, tmp_path / "c")
    new = c / "costs.csv.new"  # the state of a kill between the manifest and the last rename
    new.write_text((c / "costs.csv").read_text() + "\n")
    m = json.loads((c / "manifest.json").read_text())
    m["files"]["costs.csv"] = file_entry(new)
    (c / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError, match="interrupted while committing costs.csv"):
        FeatureCache.open(c)
    with target_lock(c):
        recover_target(c)
    assert not new.exists() and FeatureCache.open(c, verify=True)


# ----------------------------------------------------------------------------- (c) --overwrite swap recovery
def test_an_overwrite_interrupted_between_its_renames_is_rolled_back(tmp_path, monkeypatch):
    import branchy.cache.dumping as bd

    target = tmp_path / "cache"
    one, two = synthetic_arrays(n=(20, 20, 20), seed=1), synthetic_arrays(n=(20, 20, 20), seed=2)
    cache_from_arrays(target, one)
    real = os.replace

    def interrupted(src, dst):  # Ctrl-C after target -> target.old, before partial -> target
        if Path(dst) == target and Path(src).name.startswith("cache.partial-"):
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(bd.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache_from_arrays(target, two, overwrite=True)
    monkeypatch.setattr(bd.os, "replace", real)
    assert not target.exists() and _leftovers(target) == ["cache.old"]  # the orphaned state
    with pytest.raises(CacheError, match="interrupted --overwrite left .*cache.old: run the dump again"):
        FeatureCache.open(target)
    with pytest.warns(RuntimeWarning, match="restored the old cache"), pytest.raises(FileExistsError):
        cache_from_arrays(target, two)  # the next writer rolls back, then refuses (no --overwrite)
    np.testing.assert_array_equal(FeatureCache.open(target, verify=True).labels("test"), one["test"][0])
    assert _leftovers(target) == []


def test_an_overwrite_killed_after_the_new_cache_was_finished_is_completed(tmp_path):
    target = tmp_path / "cache"
    one, two = synthetic_arrays(n=(20, 20, 20), seed=1), synthetic_arrays(n=(20, 20, 20), seed=2)
    cache_from_arrays(target, one)
    cache_from_arrays(tmp_path / "new", two)
    os.replace(target, tmp_path / "cache.old")  # what a kill -9 between the two renames leaves:
    os.replace(tmp_path / "new", tmp_path / "cache.partial-7-abcd")  # old aside, the finished new one
    (tmp_path / "cache.partial-8-dead").mkdir()  # and an unfinished one of another dead dump
    with pytest.warns(RuntimeWarning, match="completed the swap"), pytest.raises(FileExistsError):
        cache_from_arrays(target, one)
    np.testing.assert_array_equal(FeatureCache.open(target, verify=True).labels("test"), two["test"][0])
    assert _leftovers(target) == []


# ----------------------------------------------------------------------------- (d) malformed manifests
@pytest.mark.parametrize("edit, phrase", [
    (lambda m: [m], "not a cache manifest (a JSON object expected, found a list)"),
    (lambda m: {k: v for k, v in m.items() if k not in ("splits", "num_exits")}, "missing keys splits, num_exits"),
    (lambda m: {k: v for k, v in m.items() if k != "files"}, "missing keys files"),
    (lambda m: {**m, "files": ["train/labels.npy"]}, "malformed entries files"),
    (lambda m: {**m, "model": {"name": "x"}}, "malformed entries model.fingerprint"),
    (lambda m: {**m, "model": "x"}, "malformed entries model"),
])
def test_a_malformed_manifest_is_a_one_line_value_error(dumped, tmp_path, capsys, edit, phrase):
    c = _copy(dumped, tmp_path / "c")
    mf = c / "manifest.json"
    mf.write_text(json.dumps(edit(json.loads(mf.read_text()))))
    with pytest.raises(ValueError) as e:
        FeatureCache.open(c)
    msg = str(e.value)
    assert phrase in msg and str(mf) in msg and "--overwrite" in msg and "\n" not in msg
    capsys.readouterr()
    assert cli(["cache-info", str(c)]) == 2 and phrase in capsys.readouterr().err


def test_a_second_writer_is_refused_before_it_loads_anything(tmp_path, monkeypatch):
    import branchy.cache.dumping as dump_mod

    target = tmp_path / "cache"

    def loaded(*a, **kw):
        raise AssertionError("the checkpoint and the data were loaded before the lock was checked")

    monkeypatch.setattr(dump_mod, "load_for_dump", loaded)
    with target_lock(target, "dump"):  # another writer (an flock on another open file conflicts in-process too)
        with pytest.raises(CacheLockedError, match="being written by another process"):
            dump_mod.dump_checkpoint(tmp_path / "missing.pt", target)
    with pytest.raises(AssertionError, match="loaded before"):  # free: it goes on to load
        dump_mod.dump_checkpoint(tmp_path / "missing.pt", target)


KILL_REPROFILE = """
import sys, torch
from branchy.models import build_model
from branchy.cache import reprofile
torch.manual_seed(0)
model = build_model("b-lenet", exits=(0, 1), num_classes=4).eval()
reprofile(sys.argv[1], model, rounds=3, min_run_time=0.01)
"""


@pytest.mark.parametrize("at", ["reprofile:new-written", "reprofile:manifest-replaced"])
def test_a_profile_killed_at_its_final_write_leaves_a_whole_cache(dumped, small_model, tmp_path, at):
    """SIGKILL at a fault-injection point (branchy.core.faults), not a lucky timer: the cache opens whole (verified)
    with either the old costs or, once the next writer completes the commit, the new; nothing half-written."""
    from branchy.core.faults import ENV

    c = _copy(dumped, tmp_path / "c")
    old = (c / "costs.csv").read_bytes()
    env = {**os.environ, ENV: at, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", KILL_REPROFILE, str(c)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    assert (c / "costs.csv.new").exists()
    if at == "reprofile:new-written":  # the manifest still names the old table: the cache is the old one
        assert (c / "costs.csv").read_bytes() == old
        FeatureCache.open(c, verify=True)
    else:  # the manifest names the new table: refused until a writer completes the commit, never misread
        for verify in (False, True):  # even without hashing every file: the pending .new is noticed
            with pytest.raises(CacheError, match="interrupted while committing costs.csv"):
                FeatureCache.open(c, verify=verify)
    reprofile(c, small_model, rounds=3, min_run_time=0.01)  # the next writer recovers, then profiles
    cache = FeatureCache.open(c, verify=True)
    assert not (c / "costs.csv.new").exists() and (cache.costs["ms_b1"] > 0).all()


def test_a_same_size_damaged_array_of_a_small_cache_is_caught_on_open(dumped, tmp_path, monkeypatch):
    import branchy.cache.reader as bc

    c = _copy(dumped, tmp_path / "c")
    f = c / "test" / "logits.npy"
    b = bytearray(f.read_bytes())
    b[-1] ^= 0xFF  # one byte of the last logit: same size, another value
    f.write_bytes(bytes(b))
    with pytest.raises(CacheError, match="test/logits.npy do(es)? not match the SHA-256"):
        FeatureCache.open(c)  # small: hashed on open by default
    assert not FeatureCache.open(c, verify=False).verified  # asked for sizes only
    monkeypatch.setattr(bc, "AUTO_VERIFY_BYTES", 0)  # a large cache: sizes only unless asked, and it says so
    assert not FeatureCache.open(c).verified
    with pytest.raises(CacheError, match="SHA-256"):
        FeatureCache.open(c, verify=True)
