"""Ablation 2: removing trained adapters from a span of layers, no retraining (Houlsby et al. 2019, Fig. 6
left and centre).

    python scripts/sweep.py --config experiments/ablations/layer_span.py
    python scripts/report.py experiments/results/layer_span

The make-train run (Houlsby adapters, bottleneck 64, relu, on MiniLM-L6 for rt_polarity, 2 epochs) for
seeds 0-2; then, on each seed's final adapter, the test accuracy with the adapters of every contiguous
span of the 6 layers removed (their up-projections zeroed: an adapter with a zero up-projection is the
identity, so those layers run as the pretrained base), 21 spans plus none. Budget: about 6 min of
training and 2 min of evaluation per seed on the 2-core CPU, under half an hour.
The paper (BERT-base, 12 layers, MNLI/CoLA): removing one layer's adapters costs little; removing all of
them falls to the majority class; spans in the lower layers cost less than spans in the upper layers.
"""
import ml_collections

from adapters_jax import paths
from adapters_jax.sweeps import grid
from experiments.configs import rt_houlsby

LAYERS = 6


def get_config():
    c = rt_houlsby.get_config()
    c.ablation = ml_collections.ConfigDict({"layers": LAYERS})
    return c


def sweep():
    return grid.axis("seed", [0, 1, 2])


def spans(n: int = LAYERS) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i, n)]


def remove(trainable: dict, first: int, last: int) -> dict:
    """The trained params with the adapter up-projections of layers first..last zeroed."""
    leaves = paths.flat(trainable)
    return paths.unflat({p: v * 0 if (paths.parse(p).kind == "adapter" and "adapter_up" in p
                                       and first <= paths.layer_index(p) <= last) else v
                         for p, v in leaves.items()})


def evaluate(config, run_dir):
    from adapters_jax.sweeps.evaluate import evaluate_variants

    variants = {"none": lambda t: t} | {f"{i}-{j}": (lambda t, i=i, j=j: remove(t, i, j)) for i, j in spans()}
    out = evaluate_variants(config, run_dir, variants)
    rows = []
    for name, metrics in out.items():
        first, last = ("none", "none") if name == "none" else map(int, name.split("-"))
        rows.append({"variant": name, "factors": {"first": first, "last": last}, "metrics": metrics})
    return rows


REPORT = {
    "title": "Removing trained adapters by layer span (Houlsby et al. 2019, Fig. 6 left/centre)",
    "heatmap": ("first", "last"), "variants_only": True,
    "baseline": {"first": "none", "last": "none"},
    "paper": "Houlsby et al. 2019, Parameter-Efficient Transfer Learning for NLP, Figure 6 (left, centre): "
             "MNLI-m and CoLA validation accuracy with the adapters of layers i..j removed from a trained "
             "BERT-base; the diagonal (one layer) stays near the full model, the full span falls to the "
             "majority class, and lower layers matter less than higher ones.",
}
