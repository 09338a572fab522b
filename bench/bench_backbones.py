"""Where predictors pay, across the five backbones (issue 14): runs the suite in configs/suites/backbones.yaml (every study
trained, dumped, costed, predictors fitted at every valid position, placement searched under each profile, every
policy simulated; decided on calib, reported on test), prints the comparison table and, last, the line

    backbones: best/oracle max R1, best-gated/cascade min R2 (B backbones, P profiles)

Latencies are ms per sample at batch 1 (measured: this CPU, torch's threads; edge profiles: modelled from MACs and
bytes). Ratios are of mean latencies on the same test samples with paired bootstrap 95 % CIs.

    python bench/bench_backbones.py [--config configs/suites/backbones.yaml] [--out DIR] [--quick] [--redo]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from analysis.present import plots  # noqa: E402
from analysis.study.suite import equal_accuracy, load_suite, run_suite, suite_line  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--config", default="configs/suites/backbones.yaml")
ap.add_argument("--out", default=None, help="override the suite's output folder")
ap.add_argument("--quick", action="store_true", help="a smoke run: 1 epoch, 600 samples, tiny timing")
ap.add_argument("--redo", action="store_true", help="recompute every study instead of reusing what is there")
a = ap.parse_args()
suite = load_suite(a.config)
if a.quick:
    from dataclasses import replace

    from analysis.study.suite import _merge

    base = _merge(suite.base, {"train": {"epochs": 1}, "dump": {"profile_time": 0.02},
                               "predictors": {"folds": 2}, "policies": {"bootstrap": 50}})
    datasets = {k: _merge(v, {"options": {"sizes": [300, 150, 150]}}) for k, v in suite.datasets.items()}
    backbones = {k: _merge(v, {"train": {"epochs": 1}}) for k, v in suite.backbones.items()}
    suite = replace(suite, base=base, datasets=datasets, backbones=backbones, bootstrap=100,
                    out=a.out or suite.out + "-quick")
elif a.out:
    from dataclasses import replace

    suite = replace(suite, out=a.out)
t0 = time.perf_counter()
df = run_suite(suite, redo=a.redo, log=lambda m: print(f"{m} (t = {time.perf_counter() - t0:.0f} s)", flush=True))
minutes = (time.perf_counter() - t0) / 60


def ci(r, col):
    return "-" if pd.isna(r.get(col)) else f"{r[col]:.3f} [{r[col + '_lo']:.3f}, {r[col + '_hi']:.3f}]"


rows = []
for r in df.to_dict("records"):
    rows.append({"study": r["study"], "profile": r["profile"],
                 "full acc/mean/p95": f"{r['full_acc_%']:.1f} / {r['full_mean_ms']:.3g} / {r['full_p95_ms']:.3g}",
                 "cascade": f"{r['cascade_acc_%']:.1f} / {r['cascade_mean_ms']:.3g} / {r['cascade_p95_ms']:.3g}",
                 "best": "-" if pd.isna(r.get("best_mean_ms")) else
                 f"{r['best_acc_%']:.1f} / {r['best_mean_ms']:.3g} / {r['best_p95_ms']:.3g}",
                 "best-gated": "-" if pd.isna(r.get("best_gated_mean_ms")) else
                 f"{r['best_gated_acc_%']:.1f} / {r['best_gated_mean_ms']:.3g} / {r['best_gated_p95_ms']:.3g}",
                 "oracle": f"{r['oracle_acc_%']:.1f} / {r['oracle_mean_ms']:.3g} / {r['oracle_p95_ms']:.3g}",
                 "best/oracle": ci(r, "best/oracle"), "best-gated/cascade": ci(r, "best_gated/cascade"),
                 "perfect gates/cascade": ci(r, "perfect_gates/cascade"),
                 "best-gated - cascade acc (pts)": "-" if pd.isna(r.get("best_gated_acc_vs_cascade_pts")) else
                 f"{r['best_gated_acc_vs_cascade_pts']:+.2f} [{r['best_gated_acc_vs_cascade_lo']:+.2f}, "
                 f"{r['best_gated_acc_vs_cascade_hi']:+.2f}]", "note": r.get("note", "")})
table = pd.DataFrame(rows)
out = Path(suite.out)
table.to_csv(out / "comparison_table.csv", index=False)
fig, _ = plots.plot_suite(df, title="best placement with predictors vs the cascade (test, mean latency)")
plots.save(fig, out / "backbones.png")
print(f"\n{suite.name}: test split, decided on calib; accuracy % / mean ms / p95 ms per sample at batch 1; "
      f"ratios of mean latency with paired bootstrap 95 % CIs; {minutes:.1f} min on this machine")
with pd.option_context("display.width", 250, "display.max_colwidth", 60):
    print(table.to_string(index=False))
print(f"wrote {out}/comparison.csv, comparison_table.csv, backbones.png")
# the targets, in words; P1 on placements that keep accuracy >= full - 0.5 pt, P2 at equal accuracy (CI)
gated = df[df["best/oracle"].notna()] if "best/oracle" in df else df.iloc[:0]
if len(gated):
    p1 = gated.groupby(gated.study.str.split("/").str[0])["best/oracle"].max()
    print("P1 (best <= 1.15 x oracle on every backbone): " + ("met" if (p1 <= 1.15).all() else "NOT met") + "; worst "
          + ", ".join(f"{b} {v:.2f}" for b, v in p1.items()))
    eq = gated[equal_accuracy(gated)]
    won = eq[eq["best_gated/cascade"] <= 0.85] if len(eq) else eq
    best = eq.loc[eq["best_gated/cascade"].idxmin()] if len(eq) else None
    print("P2 (gated <= 0.85 x cascade at equal accuracy somewhere): "
          + (f"met on {len(won)} rows" if len(won) else "NOT met")
          + ("" if best is None else f"; best {best.study} {best.profile} {best['best_gated/cascade']:.3f} "
             f"[{best['best_gated/cascade_lo']:.3f}, {best['best_gated/cascade_hi']:.3f}], free perfect gates there "
             f"{best['perfect_gates/cascade']:.3f}"))
print(suite_line(df))
