"""Ablation 7: AdapterDrop (Rücklé et al. 2021): no adapters in the lowest n layers.

    python scripts/sweep.py --config experiments/ablations/adapterdrop.py
    python scripts/report.py experiments/results/adapterdrop

MiniLM-L6 on rt_polarity, Houlsby adapters (m=64), 200 steps of 32, seeds 0-2: trained and evaluated
without adapters in the lowest n in {0..5} layers (fixed AdapterDrop, config.adapter_drop.layers), and
robust AdapterDrop (n drawn from 0..5 per step) evaluated with the lowest n removed for every n (rows from
evaluate()). Training step time per point is in each row (train_s / steps). Budget: ~2.5 min per run on the
2-core CPU, 21 runs, under an hour.
The paper: dropping the lowest 5 of 12 layers costs about a point on GLUE and speeds training/inference
up; robust AdapterDrop keeps one model usable at every n.
"""
from adapters_jax.sweeps import grid
from experiments.ablations import common
from experiments.ablations.layer_span import remove

POINTS = [*(str(n) for n in range(6)), "random"]


def get_config():
    c = common.recipe(max_steps=200, drop="0")
    c.adapter = common.houlsby(64)
    return c


def finalize(c):
    random = c.ablation.drop == "random"
    c.adapter_drop.layers, c.adapter_drop.random = (5, True) if random else (int(c.ablation.drop), False)
    return c


def sweep():
    return grid.product(grid.axis("ablation.drop", POINTS), grid.axis("seed", common.SEEDS))


def evaluate(config, run_dir):
    if not config.adapter_drop.random:
        return []
    from adapters_jax.sweeps.evaluate import evaluate_variants

    variants = {f"robust_drop{n}": (lambda t, n=n: remove(t, 0, n - 1) if n else t) for n in range(6)}
    return [{"variant": k, "factors": {"ablation.drop": f"random@{k[-1]}"}, "metrics": m}
            for k, m in evaluate_variants(config, run_dir, variants).items()]


REPORT = {
    "title": "AdapterDrop (Rücklé et al. 2021)",
    "x": "ablation.drop", "xscale": "category", "baseline": {"ablation.drop": "0"},
    "paper": "Rücklé et al. 2021, AdapterDrop: On the Efficiency of Adapters in Transformers, Figure 3 "
             "(GLUE accuracy and speed with adapters dropped from the lowest layers; robust AdapterDrop).",
}
