"""Ablation 8: the smallest budgets: prompt length, prefix length with and without the reparameterisation
MLP, IA3 (Lester et al. 2021; Li & Liang 2021; Liu et al. 2022).

    python scripts/sweep.py --config experiments/ablations/small_budgets.py
    python scripts/report.py experiments/results/small_budgets

MiniLM-L6 on rt_polarity, 150 steps of 32, seeds 0-2, lr 3e-3 (prompt/prefix/IA3 want a higher rate
than bottleneck adapters): prompt tuning with {1, 5, 20, 100} soft tokens; prefix tuning with {1, 5, 10, 20,
50} prefixes through the MLP (bottleneck 512) and flat (no MLP); IA3. Budget: ~2 min per run on the 2-core
CPU, 45 runs, about 1.5 hours (split it with --only, or run it on a GPU).
The papers: prompt tuning is weak below ~1B parameters (Lester Fig. 1); prefix tuning without the MLP is
unstable (Li & Liang §7.3); IA3 reaches LoRA's accuracy with ~10x fewer parameters (Liu et al. 2022).
"""
from adapters_jax.sweeps import grid
from experiments.ablations import common

METHODS = {
    **{f"prompt{n}": f"prompt_tuning[prompt_length={n}]" for n in (1, 5, 20, 100)},
    **{f"prefix{n}_mlp": f"prefix_tuning[prefix_length={n}]" for n in (1, 5, 10, 20, 50)},
    **{f"prefix{n}_flat": f"prefix_tuning[prefix_length={n},flat=true]" for n in (1, 5, 10, 20, 50)},
    "ia3": "ia3",
}


def get_config():
    c = common.recipe(max_steps=150, method="ia3")
    c.optimizer.lr = 3e-3
    return c


def finalize(c):
    c.adapter = METHODS[c.ablation.method]
    if c.adapter.startswith("prompt_tuning"):
        c.max_length = 64 + int(c.adapter.split("=")[1].rstrip("]"))  # the soft prompt must not crowd the text out
        c.buckets = (c.max_length,)
    return c


def sweep():
    return grid.product(grid.axis("ablation.method", list(METHODS)), grid.axis("seed", common.SEEDS))


REPORT = {
    "title": "Small budgets: prompts, prefixes, IA3",
    "x": "ablation.method", "xscale": "category",
    "paper": "Lester et al. 2021, Figure 1/3 (prompt length); Li & Liang 2021, Section 7.3 and Figure 5 "
             "(prefix length, reparameterisation); Liu et al. 2022, IA3 (T-Few), Table 1.",
}
