"""Robust latency measurement: every segment timed in interleaved rounds (so that a noisy moment hits
all segments alike), per-round times kept, outlier rounds dropped, the median of the remaining rounds
reported with its spread, and a segment marked *unstable* when that spread is too wide. Also what the
machine was doing: threads, CPU model, load, idle cores."""
from __future__ import annotations

import os
import platform
import time
import warnings
from typing import Callable

import numpy as np
import pandas as pd

UNSTABLE_SPREAD = 0.10  # IQR / median of the kept rounds above which a segment is marked unstable
OUTLIER_MADS = 5.0      # a round whose slowdown exceeds the median by this many MADs is dropped


def interleaved_times(fns: dict[str, Callable[[], object]], *, rounds: int = 15, target_ms: float = 2.0,
                      warmup: int = 3, seed: int = 0, sync: Callable[[], None] | None = None,
                      clock: Callable[[], float] = time.perf_counter,
                      on_round: Callable[[int], None] | None = None,
                      fixed_reps: dict[str, int] | None = None, per_call_median: bool = False) -> pd.DataFrame:
    """ms per call of every ``fns`` entry, ``rounds`` rows × one column per entry. Each round runs every
    entry once, in a shuffled order, for a number of calls fixed up front so that one timing lasts about
    ``target_ms``. ``sync`` (e.g. ``torch.cuda.synchronize``) runs before each clock read; ``on_round(r)``
    at the start of round r (the sizing pass is round -1). ``fixed_reps[name]`` calls per timing instead
    (1: every call timed alone, as a real run makes it, cold caches included). ``per_call_median``: time
    every call of a timing alone and keep their median (a spike inside the timing does not count), instead
    of the mean of the calls."""
    if rounds < 3:
        raise ValueError(f"rounds must be >= 3 to tell an outlier round, got {rounds}")
    names = list(fns)
    sync = sync or (lambda: None)
    on_round = on_round or (lambda r: None)
    on_round(-1)
    reps = {}
    for name in names:  # warm up, then size each timing
        for _ in range(warmup):
            fns[name]()
        sync()
        t0 = clock()
        fns[name]()
        sync()
        one = max(clock() - t0, 1e-7)
        reps[name] = int(np.clip(target_ms / 1e3 / one, 1, 10_000))
    reps.update(fixed_reps or {})
    rng = np.random.default_rng(seed)
    out = np.zeros((rounds, len(names)))
    for r in range(rounds):
        on_round(r)
        for j in rng.permutation(len(names)):
            fn, n = fns[names[j]], reps[names[j]]
            if per_call_median:
                one = np.empty(n)
                for c in range(n):
                    sync()
                    t0 = clock()
                    fn()
                    sync()
                    one[c] = clock() - t0
                out[r, j] = float(np.median(one)) * 1e3
                continue
            sync()
            t0 = clock()
            for _ in range(n):
                fn()
            sync()
            out[r, j] = (clock() - t0) / n * 1e3
    return pd.DataFrame(out, columns=names)


def robust_summary(times: pd.DataFrame, *, unstable_spread: float = UNSTABLE_SPREAD,
                   outlier_mads: float = OUTLIER_MADS) -> pd.DataFrame:
    """Per entry: ``ms`` (median over kept rounds), ``iqr_ms``, ``spread`` (IQR / median), ``rounds``
    kept, ``unstable``. A round is dropped when its slowdown (the median over entries of its time over
    that entry's median) is an outlier: above the rounds' median slowdown by ``outlier_mads`` MADs."""
    t = np.asarray(times, dtype=float)
    med = np.median(t, 0)
    slow = np.median(t / np.where(med > 0, med, 1.0), 1)
    mad = np.median(np.abs(slow - np.median(slow))) * 1.4826
    keep = slow <= np.median(slow) + outlier_mads * max(mad, 0.01)
    k = t[keep]
    ms = np.median(k, 0)
    q1, q3 = np.percentile(k, [25, 75], axis=0)
    spread = (q3 - q1) / np.where(ms > 0, ms, 1.0)
    return pd.DataFrame({"name": list(times.columns), "ms": ms, "iqr_ms": q3 - q1, "spread": spread,
                         "rounds": int(keep.sum()), "rounds_dropped": int((~keep).sum()),
                         "unstable": spread > unstable_spread})


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def busy_cores(seconds: float = 0.25) -> float | None:
    """Cores busy right now with other work (this process is idle while it samples ``/proc/stat``);
    None where there is no ``/proc/stat``. Unlike the load average it does not remember this process's
    own training a minute ago."""
    def read():
        with open("/proc/stat") as f:
            v = [float(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + (v[4] if len(v) > 4 else 0.0)  # total, idle + iowait

    try:
        t0, i0 = read()
        time.sleep(seconds)
        t1, i1 = read()
    except (OSError, ValueError, IndexError):
        return None
    cores = os.cpu_count() or 1
    return max(0.0, cores * (1 - (i1 - i0) / max(t1 - t0, 1e-9)))


DRIFT_LIMIT = 1.25  # a stored profile whose speed probe differs from the machine's now by more than this factor


def speed_probe_ms(rounds: int = 21) -> float:
    """ms of a fixed workload (ten 128 x 128 float32 matrix products in torch, its current threads), the median of
    ``rounds`` timings after a warm-up: the machine's speed now, recorded with every profile so that a later run
    can tell how far the machine has drifted from it (:func:`drift`)."""
    import torch

    a = torch.ones(128, 128) / 128
    b = torch.eye(128)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def drift(recorded: dict | None, now_ms: float | None = None) -> float | None:
    """How much slower (> 1) or faster (< 1) the machine runs the speed probe now than when ``recorded`` (a
    profile's timing record, :func:`machine_state`) was taken; None when the record has no probe."""
    then = (recorded or {}).get("probe_ms")
    if not then or not np.isfinite(then) or then <= 0:
        return None
    return float((speed_probe_ms() if now_ms is None else now_ms) / then)


def machine_state(threads: int) -> dict:
    """Threads asked for, cores, 1-minute load, idle cores (cores not busy with other work, sampled for a
    quarter second; the load average where that is not possible), CPU model, the speed probe (ms,
    :func:`speed_probe_ms`); warns when the threads exceed the idle cores (oversubscribed threads can make
    batch-1 latency many times worse)."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    busy = busy_cores()
    idle = max(0.0, cores - busy) if busy is not None else (max(0.0, cores - load) if np.isfinite(load)
                                                            else float(cores))
    state = {"threads": int(threads), "cores": cores, "load_1min": round(float(load), 2),
             "idle_cores": round(idle, 2), "cpu": cpu_model(), "oversubscribed": bool(threads > idle + 0.5),
             "probe_ms": round(speed_probe_ms(), 5)}
    if state["oversubscribed"]:
        warnings.warn(f"timing with {threads} threads while only {idle:.1f} of {cores} cores are idle: latencies "
                      f"will be inflated and noisy; use --threads 1 or a quieter moment",
                      RuntimeWarning, stacklevel=2)
    return state


__all__ = ["DRIFT_LIMIT", "OUTLIER_MADS", "UNSTABLE_SPREAD", "busy_cores", "cpu_model", "drift", "interleaved_times",
           "machine_state", "robust_summary", "speed_probe_ms"]
