"""Commands that decide on a cache: ``fit-predictors``, ``simulate``, ``place`` (tuned on calib, reported on
test)."""
from __future__ import annotations

from branchy.core import add_arguments, check_writable, from_arguments

from .base import command, deprecated, float_list, number_type, percent


def _policy_config():
    """The policy settings class (imported when a command is built, not when the CLI starts)."""
    from ..core.policies import PolicyConfig

    return PolicyConfig


def _default_profile() -> str:
    """The one default device profile of every command (:data:`analysis.core.costs.DEFAULT_PROFILE`)."""
    from ..core.costs import DEFAULT_PROFILE

    return DEFAULT_PROFILE


# ----------------------------------------------------------------------------- predictors
def _fit_args(p):
    from predictors.grid import PredictorsConfig

    PolicyConfig = _policy_config()

    p.add_argument("--cache", required=True, help="feature cache directory (branchy dump)")
    add_arguments(p, PredictorsConfig, title="predictors")
    g = p.add_argument_group("exit rule (defines the gate and exit targets)")
    add_arguments(g, PolicyConfig, only=("measure", "target_acc"))
    percent(p, "--target-acc")
    g.add_argument("--thresholds", type=float_list, default=None,
                   help="exit thresholds T, one per side exit (default: calibrated on calib, see --target-acc)")
    p.add_argument("--fit-split", default="calib", choices=["calib", "train", "test"],
                   help="split to fit on (calib; train warns; test is refused)")
    p.add_argument("--out", required=True, help="folder for the fitted predictors")


def _fit_run(a) -> int:
    from branchy.cache import FeatureCache
    from predictors.fit import evaluation_table, fit_predictors
    from predictors.grid import PredictorsConfig
    from predictors.store import save_predictors

    from ..core.calibrate import resolve_rule
    from ..present.tables import format_eval

    PolicyConfig = _policy_config()
    pc, pol = from_arguments(PredictorsConfig, a), from_arguments(PolicyConfig, a)
    check_writable(a.out, folder=True, what="predictors folder")
    cache = FeatureCache.open(a.cache)
    rule = resolve_rule(cache, a.thresholds, pol.target_acc, pol.measure)
    print(f"exit rule: {rule.describe()}")
    fitted = fit_predictors(cache, pc.specs(cache.num_exits, rule), split=a.fit_split, folds=pc.folds)
    save_predictors(fitted, a.out)
    print(f"saved {len(fitted)} predictor(s) to {a.out}")
    print(format_eval(evaluation_table(fitted, cache)))
    return 0


command("fit-predictors", "fit gate / exit / entropy predictors on a cache and print their evaluation")(
    (_fit_args, _fit_run))


# ----------------------------------------------------------------------------- simulate
def _simulate_args(p):
    PolicyConfig = _policy_config()

    p.add_argument("--cache", required=True, help="feature cache directory")
    p.add_argument("--predictors", default=None, help="folder of fitted predictors (enables gated and jump)")
    deprecated(p.add_argument("--device-profile", "--profile", dest="profile", action="append", default=None,
                              help=f"device profile name or JSON/YAML file (repeatable; default: "
                                   f"{_default_profile()}). See `branchy profiles`"), "--profile")
    add_arguments(p, PolicyConfig, title="policies")
    percent(p, "--target-acc")
    p.add_argument("--out", required=True, help="folder for summary.csv, pareto.csv, gates.csv and the plots")


def _simulate_run(a) -> int:
    cfg = from_arguments(_policy_config(), a)  # checked before anything heavy is imported
    check_writable(a.out, folder=True, what="simulation folder")
    from branchy.cache import FeatureCache

    from ..study.outputs import simulate_to

    cache = FeatureCache.open(a.cache)
    preds = None
    if a.predictors:
        from predictors.store import load_predictors

        preds = load_predictors(a.predictors, cache)
    simulate_to(cache, a.out, predictors=preds, profiles=a.profile or [_default_profile()], cfg=cfg)
    print(f"\nwrote {a.out}/summary.csv, pareto.csv, gates.csv, thresholds.json and plots")
    return 0


command("simulate", "simulate latency vs accuracy of every policy on a cache (tables + plots)")(
    (_simulate_args, _simulate_run))


# ----------------------------------------------------------------------------- place
def _place_args(p):
    from ..study.placement_config import PlacementConfig

    PolicyConfig = _policy_config()

    p.add_argument("--cache", required=True, help="feature cache directory")
    p.add_argument("--predictors", required=True, help="folder of fitted predictors")
    add_arguments(p, PlacementConfig, title="placement")
    add_arguments(p, PolicyConfig, only=("measure", "target_acc", "gate_max_drop", "risk", "learned_max_drop",
                                         "risk_method", "jump_leave"),
                  title="exit rule, gates and learned decisions (with --risk, --max-acc-drop is also the guaranteed "
                        "drop)")
    percent(p, "--target-acc")
    p.add_argument("--out", required=True, help="folder for candidates.csv, placement.json and plots "
                                                "(one subfolder per strategy when several are given)")


def _place_run(a) -> int:
    from ..study.placement_config import PlacementConfig

    PolicyConfig = _policy_config()
    pl = from_arguments(PlacementConfig, a)  # checked before anything heavy is imported
    from pathlib import Path

    from branchy.cache import FeatureCache
    from placement.evaluator import connect_scheduler
    from predictors.store import load_predictors

    from ..core.costs import get_profile
    from ..core.policies import calibrate
    from ..present.tables import format_compare
    from ..study.placement_study import run_placement, write_placement
    from ..study.plan import decision_plan

    risk = getattr(a, "PolicyConfig.risk", None)
    if risk is not None and pl.latency_budget is not None:
        raise ValueError("--risk guarantees an accuracy drop: give it with --max-acc-drop EPS, not --latency-budget")
    cfg = from_arguments(PolicyConfig, a, max_acc_drop=pl.max_acc_drop if risk is not None else None)
    check_writable(a.out, folder=True, what="placement folder")
    # connect before any work: a wrong --scheduler (nothing, or another service, listening) fails in one line now
    client = connect_scheduler(pl.scheduler) if pl.scheduler is not None else None
    try:
        prof = get_profile(pl.profile)
        cache = FeatureCache.open(a.cache)
        preds = load_predictors(a.predictors, cache)
        con = pl.constraint
        if cfg.risk is None:
            rule = calibrate(cache, cfg)
            print(f"exit rule: {rule.describe()}")
        else:
            rule = None
            print(f"risk control: predictors refitted, rule and placement searched on half of calib, the choice "
                  f"certified by Learn-then-Test on the other half (eps {cfg.max_acc_drop} pt, delta {cfg.risk})")
        for strategy in pl.strategies:
            out = Path(a.out) if len(pl.strategies) == 1 else Path(a.out) / strategy
            res, compare = run_placement(cache, preds, strategy, constraint=con, profile=prof, n_jobs=pl.n_jobs,
                                         scheduler=client, seed=pl.seed, rule=rule, cfg=cfg, **pl.options(strategy))
            plan = decision_plan(cache, res.predictors or preds, res.chosen, rule, cfg)
            write_placement(res, compare, out, profile_name=prof.name, plan=plan)
            print(f"strategy {strategy}: {len(res.table)} placements scored on calib ({prof.name}); "
                  f"{con.describe()}")
            print(f"chosen: {res.chosen.describe()}")
            print(format_compare(compare))
            print(f"wrote {out}/placement.json, plan.json, candidates.csv, comparison.csv, placement_map.png, "
                  f"placement_front.png")
            if res.predictors:
                print(f"risk control: the placement was certified with predictors refitted on the search half "
                      f"only; deploy those: {out}/predictors")
    finally:
        if client is not None:
            client.close()
    return 0


command("place", "search where exits and predictor gates go (scored on calib, chosen re-evaluated on test)")(
    (_place_args, _place_run))



# ----------------------------------------------------------------------------- explain-gates
def _explain_args(p):
    PolicyConfig = _policy_config()

    p.add_argument("--cache", required=True, help="feature cache directory")
    p.add_argument("--predictors", default=None, help="folder of fitted predictors (their cost and skip rates are "
                                                      "set against the break-even figures)")
    deprecated(p.add_argument("--device-profile", "--profile", dest="profile", default=_default_profile(),
                              help=f"device profile name or JSON/YAML file (default: {_default_profile()})"),
               "--profile")
    p.add_argument("--false-skip", type=number_type(float, 0, 100, what=" (percent of the samples, e.g. 2 for 2 %)"),
                   default=2.0, help="percent of the samples an exit would accept that a gate may wrongly skip "
                                     "(default: 2, i.e. 2 %%)")
    percent(p, "--false-skip", one_is_fraction=False)
    add_arguments(p, PolicyConfig, only=("measure", "target_acc", "gate_max_drop", "overlap"), title="exit rule")
    percent(p, "--target-acc")
    p.add_argument("--out", default=None, help="folder for breakeven.csv and gate_map.png (optional)")


def _explain_run(a) -> int:
    cfg = from_arguments(_policy_config(), a)  # checked before anything heavy is imported
    from branchy.cache import FeatureCache

    from ..core.evidence import Evidence
    from ..core.policies import calibrate
    from ..present import plots
    from ..present.tables import format_breakeven
    from ..study.compare import gate_break_even

    if a.out:
        check_writable(a.out, folder=True, what="output folder")
    cache = FeatureCache.open(a.cache)
    preds = None
    if a.predictors:
        from predictors.store import load_predictors

        preds = load_predictors(a.predictors, cache)
    rule = calibrate(cache, cfg)
    ev = Evidence.build(cache, "calib", measure=cfg.measure, predictors=preds, profile=a.profile)
    fs = a.false_skip / 100  # the break-even model's rates are fractions
    table, gates, lines = gate_break_even(ev, rule, cfg, false_skip=fs)
    print(f"when a gate pays on {a.cache} ({ev.costs.profile}; exit rule {rule.describe()}; calib, predictors out of "
          f"fold; ms per sample at batch 1):")
    print("\n".join(f"- {line}" for line in lines))
    if len(table):
        print(format_breakeven(table))
    if a.out and len(table):
        from pathlib import Path

        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "breakeven.csv", index=False)
        fig, _ = plots.plot_gate_map(table, gates, false_skip=fs,
                                     title=f"where a gate pays ({ev.costs.profile}, calib)")
        plots.save(fig, out / "gate_map.png")
        print(f"wrote {out}/breakeven.csv and gate_map.png")
    return 0


command("explain-gates", "when does a gate pay: break-even predictor cost and skip rate per exit, in words")(
    (_explain_args, _explain_run))
