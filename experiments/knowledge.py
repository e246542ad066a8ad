"""Do adapters preserve pretrained knowledge better than full fine-tuning? Measured on SmolLM2-135M.

    python experiments/knowledge.py --methods houlsby,lora,full --seeds 0,1,2 \
        --out experiments/results/knowledge_preservation

Each (method, seed) trains experiments/configs/smollm2_bbc_lm.py:METHOD (BBC news as next-token LM,
the same 100-step budget) in its own process, then measures perplexity with the trained adapter active
(or the fine-tuned weights) on
  - in domain: the first 128 blocks of 64 tokens of bbc_news's test split (what training aimed at), and
  - the knowledge proxy: held-out text of the other built-in corpora, the first 256 test texts of
    rt_polarity (film reviews) and of tweet_sentiment (tweets), each text plus the end token,
and the same for the untrained base ("base"). A finished run (its eval.json) is skipped, so a rerun
continues where a killed one stopped. `--report` rebuilds the table (knowledge_preservation.md) and the
plot (.png, .svg) from the eval.json files. Numbers are whatever was measured.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CORPORA = {  # name -> (built-in task, split, first N texts or blocks, role)
    "bbc_news": ("bbc_news", "test", 128, "in domain"),
    "rt_polarity": ("rt_polarity", "test", 256, "other corpus"),
    "tweet_sentiment": ("tweet_sentiment", "test", 256, "other corpus"),
}


def corpus_perplexity(model, trainable, frozen, tokenizer, config, name: str) -> dict:
    """Token-weighted perplexity (the trainer's own lm evaluation) on a corpus's first N blocks."""
    from adapters_jax.data import lm, tasks
    from adapters_jax.train import kinds, parallel
    import jax

    task_name, split, n, _ = CORPORA[name]
    enc = lm.encode_lm(tasks.load(task_name)[split]["text"], tokenizer, config.max_length)
    c = config.copy_and_resolve_references()
    c.max_eval_examples = n
    step = jax.jit(kinds.make_eval_step(model, "lm"))
    out = kinds.evaluate("lm", lambda _: step, trainable, frozen, enc, c, tokenizer.pad_token_id,
                         parallel.Single(), buckets=[config.max_length])
    return {"perplexity": out["perplexity"], "loss": out["loss"], "tokens": out["count"]}


def one(method: str, seed: int, out: Path, steps: int = 0) -> None:
    """Train (unless method == "base") and evaluate one point; writes RUN/eval.json last."""
    from adapters_jax import xla_flags

    xla_flags.apply_for("smollm2-135m")
    from experiments.configs import smollm2_bbc_lm
    from adapters_jax.partition import split
    from adapters_jax.train import loop

    run_dir = out / "runs" / f"{method}-seed{seed}"
    config = smollm2_bbc_lm.get_config("houlsby" if method == "base" else method)
    config.seed, config.progress = seed, False
    if steps:  # a smoke run of the pipeline (--steps), not the experiment's budget
        config.max_steps = config.eval_every = steps
    report = None
    if method == "base":
        config.adapter, config.full_finetune = "none", False
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        report = loop.run(config, run_dir, resume=(run_dir / "checkpoints").exists())
    base, _, model, params, labels = loop.build(config)
    trainable, frozen = split(params, labels)
    if method != "base":
        trainable = loop.final_trainable(run_dir, config)
    t0 = time.time()
    result = {"method": method, "seed": seed, "adapter": config.adapter, "lr": config.optimizer.lr,
              "full_finetune": config.full_finetune, "steps": config.max_steps,
              "tokens_trained": config.max_steps * config.batch_size * config.max_length,
              "trainable_params": None if report is None else report["trainable_params"],
              "trainable_share": None if report is None else report["trainable_share"],
              "train_s": None if report is None else report["train_s"],
              "corpora": {name: corpus_perplexity(model, trainable, frozen, base.tokenizer, config, name)
                          for name in CORPORA}}
    result["eval_s"] = time.time() - t0
    tmp = run_dir / "eval.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, run_dir / "eval.json")
    print(json.dumps({k: result[k] for k in ("method", "seed")} |
                     {n: round(v["perplexity"], 3) for n, v in result["corpora"].items()}), flush=True)


def stats(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")
    return m, sd


def report(out: Path) -> str:
    """The table (markdown) and the plot from every RUN/eval.json under OUT/runs."""
    rows = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/eval.json"))]
    base = [r for r in rows if r["method"] == "base"]
    if not base:
        raise SystemExit(f"{out}: no base evaluation (run --methods base first)")
    ref = {n: base[0]["corpora"][n]["perplexity"] for n in CORPORA}
    methods = [m for m in ("houlsby", "lora", "full") if any(r["method"] == m for r in rows)]
    lines = ["| method | trainable | seeds | " + " | ".join(
        f"{n} ({CORPORA[n][3]}) ppl, change vs base" for n in CORPORA) + " |",
             "|---|---|---|" + "---|" * len(CORPORA),
             "| base (no training) | 0 | - | " + " | ".join(f"{ref[n]:.3f}" for n in CORPORA) + " |"]
    summary = {}
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        cells = []
        for n in CORPORA:
            ppl = [r["corpora"][n]["perplexity"] for r in rs]
            rel = [100 * (p / ref[n] - 1) for p in ppl]
            (pm, psd), (rm, rsd) = stats(ppl), stats(rel)
            summary[(m, n)] = (rm, rsd)
            cells.append(f"{pm:.3f} ± {psd:.3f} ({rm:+.1f}% ± {rsd:.1f})")
        share = rs[0]["trainable_share"]
        lines.append(f"| {m} | {rs[0]['trainable_params']:,} ({share:.2f}%) | "
                     f"{','.join(str(r['seed']) for r in rs)} | " + " | ".join(cells) + " |")
    plot(out, methods, summary)
    return "\n".join(lines)


def plot(out: Path, methods: list[str], summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(CORPORA))]
        ys = [summary[(m, n)][0] for n in CORPORA]
        err = [summary[(m, n)][1] for n in CORPORA]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=m)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(CORPORA)), [f"{n}\n({CORPORA[n][3]})" for n in CORPORA])
    ax.set_ylabel("perplexity change vs base (%)")
    ax.set_title("SmolLM2-135M trained on BBC news: in-domain gain and change elsewhere\n(mean ± sd over seeds)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(out / f"knowledge_preservation.{ext}", dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="base,houlsby,lora,full")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="experiments/results/knowledge_preservation")
    p.add_argument("--one", nargs=2, metavar=("METHOD", "SEED"), help=argparse.SUPPRESS)
    p.add_argument("--report", action="store_true", help="only rebuild the table and plot")
    p.add_argument("--steps", type=int, default=0, help="override the step budget (smoke runs only)")
    a = p.parse_args()
    out = Path(a.out)
    if a.one:
        return one(a.one[0], int(a.one[1]), out, a.steps)
    if not a.report:
        for method in a.methods.split(","):
            for seed in [0] if method == "base" else [int(s) for s in a.seeds.split(",")]:
                if (out / "runs" / f"{method}-seed{seed}" / "eval.json").exists():
                    continue
                # its own process: a clean JAX and memory per run
                subprocess.run([sys.executable, __file__, "--one", method, str(seed), "--out", str(out),
                                "--steps", str(a.steps)], check=True)
    table = report(out)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
