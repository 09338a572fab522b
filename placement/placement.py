"""``Placement``: which exits are kept, which are gated by which predictor placed after which stage,
an optional jump predictor, and the thresholds. A description only: it knows nothing of simulation."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Gate:
    """A fitted predictor (by name) evaluated after stage ``at`` (0-based)."""

    predictor: str
    at: int


@dataclass(frozen=True)
class Placement:
    """Per exit (K of them, the last is the trunk's own): kept or removed; per kept side exit, always
    entered (``None``) or gated by a :class:`Gate` with ``gate.at <= k``; optionally one jump predictor;
    thresholds (one per exit, ``None`` = the caller's default).

    ``leaves``: a learned exit decision, per exit a leave predictor (``Gate(name, k)``, read after exit k's head)
    that decides whether the sample leaves there instead of the confidence rule: on every kept side exit, without
    gates or jump (the form the runtime runs). ``jump_leave``: the jump predictor's sample leaves at the predicted
    exit without the confidence check where the predictor's probability reaches its cut (off by default)."""

    kept: tuple[bool, ...]
    gates: tuple[Gate | None, ...]
    jump: Gate | None = None
    thresholds: tuple[float, ...] | None = None
    label: str = field(default="", compare=False)
    leaves: tuple[Gate | None, ...] | None = None
    jump_leave: bool = False

    def __post_init__(self) -> None:
        k = len(self.kept)
        if k < 1:
            raise ValueError("a placement needs at least one exit")
        if len(self.gates) != k:
            raise ValueError(f"placement: {len(self.gates)} gate entries for {k} exits")
        if not self.kept[-1]:
            raise ValueError("placement: the final exit (the trunk's classifier) cannot be removed")
        if self.gates[-1] is not None:
            raise ValueError("placement: the final exit always answers and takes no gate")
        for i, (keep, g) in enumerate(zip(self.kept, self.gates)):
            if g is None:
                continue
            if not keep:
                raise ValueError(f"placement: exit {i} is removed but has a gate")
            if not 0 <= g.at <= i:
                raise ValueError(f"placement: the gate of exit {i} sits after stage {g.at}; it must be in 0..{i}")
        if self.jump is not None and not 0 <= self.jump.at < k:
            raise ValueError(f"placement: jump predictor after stage {self.jump.at}, stages are 0..{k - 1}")
        if self.thresholds is not None and len(self.thresholds) != k:
            raise ValueError(f"placement: {len(self.thresholds)} thresholds for {k} exits")
        if self.jump_leave and self.jump is None:
            raise ValueError("placement: jump_leave lets the jump predictor's sample leave at its target; give a jump")
        if self.leaves is not None:
            self._check_leaves()

    def _check_leaves(self) -> None:
        k, lv = len(self.kept), self.leaves
        if len(lv) != k:
            raise ValueError(f"placement: {len(lv)} leave entries for {k} exits")
        if lv[-1] is not None:
            raise ValueError("placement: the final exit always answers and takes no leave predictor")
        for i, g in enumerate(lv[:-1]):
            if (g is None) == bool(self.kept[i]):
                raise ValueError(f"placement: a learned exit decision takes every kept side exit and no removed one "
                                 f"(exit {i} is {'kept without' if g is None else 'removed with'} a leave predictor)")
            if g is not None and g.at != i:
                raise ValueError(f"placement: the leave predictor of exit {i} reads that exit's head: at must be {i}, "
                                 f"got {g.at}")
        if any(g is not None for g in self.gates) or self.jump is not None:
            raise ValueError("placement: a learned exit decision runs without gates or a jump")

    @property
    def learned(self) -> bool:
        """Whether leave predictors decide the side exits (a learned exit policy)."""
        return self.leaves is not None and any(g is not None for g in self.leaves)

    @property
    def num_exits(self) -> int:
        return len(self.kept)

    @classmethod
    def learned_on(cls, names: dict, num_exits: int, kept=None, label: str = "learned") -> "Placement":
        """Every kept side exit decided by its leave predictor (``names[k]``), no gates or jump."""
        kept = tuple(bool(v) for v in (kept if kept is not None else [True] * num_exits))
        return cls(kept, (None,) * num_exits, label=label,
                   leaves=tuple(Gate(names[i], i) if kept[i] and i < num_exits - 1 else None for i in range(num_exits)))

    @classmethod
    def plain(cls, num_exits: int, kept=None) -> "Placement":
        """Every (or the given) exit kept, none gated: BranchyNet."""
        kept = tuple(bool(v) for v in (kept if kept is not None else [True] * num_exits))
        return cls(kept, (None,) * num_exits)

    def key(self) -> tuple:
        return (self.kept, self.gates, self.jump, self.thresholds, self.leaves, self.jump_leave)

    def describe(self) -> str:
        parts = []
        for i, (keep, g) in enumerate(zip(self.kept, self.gates)):
            if i == self.num_exits - 1:
                parts.append(f"e{i}:final")
            elif not keep:
                parts.append(f"e{i}:-")
            elif self.learned:
                parts.append(f"e{i}:learn")
            elif g is None:
                parts.append(f"e{i}:open")
            else:
                parts.append(f"e{i}:gate@{g.at}")
        if self.jump is not None:
            parts.append(f"jump@{self.jump.at}" + ("+leave" if self.jump_leave else ""))
        if self.thresholds is not None:
            parts.append("T=[" + ",".join(f"{t:.3g}" for t in self.thresholds[:-1]) + "]")
        return " ".join(parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kept"] = list(self.kept)
        d["gates"] = [None if g is None else asdict(g) for g in self.gates]
        d["jump"] = None if self.jump is None else asdict(self.jump)
        d["thresholds"] = None if self.thresholds is None else [float(t) for t in self.thresholds]
        d["leaves"] = None if self.leaves is None else [None if g is None else asdict(g) for g in self.leaves]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Placement":
        try:
            return cls(tuple(bool(v) for v in d["kept"]),
                       tuple(None if g is None else Gate(str(g["predictor"]), int(g["at"])) for g in d["gates"]),
                       None if d.get("jump") is None else Gate(str(d["jump"]["predictor"]), int(d["jump"]["at"])),
                       None if d.get("thresholds") is None else tuple(float(t) for t in d["thresholds"]),
                       str(d.get("label", "")),
                       None if d.get("leaves") is None else tuple(None if g is None else Gate(str(g["predictor"]),
                                                                                            int(g["at"]))
                                                                  for g in d["leaves"]),
                       bool(d.get("jump_leave", False)))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a placement description: {e!r}; want keys kept, gates, jump, thresholds") from e

    def save(self, path: str | os.PathLike) -> Path:
        from branchy.core import write_json

        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Placement":
        return cls.from_dict(json.loads(Path(path).read_text()))


__all__ = ["Gate", "Placement"]
