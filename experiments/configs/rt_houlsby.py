"""The default run (`make train`): a Houlsby adapter on MiniLM-L6 for rt_polarity.

    python scripts/train.py --config experiments/configs/rt_houlsby.py [--config.seed=1]

Recipe (the AdapterHub peer's): houlsby[bottleneck=64,non_linearity=relu], max 64
tokens, batch 32, 2 epochs, AdamW lr 1e-3, 10% warm-up then linear decay, weight
decay 0.01, clip 1.0. Ours to choose, and chosen:
- head: mean pooling + linear (all-MiniLM-L6-v2 was trained for mean pooling;
  its pooler/CLS path is weak), head dropout 0.1;
- the frozen base runs without its dropout (hidden and attention 0.1 -> 0). Chosen
  by mean validation accuracy over seeds 0-2 (81.86 against 81.48 with the base's
  dropout kept, rt_houlsby_dropout.py, which is the peer's setting).
Expected (oneDNN dots, which scripts/train.py picks for this BERT-family model):
mean test accuracy 83.50 over seeds 0-2 (83.33 / 83.41 / 83.74; rerun 2026-12-02, the
layer-span ablation's baseline; 83.50 / 83.41 / 83.66 on 2026-11-30 on another machine
or package set), seed 0 in ~330 s of steps on the 2-core CPU; with ADAPTERS_JAX_ONEDNN=0,
83.36; experiments/results/rt_polarity.md.
"""
from experiments.configs import base


def get_config():
    c = base.get_config()
    c.model_overrides = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    return c
