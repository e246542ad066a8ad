"""Prefix tuning (Li & Liang 2021), as AdapterHub builds it.

One pool per model: for each adapter, `prefix_length` learned embeddings go
through a two-layer reparameterisation MLP (`control_trans`) to the keys and
values of every layer at once: [P, n_layers * 2 * n_heads * head_dim]. Layer i
gets slices 2i (keys) and 2i+1 (values), prepended to its own keys and values;
the attention mask is extended with ones, so every token sees the prefix.
`flat=True` learns those key/values directly, without the MLP.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from adapters_jax.configs import PrefixTuning
from adapters_jax.primitives import Dropout, Embed, Linear, activation


class PrefixKV(nn.Module):
    """Params wte/embedding [P, D], control_trans_0 [D, M], control_trans_2 [M, L*2*H*K] (or flat control_trans)."""

    config: PrefixTuning
    n_layers: int
    n_heads: int
    head_dim: int
    hidden: int
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, batch: int, deterministic: bool):
        c = self.config
        p, out = c.prefix_length, self.n_layers * 2 * self.n_heads * self.head_dim
        if c.flat:
            kv_PxO = self.param("control_trans", nn.initializers.normal(1.0), (p * out,)).reshape(p, out)
        else:
            e_PxD = Embed(p, self.hidden, name="wte")(jnp.arange(p))
            h_PxM = activation(c.non_linearity)(Linear(c.bottleneck_size, name="control_trans_0")(e_PxD))
            kv_PxO = Linear(out, name="control_trans_2")(h_PxM)
        kv_BxPxO = jnp.broadcast_to(kv_PxO.astype(self.dtype), (batch, p, out))
        kv_BxPxO = Dropout(c.dropout)(kv_BxPxO, deterministic=deterministic)
        kv_BxPxLx2xHxK = kv_BxPxO.reshape(batch, p, self.n_layers, 2, self.n_heads, self.head_dim)
        return kv_BxPxLx2xHxK


def prepend(prefix, k_BxSxNxK, v_BxSxNxK, bias_Bx1x1xS, kv_layout: str = "BSNK"):
    """Put a layer's prefix keys/values [B, P, N, K] in front of its own; the mask sees them.

    A third element seen [B, P] (an adapter bank's prefixes) hides the positions where it is False.
    kv_layout "BNSK": the keys and values are [B, N, S, K] (a KV cache's, primitives.attention).
    """
    pk_BxPxNxK, pv_BxPxNxK = prefix[:2]
    b, p = pk_BxPxNxK.shape[:2]
    axis = kv_layout.index("S")  # primitives.KV_LAYOUTS
    if kv_layout == "BNSK":
        pk_BxPxNxK, pv_BxPxNxK = pk_BxPxNxK.transpose(0, 2, 1, 3), pv_BxPxNxK.transpose(0, 2, 1, 3)
    k = jnp.concatenate([pk_BxPxNxK.astype(k_BxSxNxK.dtype), k_BxSxNxK], axis=axis)
    v = jnp.concatenate([pv_BxPxNxK.astype(v_BxSxNxK.dtype), v_BxSxNxK], axis=axis)
    if len(prefix) == 3:
        dtype = bias_Bx1x1xS.dtype if bias_Bx1x1xS is not None else jnp.float32
        pbias_Bx1x1xP = jnp.where(prefix[2], 0.0, jnp.finfo(dtype).min).astype(dtype)[:, None, None, :]
        if bias_Bx1x1xS is None:
            bias_Bx1x1xS = jnp.zeros((b, 1, 1, k_BxSxNxK.shape[axis]), dtype)
        pbias = jnp.broadcast_to(pbias_Bx1x1xP, bias_Bx1x1xS.shape[:-1] + (p,))
        return k, v, jnp.concatenate([pbias, bias_Bx1x1xS], axis=-1)
    if bias_Bx1x1xS is not None:
        zeros_Bx1x1xP = jnp.zeros(bias_Bx1x1xS.shape[:-1] + (p,), bias_Bx1x1xS.dtype)
        bias_Bx1x1xS = jnp.concatenate([zeros_Bx1x1xP, bias_Bx1x1xS], axis=-1)
    return k, v, bias_Bx1x1xS
