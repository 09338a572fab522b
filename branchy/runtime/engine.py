"""The real early-exit runtime: runs a branchy net with the simulator's policies (cascade, gated,
removed exits) on actual inputs, at batch 1 or batched (rows that exit are dropped, the rest go on),
so simulated latency can be checked against measured latency.

Gates are plain callables (no predictors import): ``gate(h) -> bool [B]`` takes the activation at the
stage it sits after and says, per row, whether to enter the exit it guards."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..exits import LOWER_IS_CONFIDENT, check_measure, confidence_torch
from ..models import BranchyNet

Gate = tuple[int, Callable[[torch.Tensor], torch.Tensor]]  # (stage it sits after, callable)


def _jump_out(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A jump callable's ``target`` or ``(target, sure)`` as ``(target [B] long, sure [B] bool or None)``."""
    if isinstance(out, (tuple, list)):
        return torch.as_tensor(out[0]).long(), torch.as_tensor(out[1]).bool()
    return torch.as_tensor(out).long(), None


class EarlyExitRuntime:
    """Cascade with per-exit thresholds (entropy < T, or max_prob / margin > T), optional removed exits
    (``kept``) and gates in front of side exits (``gates[k] = (at, callable)``, ``at <= k``).
    ``thresholds`` may be an :class:`~branchy.exits.ExitRule` (its measure is then used). ``backend``:
    ``eager``, ``compiled`` or ``onnxruntime`` (:mod:`branchy.runtime.backends`). ``jump = (at, callable)``: an
    exit predictor after stage ``at`` names a target exit per row; the side exits from ``at`` up to it are
    skipped, the cascade goes on from the target. A jump callable that returns ``(target, sure)`` (jump-and-leave)
    lets a ``sure`` row leave at the first kept exit from its target on without the confidence check. ``leave[k]`` (every kept side exit, no gates or jump): a learned exit
    decision ``(h, [logits of the kept exits run so far]) -> bool [B]`` replaces the confidence rule."""

    def __init__(self, model: BranchyNet, thresholds, *, measure: str = "entropy",
                 kept: Sequence[bool] | None = None, gates: dict[int, Gate] | None = None,
                 buffer: bool = True, backend: str = "eager", segments: tuple | None = None,
                 jump: Gate | None = None, leave: dict[int, Callable] | None = None) -> None:
        k = model.num_exits
        from ..exits import ExitRule

        if isinstance(thresholds, ExitRule):
            measure, thresholds = thresholds.measure, thresholds.thresholds
        if len(thresholds) not in (k, k - 1):
            raise ValueError(f"{len(thresholds)} thresholds for {k} exits")
        self.model = model.eval()
        self.t = [float(v) for v in thresholds][: k - 1]
        self.measure = check_measure(measure)
        self.kept = list(kept) if kept is not None else [True] * k
        if len(self.kept) != k or not self.kept[-1]:
            raise ValueError(f"kept must have {k} entries and keep the final exit")
        self.gates = dict(gates or {})
        for e, (at, _) in self.gates.items():
            if not (0 <= e < k - 1 and 0 <= at <= e):
                raise ValueError(f"gate for exit {e} after stage {at}: need 0 <= at <= exit < {k - 1}")
        self.buffer = buffer
        self.backend = backend
        self.jump = jump  # (stage, callable h -> target exit [B]): skip side exits at..target-1
        if jump is not None and not 0 <= jump[0] < k:
            raise ValueError(f"jump predictor after stage {jump[0]}: stages are 0..{k - 1}")
        self.leave = dict(leave or {})  # side exit -> (h, logits of exits 0..k) -> bool [B]: a learned exit decision
        if self.leave and (self.gates or jump is not None or model.chained or set(self.leave) != {
                e for e in range(k - 1) if self.kept[e]}):
            raise ValueError("a learned exit decision (leave) takes every kept side exit, without gates, jump or "
                             "chained exits")
        from .backends import prepare

        # stages and heads prepared once on the backend (``segments`` shares them between runtimes)
        self._stages, self._heads = segments if segments is not None else prepare(model, backend)
        if model.chained and (not all(self.kept) or self.gates or jump is not None):
            raise ValueError(f"{model.config.name} has chained exits ({model.config.chain}"
                             f"{', ensemble' if model.config.ensemble else ''}): exit k's answer needs every earlier "
                             f"head, so removing or gating an exit changes later answers; refused. Run the cascade "
                             f"(for the plain network: thresholds that never pass)")

    def _confident(self, c: torch.Tensor, k: int) -> torch.Tensor:
        return c < self.t[k] if LOWER_IS_CONFIDENT[self.measure] else c > self.t[k]

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions ``[B]`` and the exit each row left at ``[B]``."""
        if x.shape[0] == 1 and not self.model.chained:
            return self._one(x)
        return self._batched(x)

    def _one(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch 1, lean: no row bookkeeping, one Python decision per exit entered."""
        if self.leave:
            return self._learned_one(x)
        plan, last = self._plan, len(self._plan) - 1
        h = x
        enter: dict[int, bool] = {}
        forced = False
        jump_at = self.jump[0] if self.jump is not None else -1
        for s, (stage, head, gates_here, keep, t, lower) in enumerate(plan):
            h = stage(h)
            if s == jump_at:  # the exit predictor: skip the side exits before its target
                target, sure = _jump_out(self.jump[1](h))
                for e in range(s, int(target[0])):
                    enter[e] = False
                forced = sure is not None and bool(sure[0])  # jump-and-leave: answer at the next exit entered
            for e, gate in gates_here:
                if enter.get(e, True):
                    enter[e] = bool(gate(h)[0])
            if s == last:
                return head(h).argmax(1), torch.tensor([s])
            if not keep or not enter.get(s, True):
                continue
            z = head(h.clone() if self.buffer else h)
            if forced:
                return z.argmax(1), torch.tensor([s])
            c = float(confidence_torch(z, self.measure)[0])
            if (c < t) if lower else (c > t):
                return z.argmax(1), torch.tensor([s])
        raise AssertionError("unreachable: the final exit always answers")

    def _learned_one(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned exit decision at batch 1, lean: at each kept side exit the head, then its scorer."""
        last, h, zs = self.model.num_exits - 1, x, []
        for s in range(last + 1):
            h = self._stages[s](h)
            if s == last:
                return self._heads[s](h).argmax(1), torch.tensor([s])
            if not self.kept[s]:
                continue
            z = self._heads[s](h.clone() if self.buffer else h)
            zs.append(z)
            if bool(self.leave[s](h, zs)[0]):
                return z.argmax(1), torch.tensor([s])
        raise AssertionError("unreachable: the final exit always answers")

    def _learned(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned exit decision on a batch: at each kept side exit every remaining row runs the head, then
        its scorer (``leave[k](h, logits so far)``); rows it lets go answer there, the rest go on."""
        k, b = self.model.num_exits, x.shape[0]
        pred = torch.empty(b, dtype=torch.long)
        taken = torch.empty(b, dtype=torch.long)
        rows, h, zs = torch.arange(b), x, []
        for s in range(k):
            h = self._stages[s](h)
            if s == k - 1:
                pred[rows], taken[rows] = self._heads[s](h).argmax(1), s
                break
            if not self.kept[s]:
                continue
            z = self._heads[s](h.clone() if self.buffer else h)
            zs.append(z)
            go = self.leave[s](h, zs).bool()
            pred[rows[go]], taken[rows[go]] = z[go].argmax(1), s
            if go.all():
                break
            rows, h, zs = rows[~go], h[~go], [zz[~go] for zz in zs]
        return pred, taken

    @property
    def _plan(self):
        """Per stage, prepared once: the stage, its exit head, the gates placed after it, kept, T, direction."""
        if getattr(self, "_plan_cache", None) is None:
            k = self.model.num_exits
            lower = LOWER_IS_CONFIDENT[self.measure]
            self._plan_cache = [(self._stages[s], self._heads[s],
                                 [(e, g) for e, (at, g) in self.gates.items() if at == s and self.kept[e]],
                                 self.kept[s], self.t[s] if s < k - 1 else 0.0, lower) for s in range(k)]
        return self._plan_cache

    def _batched(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.leave:
            return self._learned(x)
        k = self.model.num_exits
        b = x.shape[0]
        pred = torch.empty(b, dtype=torch.long, device=x.device)
        taken = torch.empty(b, dtype=torch.long, device=x.device)
        rows = torch.arange(b, device=x.device)
        h = x
        decisions: dict[int, torch.Tensor] = {}
        forced = None  # jump-and-leave: rows that answer at the next exit they enter
        # chained exits (BoostNet, ZTW): what earlier exits computed, per remaining row; a row that
        # skipped an exit contributes zeros for it
        state: dict = {"prev": None, "logp": {}}
        for s in range(k):
            h = self._stages[s](h)
            if self.jump is not None and self.jump[0] == s:  # the exit predictor: skip exits before its target
                target, sure = _jump_out(self.jump[1](h))
                for e in range(s, k - 1):
                    decisions[e] = (target <= e) if e not in decisions else decisions[e] & (target <= e)
                if sure is not None:  # jump-and-leave: sure rows answer at the first kept exit from their target
                    forced = sure.bool() & (target < k - 1)
            for e, (at, gate) in self.gates.items():  # predictors placed after this stage
                if at == s and self.kept[e]:
                    g = gate(h).bool()
                    decisions[e] = g if e not in decisions else decisions[e] & g
            if s == k - 1:
                pred[rows] = self._exit(s, h, None, state, len(rows)).argmax(1)
                taken[rows] = s
                break
            if not self.kept[s]:
                continue
            enter = decisions.pop(s, None)
            if enter is not None and not enter.all():
                idx = enter.nonzero().flatten()
                if len(idx) == 0:
                    continue
            else:
                idx = None
            hb = h.clone() if self.buffer else h  # the activation buffered while the branch runs
            z = self._exit(s, hb if idx is None else hb[idx], idx, state, len(rows))
            leave = self._confident(confidence_torch(z, self.measure), s)
            if forced is not None:
                leave = leave | (forced if idx is None else forced[idx])
            if leave.any():
                sel = leave.nonzero().flatten()
                who = rows if idx is None else rows[idx]
                pred[who[sel]] = z[sel].argmax(1)
                taken[who[sel]] = s
                keep = torch.ones(len(rows), dtype=torch.bool, device=x.device)
                keep[(sel if idx is None else idx[sel])] = False
                if not keep.any():
                    return pred, taken
                rows, h = rows[keep], (hb if self.buffer else h)[keep]
                decisions = {e: d[keep] for e, d in decisions.items()}
                forced = None if forced is None else forced[keep]
                if state["prev"] is not None:
                    state["prev"] = state["prev"][keep]
                state["logp"] = {i: v[keep] for i, v in state["logp"].items()}
        return pred, taken

    def _exit(self, k: int, h: torch.Tensor, idx: torch.Tensor | None, state: dict, n: int) -> torch.Tensor:
        """Exit k on the rows ``idx`` of the ``n`` remaining ones (all when None), keeping the chain state."""
        m = self.model
        if not m.chained:
            return self._heads[k](h)
        if idx is None:
            return m.run_exit(k, h, state)
        sub = {"prev": None if state["prev"] is None else state["prev"][idx],
               "logp": {i: v[idx] for i, v in state["logp"].items()}}
        z = m.run_exit(k, h, sub)
        prev = sub["prev"]
        full = torch.zeros(n, prev.shape[1], dtype=prev.dtype, device=prev.device) if state["prev"] is None \
            else state["prev"].clone()
        full[idx] = prev
        state["prev"] = full
        if k in sub["logp"]:
            full = torch.zeros(n, z.shape[1], dtype=z.dtype, device=z.device)
            full[idx] = sub["logp"][k]
            state["logp"][k] = full
        return z


__all__ = ["EarlyExitRuntime", "Gate"]
