"""The optimizer, built from the partition's labels.

One optax AdamW per trainable label (adapter, head, or an extra rule's label),
combined with `optax.multi_transform`, behind global-norm clipping. It is built
over the trainable pytree only (the frozen base never reaches the optimizer, so
it holds no state for it). Inside each group, weight decay applies to matrices
only: biases, norm scales and IA3 vectors (1-D leaves) are not decayed.
"""
from __future__ import annotations

import jax
import optax

from adapters_jax.errors import ConfigError
from adapters_jax.partition import FROZEN


def schedule(lr: float, total_steps: int, warmup: float, kind: str = "linear") -> optax.Schedule:
    """Linear warm-up over `warmup` (a fraction of total_steps) then linear or cosine decay to 0."""
    warm = int(round(warmup * total_steps))
    rest = max(total_steps - warm, 1)
    if kind == "linear":
        decay = optax.linear_schedule(lr, 0.0, rest)
    elif kind == "cosine":
        decay = optax.cosine_decay_schedule(lr, rest)
    elif kind == "constant":
        decay = optax.constant_schedule(lr)
    else:
        raise ConfigError(f"optimizer schedule {kind!r}; choose linear, cosine or constant")
    if warm == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), decay], [warm])


def decay_mask(tree):
    return jax.tree.map(lambda x: x.ndim >= 2, tree)


def make(trainable_labels, *, lr: float, total_steps: int, warmup: float = 0.1, kind: str = "linear",
         weight_decay: float = 0.01, clip_norm: float | None = 1.0, group_lr: dict | None = None,
         b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, sgd: bool = False) -> optax.GradientTransformation:
    """trainable_labels: the labels pytree restricted to trainable leaves (no "frozen" in it).

    group_lr maps a label to its own peak learning rate (e.g. {"head": 1e-3}).
    sgd=True gives plain SGD at `lr` (for parity tests across topologies).
    """
    groups = sorted(set(jax.tree.leaves(trainable_labels)))
    if FROZEN in groups:
        raise ConfigError("the optimizer is built over trainable leaves only; split the params first")
    group_lr = group_lr or {}
    unknown = set(group_lr) - set(groups)
    if unknown:
        raise ConfigError(f"group_lr names {sorted(unknown)}, but the trainable labels are {groups}")
    txs = {}
    for g in groups:
        sched = schedule(group_lr.get(g, lr), total_steps, warmup, kind)
        txs[g] = optax.sgd(sched) if sgd else optax.adamw(sched, b1, b2, eps, weight_decay=weight_decay,
                                                          mask=decay_mask)
    tx = optax.multi_transform(txs, trainable_labels)
    return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm else tx


def from_config(o, trainable_labels, total_steps: int) -> optax.GradientTransformation:
    """`make` from an experiment config's `optimizer` block (experiments/configs/base.py)."""
    if o.name not in ("adamw", "sgd"):
        raise ConfigError(f"optimizer name {o.name!r}; choose adamw or sgd")
    return make(trainable_labels, lr=o.lr, total_steps=total_steps, warmup=o.warmup, kind=o.schedule,
                weight_decay=o.weight_decay, clip_norm=o.clip_norm, group_lr=dict(o.group_lr), sgd=o.name == "sgd")
