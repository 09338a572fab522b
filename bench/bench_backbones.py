"""Where predictors pay, across the five backbones (issues 14, 21): runs the suite in configs/suites/backbones.yaml
(every study trained, dumped, its measured costs profiled 4 times, predictors fitted at every valid position, and per
device profile the best predictor-free policy and the best placement with a predictor decided on calib, reported on
test; analysis.study.baselines), prints the comparison table, the gap decomposition and, last, the line

    backbones: gated/best-free min R [LO, HI], predictors pay on N of M rows, best/matched-oracle max Q (B backbones, P profiles)

Latencies are ms per sample at batch 1 (measured: this CPU, torch's threads; edge profiles: modelled from MACs and
bytes). Ratios are of mean latencies on the same test samples, with paired bootstrap 95 % CIs that also resample the
measured profile's independent profilings. "Pay": the CI of best-gated / best-free is below 1 and the lower end of
the accuracy difference's CI is at least -max_acc_drop (0.5 points).

    python bench/bench_backbones.py [--config configs/suites/backbones.yaml] [--out DIR] [--quick] [--redo]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from analysis.present import plots  # noqa: E402
from analysis.study.suite import load_suite, real_line, run_suite, suite_line  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--config", default="configs/suites/backbones.yaml")
ap.add_argument("--out", default=None, help="override the suite's output folder")
ap.add_argument("--quick", action="store_true", help="a smoke run: 1 epoch, 600 samples, tiny timing")
ap.add_argument("--redo", action="store_true", help="recompute every study instead of reusing what is there")
a = ap.parse_args()
suite = load_suite(a.config)
if a.quick:
    from dataclasses import replace

    from analysis.study.suite import merge_mappings

    base = merge_mappings(suite.base, {"train": {"epochs": 1}, "dump": {"profile_time": 0.02},
                               "predictors": {"folds": 2}, "policies": {"bootstrap": 50}})
    datasets = {k: merge_mappings(v, {"options": {"sizes": [300, 150, 150]}}) for k, v in suite.datasets.items()}
    backbones = {k: merge_mappings(v, {"train": {"epochs": 1}}) for k, v in suite.backbones.items()}
    suite = replace(suite, base=base, datasets=datasets, backbones=backbones, bootstrap=100,
                    out=a.out or suite.out + "-quick")
elif a.out:
    from dataclasses import replace

    suite = replace(suite, out=a.out)
t0 = time.perf_counter()
df = run_suite(suite, redo=a.redo, log=lambda m: print(f"{m} (t = {time.perf_counter() - t0:.0f} s)", flush=True))
minutes = (time.perf_counter() - t0) / 60


def ci(r, col, fmt="{:.3f}"):
    if pd.isna(r.get(col)):
        return "-"
    lo, hi = r.get(col + "_lo"), r.get(col + "_hi")
    return fmt.format(r[col]) + ("" if pd.isna(lo) else f" [{fmt.format(lo)}, {fmt.format(hi)}]")


def ms(r, n):
    return "-" if pd.isna(r.get(f"{n}_ms")) else f"{r[f'{n}_acc_%']:.1f} / {r[f'{n}_ms']:.3g}"


rows, gaps = [], []
for r in df.to_dict("records"):
    rows.append({"study": r["study"], "profile": r["profile"], "R": r["cost_tables"],
                 "full": ms(r, "full"), "cascade": ms(r, "cascade"), "best rule": ms(r, "best_rule"),
                 "best free": ms(r, "best_free"), "best gated": ms(r, "best_gated"),
                 "matched oracle": ms(r, "matched_oracle"), "oracle": ms(r, "oracle"),
                 "gated/free": ci(r, "gated_vs_free"),
                 "gated-free acc (pts)": "-" if pd.isna(r.get("gated_vs_free_acc_pts")) else
                 f"{r['gated_vs_free_acc_pts']:+.2f} [{r['gated_vs_free_acc_lo_pts']:+.2f}, "
                 f"{r['gated_vs_free_acc_hi_pts']:+.2f}]", "pays": "yes" if r.get("pays") else "no",
                 "free/full": ci(r, "free_vs_full"), "cascade/full": ci(r, "cascade_vs_full"),
                 "perfect gates/free": ci(r, "perfect_gates_vs_free"),
                 "side exits % of full": "-" if pd.isna(r.get("side_exit_cost_share_%")) else
                 f"{r['side_exit_cost_share_%']:.0f}",
                 "real gated/free": ci(r, "real_gated_vs_free"), "real cascade/full": ci(r, "real_cascade_vs_full"),
                 "real pairs agree": "-" if pd.isna(r.get("real_pairs")) else
                 f"{int(r['real_pairs_agree'])}/{int(r['real_pairs'])}"})
    gaps.append({"study": r["study"], "profile": r["profile"], "default cascade": r["cascade_ms"],
                 "best rule": r["best_rule_ms"], "best free": r["best_free_ms"],
                 "best with predictors": r.get("best_gated_ms", float("nan")), "best": r["best_ms"],
                 "matched oracle": r["matched_oracle_ms"], "oracle": r["oracle_ms"],
                 "best/matched": r["best_vs_matched_oracle"], "best free placement": r["best_free_placement"],
                 "best gated placement": r.get("best_gated_placement", "-")})
table, gap = pd.DataFrame(rows), pd.DataFrame(gaps)
out = Path(suite.out)
table.to_csv(out / "comparison_table.csv", index=False)
gap.to_csv(out / "gaps.csv", index=False)
fig, _ = plots.plot_suite(df, title="best placement with predictors vs the best predictor-free policy (test)")
plots.save(fig, out / "backbones.png")
print(f"\n{suite.name}: test split, everything decided on calib; accuracy % / mean ms per sample at batch 1; ratios of "
      f"mean latency with paired bootstrap 95 % CIs over test samples and (R > 1) the R independent profilings of the "
      f"measured costs; {minutes:.1f} min on this machine")
with pd.option_context("display.width", 300, "display.max_colwidth", 40):
    print(table.to_string(index=False))
    print("\nwhere the latency goes (ms per sample, test): default cascade -> best rule -> best predictor-free -> best "
          "with predictors -> matched oracle -> oracle")
    print(gap.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
md = ["| study | profile | R | full % / ms | cascade % / ms | best rule ms | best free % / ms | best gated % / ms | "
      "gated / free [95 % CI] | gated - free acc pts [CI] | real gated / free [CI] | real cascade / full [CI] | "
      "pays | perfect gates / free | matched oracle ms | oracle ms |", "|" + "---|" * 16]
for r in df.to_dict("records"):
    acc = "-" if pd.isna(r.get("gated_vs_free_acc_pts")) else \
        f"{r['gated_vs_free_acc_pts']:+.2f} [{r['gated_vs_free_acc_lo_pts']:+.2f}, {r['gated_vs_free_acc_hi_pts']:+.2f}]"
    md.append(f"| {r['study'].rsplit('/', 1)[0] if r['study'].endswith('/joint') else r['study']} | {r['profile']} | "
              f"{r['cost_tables']} | {ms(r, 'full')} | {ms(r, 'cascade')} | {r['best_rule_ms']:.3g} | "
              f"{ms(r, 'best_free')} | {ms(r, 'best_gated')} | {ci(r, 'gated_vs_free')} | {acc} | "
              f"{ci(r, 'real_gated_vs_free')} | {ci(r, 'real_cascade_vs_full')} | "
              f"{'**yes**' if r.get('pays') else 'no'} | {ci(r, 'perfect_gates_vs_free')} | "
              f"{r['matched_oracle_ms']:.3g} | {r['oracle_ms']:.3g} |")
(out / "comparison.md").write_text("\n".join(md) + "\n")
print(f"wrote {out}/comparison.csv, comparison_table.csv, comparison.md, gaps.csv, backbones.png")
if real_line(df):
    print(real_line(df))
print(suite_line(df))
