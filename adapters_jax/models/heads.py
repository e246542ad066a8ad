"""Task heads: linen modules a model applies to its last hidden state.

A head is passed to the model as its `head` attribute, so its params live under
`head/...` beside the base model's untouched paths. It receives the hidden
state [B, T, D], the token mask [B, T] and the pretrained pooler output (or
None), and computes in float32: it is small, and the loss is float32 anyway.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from adapters_jax.modules import banked
from adapters_jax.primitives import Dropout, Linear

POOLINGS = ("mean", "cls", "pooler", "last")


class Classification(nn.Module):
    """Sequence classification: pool, optional tanh hidden layer, dropout, linear to logits.

    pooling: "mean" over unpadded tokens (what sentence-transformers models such as
    all-MiniLM-L6-v2 were trained for), "cls" (first token), "pooler" (BERT's
    pretrained pooler, HF BertForSequenceClassification), "last" (last unpadded
    token, for decoders: HF LlamaForSequenceClassification).
    hidden_layers=1 adds dense+tanh before the output (AdapterHub's default head).
    """

    num_labels: int
    pooling: str = "mean"
    hidden_layers: int = 0
    dropout: float = 0.1

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}; choose one of {POOLINGS}")
        if self.num_labels < 1:
            raise ValueError(f"num_labels={self.num_labels} must be >= 1")
        super().__post_init__()

    @nn.compact
    def __call__(self, h_BxTxD, mask_BxT, pooled_BxD=None, deterministic=True):
        x_BxD = pool(self.pooling, h_BxTxD, mask_BxT, pooled_BxD)
        for i in range(self.hidden_layers):
            x_BxD = Dropout(self.dropout)(x_BxD, deterministic=deterministic)
            x_BxD = jnp.tanh(Linear(x_BxD.shape[-1], name=f"dense_{i}")(x_BxD))
        x_BxD = Dropout(self.dropout)(x_BxD, deterministic=deterministic)
        return Linear(self.num_labels, name="out_proj")(x_BxD)


def pool(pooling: str, h_BxTxD, mask_BxT, pooled_BxD=None):
    """[B, D] float32: the sequence pooled as `pooling` says (POOLINGS)."""
    h_BxTxD = h_BxTxD.astype(jnp.float32)
    m_BxT = mask_BxT.astype(jnp.float32)
    if pooling == "mean":
        x_BxD = (h_BxTxD * m_BxT[..., None]).sum(1) / jnp.maximum(m_BxT.sum(1, keepdims=True), 1.0)
    elif pooling == "cls":
        x_BxD = h_BxTxD[:, 0]
    elif pooling == "pooler":
        if pooled_BxD is None:
            raise ValueError("pooling='pooler' needs a model with a pooler (add_pooling_layer)")
        x_BxD = pooled_BxD.astype(jnp.float32)
    else:  # last unpadded token (right padding)
        last_B = jnp.maximum(m_BxT.sum(1).astype(jnp.int32) - 1, 0)
        x_BxD = jnp.take_along_axis(h_BxTxD, last_B[:, None, None], axis=1)[:, 0]
    return x_BxD


class SlotClassification(nn.Module):
    """One classification head per bank slot (multi-task: a head per task, each with its own label count).

    Pools once, then each example goes through its slot's head (a `Classification` of the
    largest label count, params `slots/...` with a leading [K] axis); the logits of labels a
    slot does not have are the float32 minimum, so its softmax and loss are its own head's.
    `ids` is set by adapters_jax.bank.route (each example's slot; -1 is not allowed here).
    """

    num_labels: tuple[int, ...]
    pooling: str = "mean"
    hidden_layers: int = 0
    dropout: float = 0.1
    ids: object = None

    @nn.compact
    def __call__(self, h_BxTxD, mask_BxT, pooled_BxD=None, deterministic=True):
        x_BxD = pool(self.pooling, h_BxTxD, mask_BxT, pooled_BxD)
        width, k = max(self.num_labels), len(self.num_labels)
        single = Classification(width, pooling="cls", hidden_layers=self.hidden_layers, dropout=self.dropout,
                                parent=None)
        ones_1x1 = jnp.ones((1, 1), jnp.int32)
        p = banked.Stacked(lambda: (single, (x_BxD[:1, None], ones_1x1)), k, name="slots")()
        rng = None if deterministic or self.dropout <= 0 else self.make_rng("dropout")
        x_Bx1xD = x_BxD[:, None]
        logits_BxL = banked.per_example(single, p, k, self.ids, (x_Bx1xD, jnp.ones(x_Bx1xD.shape[:2], jnp.int32)),
                                        (None, deterministic), rng)
        has_KxL = jnp.arange(width)[None] < jnp.asarray(self.num_labels)[:, None]
        idx_B, _ = banked.slots(self.ids, k)
        return jnp.where(has_KxL[idx_B], logits_BxL, jnp.finfo(jnp.float32).min)
