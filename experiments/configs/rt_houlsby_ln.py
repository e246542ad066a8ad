"""Ablation: the default Houlsby run plus the base's LayerNorms trained (as Houlsby et al. 2019 did).

    python scripts/train.py --config experiments/configs/rt_houlsby_ln.py

AdapterHub's train_adapter (the peer's recipe, our default) keeps LayerNorms
frozen; the paper trains them. Adds 2 x 2 x 384 params per layer (+9,984 with
the embeddings' LayerNorm). Result: experiments/results/rt_polarity.md.
"""
from experiments.configs import base


def get_config():
    c = base.get_config()
    c.train_rules = [(r"LayerNorm/(scale|bias)$", "norm")]
    return c
