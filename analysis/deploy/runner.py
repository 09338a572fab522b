"""Run an exported early-exit package (``branchy export``) with numpy and ONNX Runtime only: no torch, no branchy.

This file is copied into every package as ``runner.py``; on the device::

    python runner.py PKG --input x.npy [--batch] [--graph]    # predictions and exits (.npy of raw or normalised images)
    python runner.py PKG profile --out costs.json [--rounds 15] # every segment timed on this device, ms at batch 1

``plan.json`` says what to run: the stages, exit heads (logits and their confidence), gates and jump predictor
as ONNX files, the exit rule's thresholds, a learned policy's leave predictors (their pooling as ONNX, the
logistic model's numbers: at each kept side exit the sample leaves when the score of its pooled features and the
entropy, max-probability and margin of every exit so far reaches the cut), and the SHA-256 of every file (a file
that differs is refused).
Batch 1 runs the segments one after another; a batch drops the rows that leave (the rest go on), as the
toolkit's runtime does; ``--graph`` runs the single ONNX graph with ``If`` nodes (batch 1). Latency is ms per
sample at batch 1 on ``--threads`` intra-op threads (default 1)."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

FORMAT = "branchy-export"
FORMAT_VERSION = 1


def _confidences(z: np.ndarray) -> np.ndarray:
    """``[B, 3 n]`` float32 from logits ``[B, n, C]``: entropy (nats), max-probability and margin of each of the n
    exits, in float64 first (branchy.exits.confidence's twin, as the leave predictors' inputs were computed)."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    ent = -(np.exp(logp) * logp).sum(axis=-1)
    e = np.exp(z)
    p = np.sort(e / e.sum(axis=-1, keepdims=True), axis=-1)
    return np.concatenate([ent, p[..., -1], p[..., -1] - p[..., -2]], 1).astype(np.float32)


class _Leave:
    """A leave predictor: its pooling (ONNX) and logistic score in scikit-learn's own order and precision (inputs
    standardised in float32, the dot product with float64 weights, the logistic function)."""

    def __init__(self, pool, entry: dict) -> None:
        self.pool, self.n = pool, int(entry["n_conf"])
        self.mean = np.asarray(entry["mean"], np.float64).astype(np.float32)
        self.scale = np.asarray(entry["scale"], np.float64).astype(np.float32)
        self.coef = np.asarray(entry["coef"], np.float64).reshape(-1, 1)
        self.b = float(entry["intercept"])
        self.cut = np.inf if entry["cut"] is None else float(entry["cut"])

    def score(self, h: np.ndarray, zs: list) -> np.ndarray:
        x = self.pool(h)[0]
        if self.n:
            x = np.concatenate([x, _confidences(np.stack(zs[: self.n], 1))], 1)
        xs = np.array(x, dtype=np.float32)
        xs -= self.mean
        xs /= self.scale
        return 1.0 / (1.0 + np.exp(-((xs @ self.coef).reshape(-1) + self.b)))

    def __call__(self, h: np.ndarray, zs: list) -> np.ndarray:
        return self.score(h, zs) >= self.cut


class PackageError(ValueError):
    """A package that is not complete, not this format's version, or whose files differ from their hashes."""


def _sha256(path: Path) -> str:  # branchy.cache.file_sha256's twin: this file runs where branchy is not installed
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_plan(pkg: str | os.PathLike, *, verify: bool = True) -> dict:
    """``plan.json`` of package ``pkg``, its format checked and (``verify``) every file's SHA-256 compared."""
    pkg = Path(pkg)
    try:
        plan = json.loads((pkg / "plan.json").read_text())
    except FileNotFoundError:
        raise PackageError(f"{pkg} is not an exported package: no plan.json (write one with `branchy export`)") from None
    except json.JSONDecodeError as e:
        raise PackageError(f"{pkg}/plan.json is not JSON ({e}): export the package again") from None
    if not isinstance(plan, dict) or plan.get("format") != FORMAT:
        raise PackageError(f"{pkg}/plan.json is not a {FORMAT} plan")
    if plan.get("format_version") != FORMAT_VERSION:
        raise PackageError(f"{pkg}/plan.json has format version {plan.get('format_version')}; this runner reads "
                           f"{FORMAT_VERSION}: use the runner.py exported with it")
    if verify:
        for name, digest in plan["files"].items():
            f = pkg / name
            if not f.is_file():
                raise PackageError(f"{pkg}: {name} is missing (plan.json lists it): copy the whole package")
            if _sha256(f) != digest:
                raise PackageError(f"{pkg}: {name} differs from the file exported (SHA-256 mismatch): it was changed "
                                   f"or damaged; export the package again")
    return plan


class Package:
    """An exported package, loaded: ONNX Runtime sessions of its segments (``threads`` intra-op threads)."""

    def __init__(self, pkg: str | os.PathLike, *, threads: int = 1) -> None:
        import onnxruntime as ort

        self.path, self.plan = Path(pkg), read_plan(pkg)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads, self._opts, self._ort = int(threads), opts, ort
        p = self.plan
        self.stages = [self._session(f) for f in p["stages"]]
        self.heads = [self._session(f) for f in p["heads"]]
        self.gates = {int(g["exit"]): (int(g["at"]), self._session(g["file"]),
                                       -np.inf if g["cut"] is None else float(g["cut"])) for g in p["gates"]}
        j = p.get("jump")
        self.jump = (int(j["at"]), self._session(j["file"])) if j else None
        self.leaves = {int(lv["exit"]): _Leave(self._session(lv["file"]), lv) for lv in p.get("leaves") or ()}
        k = len(self.stages)
        self.kept = [bool(v) for v in p["kept"]]
        self.lower = bool(p["rule"]["lower_is_confident"])
        never = -np.inf if self.lower else np.inf  # a threshold nothing passes (JSON null)
        self.t = [never if v is None else float(v) for v in p["rule"]["thresholds"]][: k - 1] + [0.0]

    def _session(self, name: str):
        s = self._ort.InferenceSession(str(self.path / name), self._opts, providers=["CPUExecutionProvider"])
        inp = s.get_inputs()[0].name
        return lambda a: s.run(None, {inp: a})

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        """Raw images ``[B, C, H, W]`` (uint8 0..255, or floats as the dataset stores them) normalised as in
        training; float32 input that is already normalised passes through with ``normalised=True``."""
        n = self.plan["input"]["normalise"]
        x = raw.astype(np.float32) * np.float32(n["scale"] if raw.dtype == np.uint8 else 1.0)
        mean = np.asarray(n["mean"], np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(n["std"], np.float32).reshape(1, -1, 1, 1)
        return (x - mean) / std

    def _passes(self, c, k: int):
        return c < self.t[k] if self.lower else c > self.t[k]

    def run_one(self, x: np.ndarray) -> tuple[int, int]:
        """One normalised sample ``[1, C, H, W]``: ``(prediction, exit)``."""
        if self.leaves:
            p, e = self._learned(x)
            return int(p[0]), int(e[0])
        k, h, enter = len(self.stages), x, {}
        for s in range(k):
            h = self.stages[s](h)[0]
            if self.jump is not None and self.jump[0] == s:
                for e in range(s, int(self.jump[1](h)[0][0])):
                    enter[e] = False
            for e, (at, gate, cut) in self.gates.items():
                if at == s and self.kept[e] and enter.get(e, True):
                    enter[e] = bool(gate(h)[0][0] >= cut)
            if s == k - 1:
                return int(self.heads[s](h)[0].argmax(1)[0]), s
            if not self.kept[s] or not enter.get(s, True):
                continue
            z, c = self.heads[s](h)
            if self._passes(float(c[0]), s):
                return int(z.argmax(1)[0]), s
        raise AssertionError("unreachable: the final exit answers")

    def _learned(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The learned exit decision on ``x`` ``[B, ...]``: at each kept side exit the head, then its leave
        predictor; rows it lets go answer there, the rest go on."""
        k, b = len(self.stages), len(x)
        pred, taken = np.empty(b, np.int64), np.empty(b, np.int64)
        rows, h, zs = np.arange(b), x, []
        for s in range(k):
            h = self.stages[s](h)[0]
            if s == k - 1:
                pred[rows], taken[rows] = self.heads[s](h)[0].argmax(1), s
                break
            if not self.kept[s]:
                continue
            z = self.heads[s](h)[0]
            zs.append(z)
            go = self.leaves[s](h, zs)
            pred[rows[go]], taken[rows[go]] = z[go].argmax(1), s
            if go.all():
                break
            rows, h, zs = rows[~go], np.ascontiguousarray(h[~go]), [v[~go] for v in zs]
        return pred, taken

    def run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised samples ``[B, C, H, W]``: predictions and exits ``[B]``; rows that leave are dropped."""
        if self.leaves:
            return self._learned(x)
        k, b = len(self.stages), len(x)
        pred, taken = np.empty(b, np.int64), np.empty(b, np.int64)
        rows, h, enter = np.arange(b), x, {}
        for s in range(k):
            h = self.stages[s](h)[0]
            if self.jump is not None and self.jump[0] == s:
                target = self.jump[1](h)[0].astype(np.int64).reshape(-1)
                for e in range(s, k - 1):
                    enter[e] = enter.get(e, np.ones(len(rows), bool)) & (target <= e)
            for e, (at, gate, cut) in self.gates.items():
                if at == s and self.kept[e]:
                    enter[e] = enter.get(e, np.ones(len(rows), bool)) & (gate(h)[0].reshape(-1) >= cut)
            if s == k - 1:
                pred[rows], taken[rows] = self.heads[s](h)[0].argmax(1), s
                break
            if not self.kept[s]:
                continue
            idx = np.flatnonzero(enter.pop(s, np.ones(len(rows), bool)))
            if len(idx) == 0:
                continue
            z, c = self.heads[s](np.ascontiguousarray(h[idx]))
            leave = self._passes(c.reshape(-1), s)
            pred[rows[idx[leave]]], taken[rows[idx[leave]]] = z[leave].argmax(1), s
            stay = np.ones(len(rows), bool)
            stay[idx[leave]] = False
            if not stay.any():
                break
            rows, h = rows[stay], np.ascontiguousarray(h[stay])
            enter = {e: d[stay] for e, d in enter.items()}
        return pred, taken

    def graph(self):
        """The single ONNX graph (``If`` nodes, batch 1): ``x -> (prediction, exit)``."""
        if not self.plan.get("graph"):
            raise PackageError(f"{self.path}: this package's learned exit decision runs segment by segment (its "
                               f"confidences and score in numpy): it has no single graph; run without --graph")
        run = self._session(self.plan["graph"])
        return lambda x: tuple(int(v.reshape(-1)[0]) for v in run(x))


def _shape(plan: dict, i: int) -> list[int]:
    return [1] + list(plan["activations"][i])


def _calls(fn, a, min_s: float) -> int:
    """How many calls of ``fn(a)`` take about ``min_s`` seconds (after a warm-up call)."""
    fn(a)
    t0 = time.perf_counter()
    fn(a)
    return max(1, int(min_s / max(time.perf_counter() - t0, 1e-6)))


def profile(pkg: Package, *, rounds: int = 15, min_run_time: float = 0.02, seed: int = 0) -> dict:
    """Every segment timed on this device at batch 1 in ``rounds`` interleaved rounds (segments in a shuffled
    order each round, each called repeatedly for about ``min_run_time`` s): per segment the median ms per call and
    its spread (IQR / median). Stage k and exit k read the activation shapes the plan records; buffer k is a copy
    of stage k's output (what the runtime keeps while the branch runs); gates, the jump and leave predictors as their
    own rows."""
    plan, g = pkg.plan, np.random.default_rng(seed)
    fns = {}
    for k, (stage, head) in enumerate(zip(pkg.stages, pkg.heads)):
        a_in = g.standard_normal(_shape(plan, k)).astype(np.float32)
        a_out = g.standard_normal(_shape(plan, k + 1)).astype(np.float32)
        fns[("stage", k)] = (stage, a_in)
        fns[("exit", k)] = (head, a_out)
        fns[("buffer", k)] = (np.copy, a_out)
    for e, (at, gate, _) in pkg.gates.items():
        fns[("gate", e)] = (gate, g.standard_normal(_shape(plan, at + 1)).astype(np.float32))
    if pkg.jump is not None:
        fns[("jump", pkg.jump[0])] = (pkg.jump[1], g.standard_normal(_shape(plan, pkg.jump[0] + 1)).astype(np.float32))
    c = int(plan["model"]["num_classes"])
    for e, lv in pkg.leaves.items():  # pooling, the confidences so far and the score, as the runner decides
        zs = [g.standard_normal((1, c)).astype(np.float32) for _ in range(max(lv.n, 1))]
        fns[("leave", e)] = (lambda a, lv=lv, zs=zs: lv.score(a, zs),
                             g.standard_normal(_shape(plan, e + 1)).astype(np.float32))
    names = {("gate", int(x["exit"])): x["predictor"] for x in plan["gates"]}
    names.update({("leave", int(x["exit"])): x["predictor"] for x in plan.get("leaves") or ()})
    if plan.get("jump"):
        names[("jump", int(plan["jump"]["at"]))] = plan["jump"]["predictor"]
    reps = {key: _calls(fn, a, min_run_time) for key, (fn, a) in fns.items()}
    times: dict = {key: [] for key in fns}
    for _ in range(rounds):
        for i in g.permutation(len(fns)):
            key = list(fns)[i]
            fn, a = fns[key]
            t0 = time.perf_counter()
            for _ in range(reps[key]):
                fn(a)
            times[key].append((time.perf_counter() - t0) * 1e3 / reps[key])
    rows = []
    for (seg, k), ts in times.items():
        q1, med, q3 = np.percentile(ts, [25, 50, 75])
        rows.append({"segment": seg, "k": int(k), "ms_b1": float(med), "ms_b1_spread": float((q3 - q1) / med),
                     **({"predictor": names[(seg, k)]} if (seg, k) in names else {})})
    return {"overhead": _overhead(pkg, {(r["segment"], r["k"]): r["ms_b1"] for r in rows}, rounds, min_run_time, g),
            "format": "branchy-costs", "format_version": 1, "package": plan["name"], "model": plan["model"],
            "threads": pkg.threads, "rounds": rounds, "machine": platform.machine(), "processor": platform.processor(),
            "system": platform.platform(), "onnxruntime": pkg._ort.__version__,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "segments": rows}


def _forced(pkg: Package, kept: list[bool], t: list[float]):
    """``pkg.run_one`` with its exits and thresholds replaced (a forced path), no gates or jump."""
    def run(x):
        saved = pkg.kept, pkg.t, pkg.gates, pkg.jump, pkg.leaves
        pkg.kept, pkg.t, pkg.gates, pkg.jump, pkg.leaves = kept, t, {}, None, {}
        try:
            return pkg.run_one(x)
        finally:
            pkg.kept, pkg.t, pkg.gates, pkg.jump, pkg.leaves = saved
    return run


def _overhead(pkg: Package, ms: dict, rounds: int, min_run_time: float, g) -> dict:
    """What the runner spends beyond its segments, as the toolkit's runtime overhead: ``sample_ms`` per sample (the
    full path: every stage and the final head, timed against their sum) and ``decision_ms`` per side exit entered
    (every side exit entered, none passing, against that sum), in interleaved rounds."""
    k = len(pkg.stages)
    never = -np.inf if pkg.lower else np.inf  # a threshold nothing passes
    x = g.standard_normal(_shape(pkg.plan, 0)).astype(np.float32)
    paths = {"full": _forced(pkg, [False] * (k - 1) + [True], [never] * (k - 1) + [0.0]),
             "vain": _forced(pkg, [True] * k, [never] * (k - 1) + [0.0])}
    reps = {n: _calls(f, x, min_run_time) for n, f in paths.items()}
    times: dict = {n: [] for n in paths}
    for _ in range(rounds):
        for n in g.permutation(list(paths)):
            t0 = time.perf_counter()
            for _ in range(reps[n]):
                paths[n](x)
            times[n].append((time.perf_counter() - t0) * 1e3 / reps[n])
    stages = sum(ms[("stage", i)] for i in range(k))
    sample = float(np.median(times["full"])) - stages - ms[("exit", k - 1)]
    side = sum(ms[("exit", i)] for i in range(k - 1))
    decision = (float(np.median(times["vain"])) - stages - side - ms[("exit", k - 1)] - sample) / max(k - 1, 1)
    return {"sample_ms": max(sample, 0.0), "decision_ms": max(decision, 0.0), "rounds": rounds,
            "full_path_ms": float(np.median(times["full"])), "vain_path_ms": float(np.median(times["vain"]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="runner.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("package", help="the exported package's folder")
    ap.add_argument("mode", nargs="?", default="run", choices=("run", "profile"))
    ap.add_argument("--input", help="run: a .npy of images [N, C, H, W] (uint8 raw, or float32 normalised)")
    ap.add_argument("--batch", action="store_true", help="run the whole array as one batch (default: one at a time)")
    ap.add_argument("--graph", action="store_true", help="run the single graph (batch 1)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    ap.add_argument("--rounds", type=int, default=15, help="profile: interleaved timing rounds")
    ap.add_argument("--out", help="profile: the costs file to write (default: print it)")
    a = ap.parse_args(argv)
    try:
        pkg = Package(a.package, threads=a.threads)
    except PackageError as e:
        print(f"runner.py: error: {e}", file=sys.stderr)
        return 2
    if a.mode == "profile":
        text = json.dumps(profile(pkg, rounds=a.rounds), indent=1, allow_nan=False)
        if a.out:
            Path(a.out).write_text(text)
            print(f"wrote {a.out}")
        else:
            print(text)
        return 0
    if not a.input:
        ap.error("run needs --input FILE.npy")
    raw = np.load(a.input, allow_pickle=False)
    want = tuple(pkg.plan["input"]["shape"][1:])
    if raw.ndim != 4 or tuple(raw.shape[1:]) != want or not np.isfinite(raw).all():
        print(f"runner.py: error: {a.input} holds an array of shape {raw.shape} ({raw.dtype}); the package takes "
              f"finite images [N, {', '.join(map(str, want))}] (uint8 raw, or float32 normalised)", file=sys.stderr)
        return 2
    x = pkg.preprocess(raw) if raw.dtype == np.uint8 else raw.astype(np.float32)
    if a.batch:
        pred, taken = pkg.run_batch(x)
    else:
        one = pkg.graph() if a.graph else pkg.run_one
        pred, taken = map(np.asarray, zip(*(one(x[i:i + 1]) for i in range(len(x)))))
    for p, e in zip(pred, taken):
        print(int(p), int(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
