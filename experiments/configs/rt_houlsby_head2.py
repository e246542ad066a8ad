"""Ablation: the default Houlsby run with AdapterHub's two-layer head (mean pool -> dense+tanh -> linear).

    python scripts/train.py --config experiments/configs/rt_houlsby_head2.py

Result: experiments/results/rt_polarity.md.
"""
from experiments.configs import base


def get_config():
    c = base.get_config()
    c.head.hidden_layers = 1
    return c
