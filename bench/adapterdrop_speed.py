"""AdapterDrop's speed (Rücklé et al. 2021): a training step and an inference forward with no adapters in the
lowest n layers, n = 0 .. all, interleaved round by round in one process (ablation 7's timing, which the
sweep's per-run train_s cannot give on a shared machine).

    python bench/adapterdrop_speed.py --model minilm-l6 --spec "houlsby[bottleneck=64,non_linearity=relu]" \
        --batch 32 --seq 64 --rounds 3 --out bench/results/adapterdrop_speed_minilm-l6.jsonl

For each n the model is `aj.adapter_drop(model, n)` (adapters in layers < n skipped, static). Train: value
and gradient of a mean-squared hidden-state loss w.r.t. the adapter leaves (no optimizer); no trainable leaf
below layer n, so the backward pass stops there. Forward: the last hidden state. Each timing is the median of
--steps calls after --warmup (compile excluded); speed-up = time at n=0 / time at n.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import common  # noqa: E402  (run as a script: the repository root first)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--spec", default="houlsby[bottleneck=64,non_linearity=relu]")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    from adapters_jax import xla_flags

    flags = xla_flags.apply_for(a.model)
    import jax
    import jax.numpy as jnp
    import numpy as np

    import adapters_jax as aj
    from adapters_jax.partition import labels as make_labels, merge, split

    model, params = aj.add_adapters(aj.load(a.model), a.spec)
    trainable, frozen = split(params, make_labels(model, params))
    ids = jnp.asarray(np.random.default_rng(0).integers(3, model.config.vocab_size, (a.batch, a.seq)), jnp.int32)
    mask = jnp.ones_like(ids)
    n_layers = model.config.num_hidden_layers
    calls = {}
    for n in range(n_layers + 1):
        m = aj.adapter_drop(model, n)

        def loss(tr, m=m):
            h = m.apply({"params": merge(tr, frozen)}, ids, mask, return_hidden=True)
            return jnp.mean(jnp.square(h.astype(jnp.float32)))
        grad = jax.jit(jax.value_and_grad(loss))
        fwd = jax.jit(lambda p, m=m: m.apply({"params": p}, ids, mask, return_hidden=True))
        calls[("train", n)] = lambda g=grad: g(trainable)
        calls[("forward", n)] = lambda f=fwd: f(params)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    rows = []
    for r in range(a.rounds):
        for (mode, n), fn in calls.items():
            s = statistics.median(common.timed(fn, a.warmup if r == 0 else 1, a.steps, jax.block_until_ready)[1])
            rows.append({"model": a.model, "spec": a.spec, "batch": a.batch, "seq": a.seq, "mode": mode,
                         "dropped_layers": n, "round": r, "seconds": s, "commit": commit, "xla_flags": flags,
                         "load_avg": list(map(float, open("/proc/loadavg").read().split()[:3]))})
            print(json.dumps(rows[-1]), flush=True)
    common.append_rows(a.out, rows)
    print(table(rows))


def table(rows: list) -> str:
    """Median seconds over rounds per (mode, n) and the speed-up against n = 0."""
    med = {}
    for mode, n in sorted({(r["mode"], r["dropped_layers"]) for r in rows}):
        med[mode, n] = statistics.median(r["seconds"] for r in rows if (r["mode"], r["dropped_layers"]) == (mode, n))
    ns = sorted({n for _, n in med})
    lines = ["| adapters dropped from the lowest n layers | " + " | ".join(str(n) for n in ns) + " |",
             "|---|" + "---|" * len(ns)]
    for mode in ("train", "forward"):
        lines.append(f"| {mode} s | " + " | ".join(f"{med[mode, n]:.4f}" for n in ns) + " |")
        lines.append(f"| {mode} speed-up | " + " | ".join(f"{med[mode, 0] / med[mode, n]:.2f}" for n in ns) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
