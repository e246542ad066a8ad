"""Summarise run reports into a results table: python experiments/summarize.py runs/rt_houlsby-seed* ...

Prints a markdown table (one row per run, then mean and std per adapter) and,
with --json FILE, writes the rows it read.
"""
import argparse
import json
import re
import statistics
import sys
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows = []
    for r in args.runs:
        f = Path(r) / "report.json"
        if not f.exists():
            print(f"skipping {r}: no report.json", file=sys.stderr)
            continue
        rows.append({"run": Path(r).name, **json.loads(f.read_text())})
    print("| run | adapter | seed | trainable | share | val acc | test acc | train s | compile s | wall s | tokens/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731  (no validation split: None)
    for x in rows:
        print(f"| {x['run']} | `{x['adapter']}`{' + full FT' if x['trainable_share'] > 99 else ''} | {x['seed']} | {x['trainable_params']:,} | {x['trainable_share']:.2f}% "
              f"| {pct(x['val_accuracy'])} | {pct(x['test_accuracy'])} | {x['train_s']:.0f} "
              f"| {x['compile_s']:.0f} | {x['wall_s']:.0f} | {x['tokens_per_s']:.0f} |")
    by = {}  # one group per experiment: the run name without its -seedN suffix
    for x in rows:
        by.setdefault(re.sub(r"-seed\d+$", "", x["run"]), []).append(x)
    print()
    for name, xs in by.items():
        test = [100 * x["test_accuracy"] for x in xs if x["test_accuracy"] is not None]
        val = [100 * x["val_accuracy"] for x in xs if x["val_accuracy"] is not None]
        if not test:
            print(f"- {name}: no evaluation")
            continue
        sd = statistics.stdev(test) if len(test) > 1 else 0.0
        print(f"- {name}: mean test accuracy {statistics.mean(test):.2f} ± {sd:.2f} over {len(test)} seed(s) "
              + (f"(mean validation accuracy {statistics.mean(val):.2f})" if val else "(no validation split)"))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
