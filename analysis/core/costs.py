"""Cost model (docs/semantics.md §3.3): per-segment latencies S_k, E_k, W_k, R_k (ms, batch 1) and MACs, from
the cache's measurements (profile ``measured``) or from MACs and activation bytes through a device
profile (throughput, memory bandwidth, per-segment overhead). Predictor costs G come separately."""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

import numpy as np

from branchy.core import Registry


@dataclass(frozen=True)
class DeviceProfile:
    """A device for analytic costs. ``macs_per_s``: sustained compute; ``bytes_per_s``: memory bandwidth
    for buffering; ``overhead_ms``: fixed cost per segment; activations above ``onchip_bytes`` (if set)
    are buffered at ``spill_bytes_per_s``. ``measured`` means: use the cache's own timings."""

    name: str
    macs_per_s: float | None = None
    bytes_per_s: float | None = None
    overhead_ms: float = 0.0
    onchip_bytes: float | None = None
    spill_bytes_per_s: float | None = None
    description: str = ""
    source: str = ""

    @property
    def measured(self) -> bool:
        return self.name == "measured" or self.name.startswith("measured-")

    @property
    def backend(self) -> str:
        """The runtime backend a measured profile's costs come from (``measured``: eager)."""
        return self.name.split("-", 1)[1] if self.name.startswith("measured-") else "eager"

    def compute_ms(self, macs) -> np.ndarray:
        return np.asarray(macs, dtype=float) / self.macs_per_s * 1e3 + self.overhead_ms

    def buffer_ms(self, nbytes) -> np.ndarray:
        b = np.asarray(nbytes, dtype=float)
        ms = b / self.bytes_per_s * 1e3
        if self.onchip_bytes is not None and self.spill_bytes_per_s:
            spill = np.maximum(0.0, b - self.onchip_bytes)
            ms = np.minimum(b, self.onchip_bytes) / self.bytes_per_s * 1e3 + spill / self.spill_bytes_per_s * 1e3
        return ms


PROFILES: Registry[DeviceProfile] = Registry("device profile", plugins="branchy.profiles")
DEFAULT_PROFILE = "measured"  # the one default of every command (simulate, place, explain-gates), config and function:
# the cache's own timings; a cache dumped without latency names the analytic profiles to pass instead
PROFILES.register("measured", DeviceProfile("measured", description="the cache's own measured latencies (ms, batch 1)",
                                            source="branchy.runtime.timing: interleaved rounds at dump time (or branchy profile)"),
                  doc="the cache's own measured latencies (ms, batch 1)")
for _b, _doc in (("compiled", "TorchScript-frozen segments"), ("onnxruntime", "ONNX Runtime (CPU)")):
    PROFILES.register(f"measured-{_b}", DeviceProfile(f"measured-{_b}", description=f"the cache's latencies measured "
                                                      f"on {_doc} (branchy profile --backend {_b})",
                                                      source="branchy profile"),
                      doc=f"the cache's latencies measured on {_doc} (ms, batch 1)")
_REQUIRED = ("name", "macs_per_s", "bytes_per_s")


def profile_from_dict(d: dict, origin: str = "profile") -> DeviceProfile:
    missing = [k for k in _REQUIRED if d.get(k) is None]
    if missing:
        raise ValueError(f"{origin}: a device profile needs {', '.join(_REQUIRED)}; missing {', '.join(missing)}")
    known = {f.name for f in fields(DeviceProfile)}
    extra = set(d) - known
    if extra:
        raise ValueError(f"{origin}: unknown profile field(s) {sorted(extra)}; known: {sorted(known)}")
    d = dict(d)
    for k in ("macs_per_s", "bytes_per_s", "overhead_ms", "onchip_bytes", "spill_bytes_per_s"):
        if d.get(k) is not None:
            try:
                d[k] = float(d[k])  # YAML 1.1 reads "1.0e9" as a string
            except (TypeError, ValueError):
                raise ValueError(f"{origin}: {k} must be a number, got {d[k]!r}") from None
    for k in ("macs_per_s", "bytes_per_s", "spill_bytes_per_s"):
        if d.get(k) is not None and not (np.isfinite(d[k]) and d[k] > 0):
            raise ValueError(f"{origin}: {k} must be a finite number > 0, got {d[k]}")
    for k in ("overhead_ms", "onchip_bytes"):
        if d.get(k) is not None and not (np.isfinite(d[k]) and d[k] >= 0):
            raise ValueError(f"{origin}: {k} must be a finite number >= 0, got {d[k]}")
    name = d["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise ValueError(f"{origin}: name {name!r} must be letters, digits, '_', '.', '+' or '-' (it names output "
                         f"files), starting with a letter or digit")
    if name == "measured" or name.startswith("measured-"):
        raise ValueError(f"{origin}: the name {name!r} is reserved for the cache's own timings; name the device "
                         f"profile something else")
    for k in ("description", "source"):
        if k in d and not isinstance(d[k], str):
            raise ValueError(f"{origin}: {k} must be a string, got {d[k]!r}")
    return DeviceProfile(**d)


def load_profile_file(path: str | os.PathLike) -> DeviceProfile:
    """A profile from a JSON or YAML file (fields of :class:`DeviceProfile`)."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: cannot read the device profile ({e})") from None
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML ({' '.join(str(e).split())})") from None
    else:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{p}: a device profile file holds one mapping of fields")
    return profile_from_dict(d, str(p))


for _f in sorted(resources.files("analysis.core").joinpath("profiles").iterdir(), key=lambda f: f.name):
    if _f.name.endswith(".json"):
        _p = profile_from_dict(json.loads(_f.read_text()), _f.name)
        PROFILES.register(_p.name, _p, doc=_p.description)


def get_profile(name_or_path: str | DeviceProfile) -> DeviceProfile:
    """A registered profile by name, or a JSON/YAML file path."""
    if isinstance(name_or_path, DeviceProfile):
        return name_or_path
    s = str(name_or_path)
    if s.endswith((".json", ".yaml", ".yml")) or os.sep in s:
        if not Path(s).is_file():
            raise FileNotFoundError(f"no device profile file at {s!r}")
        return load_profile_file(s)
    if s.startswith("measured-") and s not in PROFILES:  # costs imported from a device (branchy profile --import)
        return DeviceProfile(s, description=f"the cache's latencies imported as {s[9:]!r} (ms, batch 1)",
                             source="branchy profile --import")
    return PROFILES.get(s)


def list_profiles() -> list[str]:
    return PROFILES.names()


def analytic_profiles() -> list[str]:
    """The registered profiles that price a cache from its MACs and bytes (not its own timings): what to pass for a
    cache without measured latency."""
    return [n for n in PROFILES.names() if not PROFILES.get(n).measured]


@dataclass(frozen=True)
class CostModel:
    """Per-segment costs of one network on one device (ms at batch 1; MACs and bytes per sample), plus
    what a real runtime spends outside the segments: ``sample_ms`` per sample and ``decision_ms`` per side
    exit entered (measured with the runtime for the ``measured`` profile; 0 for analytic profiles)."""

    profile: str
    stage_ms: np.ndarray
    exit_ms: np.ndarray
    write_ms: np.ndarray
    read_ms: np.ndarray
    stage_macs: np.ndarray
    exit_macs: np.ndarray
    act_bytes: np.ndarray
    device: DeviceProfile | None = None
    sample_ms: float = 0.0
    decision_ms: float = 0.0

    def __post_init__(self) -> None:
        k = len(self.stage_ms)
        for f in ("exit_ms", "write_ms", "read_ms", "stage_macs", "exit_macs", "act_bytes"):
            v = getattr(self, f)
            if np.shape(v) != (k,):
                raise ValueError(f"cost model: {f} has shape {np.shape(v)}, want ({k},) like stage_ms")
        for f in ("stage_ms", "exit_ms", "write_ms", "read_ms"):
            v = np.asarray(getattr(self, f), dtype=float)
            if not np.isfinite(v).all() or (v < 0).any():
                raise ValueError(f"cost model: {f} must be finite and >= 0, got {v}")
        for f in ("sample_ms", "decision_ms"):
            v = getattr(self, f)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"cost model: {f} must be finite and >= 0, got {v}")

    @property
    def num_exits(self) -> int:
        return len(self.stage_ms)

    @property
    def backend(self) -> str:
        """The runtime backend whose measured predictor latencies go with these costs (eager unless the
        profile is ``measured-BACKEND``)."""
        return self.device.backend if self.device is not None else "eager"

    @classmethod
    def from_arrays(cls, stage_ms, exit_ms, write_ms=None, read_ms=None, *, stage_macs=None, exit_macs=None,
                    act_bytes=None, profile: str = "given", sample_ms: float = 0.0,
                    decision_ms: float = 0.0) -> "CostModel":
        k = len(stage_ms)
        z = np.zeros(k)
        a = lambda v: z.copy() if v is None else np.asarray(v, dtype=float)  # noqa: E731
        return cls(profile, a(stage_ms), a(exit_ms), a(write_ms), a(read_ms), a(stage_macs), a(exit_macs), a(act_bytes),
                   None, float(sample_ms), float(decision_ms))

    @classmethod
    def from_cache(cls, cache, profile: str | DeviceProfile = DEFAULT_PROFILE) -> "CostModel":
        prof = get_profile(profile)
        if cache.manifest.get("costs_source") == "none":
            raise ValueError(f"cache {cache.path} holds no costs (written from arrays without costs=): its latency "
                             f"cannot be simulated; write it again with cache_from_arrays(..., costs="
                             f"branchy.cache.cost_table(K, stage_ms=[...] or stage_macs=[...], ...))")
        smacs, emacs = cache.cost_vector("stage", "macs"), cache.cost_vector("exit", "macs")
        if not prof.measured and np.isnan(np.concatenate([smacs, emacs])).any():
            raise ValueError(f"cache {cache.path} records no MACs for every stage and exit, so the modelled profile "
                             f"{prof.name!r} (MACs / throughput) cannot price it: use the measured profile, or give "
                             f"stage_macs and exit_macs to branchy.cache.cost_table")
        act = cache.cost_vector("buffer", "act_bytes")
        if prof.measured:
            return cls.from_table(cache, prof, cache.costs_for(prof.backend), cache.overhead(prof.backend))
        buf = prof.buffer_ms(act)
        return cls(prof.name, prof.compute_ms(smacs), prof.compute_ms(emacs), buf, buf.copy(), smacs, emacs, act, prof)

    @classmethod
    def from_table(cls, cache, profile: str | DeviceProfile, table, overhead: dict | None = None) -> "CostModel":
        """A measured cost model from one cost table of the cache (``costs.csv`` or an earlier profiling kept in
        ``costs_history/``) and its runtime overhead record."""
        prof = get_profile(profile)

        def vec(seg, col):
            rows = table[table.segment == seg].sort_values("k")
            if len(rows) != cache.num_exits:
                raise ValueError(f"cache {cache.path}: a cost table with {len(rows)} {seg} rows for "
                                 f"{cache.num_exits} exits")
            return rows[col].to_numpy(dtype=float)

        s, e, b = (vec(seg, "ms_b1") for seg in ("stage", "exit", "buffer"))
        if np.isnan(np.concatenate([s, e, b])).any():
            raise ValueError(f"cache {cache.path} has no measured latency for profile {prof.name!r} (dumped with "
                             f"--no-latency, or its costs were given as MACs only): pass an analytic profile instead, "
                             f"--device-profile NAME (or profile=NAME), NAME one of {', '.join(analytic_profiles())}")
        ov = overhead or {}
        r = vec("buffer", "ms_b1_read") if "ms_b1_read" in table.columns else b.copy()  # in context: its own read cost
        r = np.where(np.isnan(r), b, r)
        return cls(prof.name, s, e, b, r, vec("stage", "macs"), vec("exit", "macs"), vec("buffer", "act_bytes"),
                   prof, float(ov.get("sample_ms", 0.0) or 0.0), float(ov.get("decision_ms", 0.0) or 0.0))

    def predictor_ms(self, macs: float, measured_ms: float, profile: str | DeviceProfile | None = None) -> float:
        """G for a predictor: its measured ms under ``measured``, else its MACs through the profile."""
        prof = get_profile(profile or self.device or self.profile)
        return float(measured_ms) if prof.measured else float(prof.compute_ms(macs))

    def to_dict(self) -> dict:
        d = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}
        d.pop("device", None)
        return d


def measured_cost_models(cache, profile: str | DeviceProfile = DEFAULT_PROFILE) -> list[CostModel]:
    """Every independent profiling of a measured profile: the cache's current table first (the one studies decide
    on), then the earlier ones ``branchy profile`` kept in ``costs_history/`` (oldest first). An analytic profile is
    deterministic: one model. Ratios resample over these so their CIs carry the costs' own spread."""
    import pandas as pd

    prof = get_profile(profile)
    models = [CostModel.from_cache(cache, prof)]
    if not prof.measured:
        return models
    name = "costs" if prof.backend == "eager" else f"costs_{prof.backend}"
    hist = Path(cache.path) / "costs_history"
    for f in sorted(hist.glob(f"{name}_[0-9]*.csv")) if hist.is_dir() else ():
        stamp = f.stem[len(name) + 1:]
        rec = hist / f"timing_{prof.backend}_{stamp}.json"
        try:
            overhead = (json.loads(rec.read_text()).get("overhead") or {}) if rec.is_file() else {}
            models.append(CostModel.from_table(cache, prof, pd.read_csv(f), overhead))
        except (ValueError, OSError, KeyError, AttributeError) as e:
            raise ValueError(f"{f}: an earlier profiling of {cache.path} cannot be read ({e}); move it out of "
                             f"costs_history/ or re-profile") from None
    return models


__all__ = ["DEFAULT_PROFILE", "CostModel", "DeviceProfile", "PROFILES", "analytic_profiles", "get_profile",
           "list_profiles", "load_profile_file", "measured_cost_models", "profile_from_dict"]
