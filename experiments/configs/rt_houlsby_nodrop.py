"""Ablation: the default run with the frozen base's dropout off (hidden and attention; the head keeps 0.1).

    python scripts/train.py --config experiments/configs/rt_houlsby_nodrop.py

The frozen MiniLM-L6 keeps its pretraining dropout (0.1) in the default run, as
AdapterHub and PEFT do. Does the adapter fit faster within the 2-epoch budget
without that noise? Expected: see experiments/results/rt_polarity.md.
"""
from experiments.configs import base


def get_config():
    c = base.get_config()
    c.model_overrides = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    return c
