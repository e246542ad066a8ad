"""A preallocated key/value cache for decoding with the Llama family.

The cache is a plain dict pytree, so a jitted step takes it and returns it
(donate it to update in place):

    layers    per layer (k, v) [B, N, S, K]: N key/value heads, S slots (heads before slots: a decode
              step's attention reads them in place; primitives.attention's kv_layout)
    mask      [B, S] int32: 1 where a slot holds a real token (not padding, not yet written)
    index     int32 scalar: the next slot to write; every row advances in lockstep
    prefixes  per layer (k, v) [B, P, N, K] of the active prefix adapters, stored by the prefill
              (computed once per generation, not per token), or None

A query in slot q attends to slot j when mask[b, j] is set and j <= q (and
q - j < sliding_window), so prompts padded on either side are exact: padding
slots are never attended and each row's positions come from its own count of
real tokens. One compiled shape per (batch, slots).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def init(config, batch: int, slots: int, dtype=jnp.float32) -> dict:
    """An empty cache of `slots` positions per row for a llama.Config."""
    shape = (batch, config.num_key_value_heads, slots, config.head_dim)
    layers = tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(config.num_hidden_layers))
    return {"layers": layers, "mask": jnp.zeros((batch, slots), jnp.int32), "index": jnp.zeros((), jnp.int32),
            "prefixes": None}


def slots_for(prompt_bucket: int, n_soft: int, max_new_tokens: int) -> int:
    """Cache slots for a prompt bucket, its soft prompt and the new tokens: a power of two, at least 64."""
    need = prompt_bucket + n_soft + max_new_tokens
    return max(64, 1 << (need - 1).bit_length())


def nbytes(config, batch: int, slots: int, dtype=jnp.float32) -> int:
    """Bytes of the keys and values of `init(config, batch, slots, dtype)`."""
    per_layer = 2 * batch * slots * config.num_key_value_heads * config.head_dim * jnp.dtype(dtype).itemsize
    return per_layer * config.num_hidden_layers


def slot_bias(q_slots_T: jax.Array, s: int, mask_BxS: jax.Array | None, sliding_window: int | None) -> jax.Array:
    """Additive float32 bias [B or 1, 1, T, S]: query slot q sees slot j <= q (within the window) whose mask is set.

    Masks go by slot index (as HF's cache positions), not by positions; the uncached forward is the case
    q_slots = 0..T-1, S = T.
    """
    q_T1 = q_slots_T[:, None]
    k_1S = jnp.arange(s)[None, :]
    allowed_TxS = k_1S <= q_T1
    if sliding_window is not None:
        allowed_TxS &= q_T1 - k_1S < sliding_window
    allowed_BxTxS = allowed_TxS[None]
    if mask_BxS is not None:
        allowed_BxTxS = allowed_BxTxS & (mask_BxS[:, None, :] > 0)
    return jnp.where(allowed_BxTxS[:, None], 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def write_mask(cache: dict, mask_BxT: jax.Array, sliding_window: int | None) -> tuple[dict, jax.Array]:
    """Mark the T new slots from index on with `mask_BxT`; the additive bias [B, 1, T, S] of the new queries."""
    index = cache["index"]
    mask_BxS = jax.lax.dynamic_update_slice(cache["mask"], mask_BxT.astype(jnp.int32), (0, index))
    q_slots_T = index + jnp.arange(mask_BxT.shape[1])
    return {**cache, "mask": mask_BxS}, slot_bias(q_slots_T, mask_BxS.shape[1], mask_BxS, sliding_window)


def advance(cache: dict, layers: tuple, t: int, prefixes) -> dict:
    """The cache after writing `t` slots: the new per-layer keys/values, the index moved on, the prefixes kept."""
    return {**cache, "layers": layers, "index": cache["index"] + t, "prefixes": prefixes}
