"""``nsga2``: multi-objective placement search on Optuna (NSGA-II, mean latency vs accuracy), for spaces past
the exhaustive limit (many exits, gates at several positions, threshold options).

Each placement is a set of categorical Optuna parameters: ``exit{i}`` per side exit (``-`` removed, ``open``, or
``<predictor>@<stage>`` for a gate), ``jump`` (``none`` or ``<predictor>@<stage>``) and, when there are several
threshold options, ``thresholds`` (an index into them). Trials are asked a generation at a time, the new
placements among them scored together by the search's evaluator (memoised, joblib in parallel), and told back.
A child the study already holds is told ``PRUNED`` (marked ``duplicate``): it costs no scoring, counts in no
population and not against the budget; the sampler is asked again, and after ``RETRIES`` asks per child the
duplicate is replaced by an unseen one-parameter neighbour. Optuna (the ``optuna`` extra) is imported only when
the strategy runs.

With ``storage`` (an Optuna storage URL, e.g. ``sqlite:///search.db``) and ``study_name`` the study persists: a
later call with the same space adds ``trials`` new placements to it. The search itself runs on an in-memory copy
(fast and the same with or without storage); each generation's scored trials, with the metrics of their
placements, are then added to the stored study, so an interrupted search loses at most one generation and a
resumed one scores only new placements, after re-scoring the stored Pareto set to check that the objective is
the one the study was scored with. One search per stored study at a time."""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np

from branchy.core import require_extra

from .evaluator import Evaluator
from .optuna_storage import check_storage
from .placement import Placement
from .selection import non_dominated
from .strategies import STRATEGIES, SearchContext, all_structures, make_placement

DEFAULT_TRIALS = 200
DEFAULT_POPULATION = 10
DEFAULT_STUDY = "placement-nsga2"
STALL_BATCHES = 5  # stop early after this many generations in a row propose no new placement
RETRIES = 10  # asks per child before a duplicate is replaced by an unseen neighbour
DIRECTIONS = ("minimize", "maximize")  # mean_ms, accuracy_%
_INTERNAL = {"placement", "describe", "_order", "candidate"}


def _label(option, none: str = "open") -> str:
    if option is False:
        return "-"
    if option is None:
        return none
    return f"{option.predictor}@{option.at}"


class _Encoding:
    """Placement <-> Optuna parameters (categorical, labels as strings so a stored study reads plainly)."""

    def __init__(self, space, threshold_options) -> None:
        self.space = space
        # equal threshold vectors are one option (dict keeps the first of each, in order)
        self.thresholds = list(dict.fromkeys(None if t is None else tuple(float(x) for x in t)
                                             for t in threshold_options))
        self.options: dict[str, dict] = {}
        for i in range(space.num_exits - 1):
            self.options[f"exit{i}"] = {_label(o): o for o in space.side_options(i)}
        self.options["jump"] = {_label(j, none="none"): j for j in [None, *space.jump_options]}
        if len(self.thresholds) > 1:
            self.options["thresholds"] = {j: j for j in range(len(self.thresholds))}
        self.size = math.prod(len(o) for o in self.options.values())
        text = json.dumps({"params": {n: list(o) for n, o in self.options.items()}, "directions": DIRECTIONS,
                           "thresholds": [None if t is None else [repr(x) for x in t] for t in self.thresholds]},
                          sort_keys=True)
        self.signature = hashlib.sha256(text.encode()).hexdigest()[:16]

    def distributions(self) -> dict:
        from optuna.distributions import CategoricalDistribution

        return {n: CategoricalDistribution(list(o)) for n, o in self.options.items()}

    def decode(self, params: dict) -> Placement:
        k = self.space.num_exits
        side = [self.options[f"exit{i}"][params[f"exit{i}"]] for i in range(k - 1)]
        t = self.thresholds[params["thresholds"]] if "thresholds" in self.options else self.thresholds[0]
        return make_placement(self.space, side, self.options["jump"][params["jump"]], t)

    def encode(self, p: Placement) -> dict:
        params = {f"exit{i}": _label(g if g is not None else (None if kept else False))
                  for i, (kept, g) in enumerate(zip(p.kept[:-1], p.gates[:-1]))}
        params["jump"] = _label(p.jump, none="none")
        if "thresholds" in self.options:
            params["thresholds"] = self.thresholds.index(p.thresholds)
        return params

    def repair(self, params: dict, seen: set, rng: np.random.Generator) -> Placement | None:
        """An unseen placement for a duplicate child: a random one-parameter change of it, else a random
        placement (None when a thousand draws find none)."""
        moves = [(n, v) for n, o in self.options.items() for v in o if v != params[n]]
        for i in rng.permutation(len(moves)):
            n, v = moves[i]
            p = self.decode({**params, n: v})
            if p.key() not in seen:
                return p
        labels = {n: list(o) for n, o in self.options.items()}
        for _ in range(1000):
            p = self.decode({n: ls[rng.integers(len(ls))] for n, ls in labels.items()})
            if p.key() not in seen:
                return p
        return None

    def all_placements(self) -> list[Placement]:
        """Every placement, in the order of ``budget`` (threshold options outermost)."""
        structures = all_structures(self.space, self.space.size())
        return [make_placement(self.space, c, j, t) for t in self.thresholds for c, j in structures]


def _metrics(row: dict) -> dict:
    """The objective's numeric metrics of an evaluator row, as plain floats (stored with the trial)."""
    return {k: float(v) for k, v in row.items()
            if k not in _INTERNAL and isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}


def _check(trials, population, storage, study_name, threshold_options) -> None:
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 1:
        raise ValueError(f"nsga2: trials must be an integer >= 1 (new placements to score), got {trials!r}")
    if isinstance(population, bool) or not isinstance(population, (int, np.integer)) or population < 2:
        raise ValueError(f"nsga2: population must be an integer >= 2 (placements per generation), got {population!r}")
    if storage is not None and not isinstance(storage, str):
        raise ValueError(f"nsga2: storage must be an Optuna storage URL such as 'sqlite:///search.db', got {storage!r}")
    if storage is not None:
        check_storage(storage)
    if study_name is not None and (not isinstance(study_name, str) or not study_name):
        raise ValueError(f"nsga2: study_name must be a non-empty string, got {study_name!r}")
    if study_name is not None and storage is None:
        raise ValueError(f"nsga2: study_name={study_name!r} names a stored study; give storage= too "
                         f"(e.g. 'sqlite:///search.db')")
    if len(threshold_options) == 0:
        raise ValueError("nsga2: threshold_options is empty; give at least one (None: the objective's default)")


def _open(optuna, ctx: SearchContext, enc: _Encoding, population: int, storage, name: str, where: str):
    """Create the stored study, or load it and check it was built on this space, population and reference."""
    study = optuna.create_study(storage=storage, study_name=name, directions=list(DIRECTIONS), load_if_exists=True)
    attrs = study.user_attrs
    if study.get_trials(deepcopy=False) or attrs:
        if [d.name.lower() for d in study.directions] != list(DIRECTIONS) or attrs.get("space") != enc.signature:
            raise ValueError(f"nsga2: {where} was built on another search space (other exits, gates, jump "
                             f"predictors or threshold options); give a new study_name= to start a fresh study")
        if attrs.get("population") != population:
            raise ValueError(f"nsga2: {where} runs generations of population={attrs.get('population')}, not "
                             f"{population}; resume it with population={attrs.get('population')}")
        ref = attrs.get("full_accuracy_%")
        if ref is None or not np.isclose(ref, ctx.full_acc, rtol=1e-9, atol=1e-9):
            raise ValueError(f"nsga2: {where} was scored with another objective (full network's accuracy "
                             f"{ref}% there, {ctx.full_acc}% now); give a new study_name= to start a fresh study")
    else:
        study.set_user_attr("space", enc.signature)
        study.set_user_attr("population", int(population))
        study.set_user_attr("full_accuracy_%", float(ctx.full_acc))
    return study


def _resume(done: list, ctx: SearchContext, enc: _Encoding, where: str) -> set:
    """Bring a stored study's scored placements into the evaluator (stored metrics; the stored Pareto set
    re-scored as a check). Returns their keys."""
    if not done:
        return set()
    placements = [enc.decode(t.params) for t in done]
    stored = [t.user_attrs.get("metrics") for t in done]
    front = non_dominated([t.values[0] for t in done], [t.values[1] for t in done])
    check = [i for i in range(len(done)) if front[i] or stored[i] is None]
    fresh = Evaluator(ctx.score.objective, n_jobs=ctx.score.n_jobs, progress=False, scheduler=ctx.score.client()
                      if ctx.score.scheduler is not None else None)
    try:
        rows = fresh([placements[i] for i in check])
    finally:
        fresh.close()
    for i, r in zip(check, rows):
        m = _metrics(r)
        if stored[i] is not None:
            bad = [k for k in ("mean_ms", "accuracy_%") if not np.isclose(stored[i][k], m[k], rtol=1e-9, atol=1e-9)]
            if bad:
                raise ValueError(f"nsga2: {where} was scored with another objective ({placements[i].describe()}: "
                                 f"{bad[0]} {stored[i][bad[0]]} stored, {m[bad[0]]} now); give a new study_name= "
                                 f"to start a fresh study")
        stored[i] = m
    ctx.score.record(placements, stored)
    return {p.key() for p in placements}


def _generation(study, ctx: SearchContext, enc: _Encoding, seen: set, n: int, rng: np.random.Generator) -> int:
    """Ask trials until ``n`` new placements (one generation's children): a child the study already holds is
    told ``PRUNED``; after ``RETRIES * n`` asks the missing ones are unseen neighbours of duplicates (enqueued,
    asked in the same generation). The new placements are scored together (joblib) and told. Returns their
    trial numbers."""
    from optuna.trial import TrialState

    dists = enc.distributions()
    new, dup = [], []
    while len(new) < n and len(new) + len(dup) < RETRIES * n:
        t = study.ask(dists)
        p = enc.decode(t.params)
        (dup if p.key() in seen else new).append((t, p))
        seen.add(p.key())
    for t, p in dup:
        t.set_user_attr("placement", p.describe())
        t.set_user_attr("duplicate", True)
    for t, _ in dup[: n - len(new)]:
        q = enc.repair(t.params, seen, rng)
        if q is not None:
            study.enqueue_trial(enc.encode(q))
            t2 = study.ask(dists)
            new.append((t2, enc.decode(t2.params)))
            seen.add(new[-1][1].key())
    rows = ctx.score([p for _, p in new])
    for (t, p), r in zip(new, rows):
        t.set_user_attr("placement", p.describe())
        t.set_user_attr("metrics", _metrics(r))
        study.tell(t, [float(r["mean_ms"]), float(r["accuracy_%"])])
    for t, _ in dup:
        study.tell(t, state=TrialState.PRUNED)
    return [t.number for t, _ in new]


@STRATEGIES.register("nsga2", doc=f"multi-objective NSGA-II on Optuna (mean latency vs accuracy): trials= new "
                                  f"placements (default {DEFAULT_TRIALS}), storage= and study_name= to resume")
def _nsga2(ctx: SearchContext, trials: int = DEFAULT_TRIALS, threshold_options=(None,),
           population: int = DEFAULT_POPULATION, storage: str | None = None, study_name: str | None = None) -> None:
    """Score up to ``trials`` new placements (exits, gates, jump and ``threshold_options``, as ``budget``)
    proposed by NSGA-II, seeded from the search's seed, ``population`` per generation. When the budget covers
    every placement the study does not hold yet, they are all scored. The constraint then picks among every
    placement the study holds; the table's ``pareto`` column marks the non-dominated ones."""
    _check(trials, population, storage, study_name, threshold_options)
    enc = _Encoding(ctx.space, threshold_options)
    population = int(population)
    base_seed = int(ctx.rng.integers(2**32))
    optuna = require_extra("optuna", extra="optuna", purpose="the nsga2 placement strategy")
    from optuna.trial import TrialState

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        stored, done = None, []
        where = "the study"
        if storage is not None:
            name = study_name or DEFAULT_STUDY
            where = f"study {name!r} in {storage}"
            stored = _open(optuna, ctx, enc, population, storage, name, where)
            done = stored.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        seen = _resume(done, ctx, enc, where)
        # seeded from the search's seed and how far the study is, so a resumed run is as reproducible as a fresh one
        seed = int(np.random.SeedSequence([base_seed, len(done)]).generate_state(1)[0])
        rng = np.random.default_rng(seed)
        work = optuna.create_study(directions=list(DIRECTIONS),
                                   sampler=optuna.samplers.NSGAIISampler(population_size=population, seed=seed))
        work.add_trials(done)  # their NSGA-II generations come with them

        def generation(n: int) -> int:
            numbers = set(_generation(work, ctx, enc, seen, n, rng))
            if stored is not None and numbers:
                stored.add_trials([t for t in work.get_trials(deepcopy=False) if t.number in numbers])
            return len(numbers)

        budget = min(int(trials), enc.size - len(seen))
        if budget > 0 and budget >= enc.size - len(seen):  # the budget covers the rest: score all of it
            todo = list({p.key(): p for p in enc.all_placements() if p.key() not in seen}.values())
            for i in range(0, len(todo), population):
                for p in todo[i:i + population]:
                    work.enqueue_trial(enc.encode(p))
                generation(len(todo[i:i + population]))
            return
        added = stall = 0
        while added < budget and stall < STALL_BATCHES:
            n = generation(min(population, budget - added))
            added += n
            stall = 0 if n else stall + 1
    finally:
        optuna.logging.set_verbosity(level)


__all__ = ["DEFAULT_POPULATION", "DEFAULT_STUDY", "DEFAULT_TRIALS", "DIRECTIONS", "RETRIES", "STALL_BATCHES"]
