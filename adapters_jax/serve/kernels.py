"""The compiled pieces of the serving engine, one set per engine (each closes over its model).

Continuous batching on the decoder's KV cache (models/kv_cache.py): the running
batch is one cache of B rows x S slots with one shared write index; a row's
keys carry their rotary positions already and a query sees every slot whose
mask is set below the index, so where a row's slots sit does not change what
it computes. That makes three moves exact:

- join:    new requests are prefilled in a cache of their own (n rows, T slots) and
           copied into free rows at slots 0..T-1 (below the index), their other slots masked;
- decode:  one step for all B rows, each with its own position, adapter slot and sampling;
- compact: a row's live slots are moved to the front (stable order), so the index can
           go down again when rows have finished.

Sampling per row follows decoding._sample (temperature, then top-k, then top-p) with
the row's own key: PRNGKey(seed) for its first token, fold_in(PRNGKey(seed), n) after,
as aj.generate draws a one-prompt batch.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from adapters_jax.adapters import route

NEG = float(jnp.finfo(jnp.float32).min)


def sample_rows(logits_BxV, temp_B, topk_B, topp_B, seed_B, step_B):
    """One token per row: greedy where temp is 0, else tempered, top-k, top-p, drawn with the row's key.

    Whether any row filters (top-k/top-p) or draws at all is data (lax.cond runs one branch), so one
    program serves every mix of sampling parameters and an all-greedy batch pays no sort or draw.
    """
    logits_BxV = logits_BxV.astype(jnp.float32)
    greedy_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    scaled_BxV = logits_BxV / jnp.where(temp_B > 0, temp_B, 1.0)[:, None]

    def filtered(scaled_BxV):
        v = scaled_BxV.shape[-1]
        sorted_BxV = jnp.sort(scaled_BxV, axis=-1)[:, ::-1]
        kth_Bx1 = jnp.take_along_axis(sorted_BxV, jnp.clip(topk_B - 1, 0, v - 1)[:, None], axis=-1)
        kth_Bx1 = jnp.where(topk_B[:, None] > 0, kth_Bx1, -jnp.inf)
        sorted_BxV = jnp.where(sorted_BxV < kth_Bx1, NEG, sorted_BxV)
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
        cut_Bx1 = jnp.min(jnp.where(before_BxV < topp_B[:, None], sorted_BxV, jnp.inf), axis=-1, keepdims=True)
        cut_Bx1 = jnp.where(topp_B[:, None] < 1.0, cut_Bx1, -jnp.inf)
        return jnp.where((scaled_BxV < kth_Bx1) | (scaled_BxV < cut_Bx1), NEG, scaled_BxV)

    def key(seed, step):
        k = jax.random.PRNGKey(seed)
        return jax.lax.cond(step == 0, lambda: k, lambda: jax.random.fold_in(k, step))

    def drawn(scaled_BxV):
        filters = jnp.any((temp_B > 0) & ((topk_B > 0) | (topp_B < 1.0)))
        scaled_BxV = jax.lax.cond(filters, filtered, lambda x: x, scaled_BxV)
        keys_B = jax.vmap(key)(seed_B, step_B)
        return jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys_B, scaled_BxV).astype(jnp.int32)

    drawn_B = jax.lax.cond(jnp.any(temp_B > 0), drawn, lambda _: greedy_B, scaled_BxV)
    return jnp.where(temp_B > 0, drawn_B, greedy_B)


def rows_bucket(n: int, max_batch: int) -> int:
    """The rows n inputs are run with: a power of two, at most max_batch (one compiled shape per bucket)."""
    return min(1 << (n - 1).bit_length(), max_batch)


class Kernels:
    def __init__(self, model):
        self.model = model
        self.prefill = jax.jit(functools.partial(_prefill, model))
        self.decode = jax.jit(functools.partial(_decode, model), donate_argnums=(2,))  # the cache
        self.insert = jax.jit(_insert, donate_argnums=(0,))
        self.compact = jax.jit(_compact, donate_argnums=(0,))
        self.write = jax.jit(_write, donate_argnums=(0,))
        self.classify = jax.jit(functools.partial(_classify, model))

    def compiled(self) -> int:
        """How many programs the engine has compiled (a hot load must not add any)."""
        return sum(f._cache_size() for f in (self.prefill, self.decode, self.insert, self.compact, self.write,
                                             self.classify))


def _prefill(model, params, ids_BxT, mask_BxT, positions_BxT, cache, slots_B, temp_B, topk_B, topp_B, seed_B):
    m = route(model, slots_B)
    h_BxTxD, cache = m.apply({"params": params}, ids_BxT, mask_BxT, positions_BxT=positions_BxT, cache=cache)
    logits_BxV = m.apply({"params": params}, h_BxTxD[:, -1:], method=m.logits)[:, 0]  # left padded: last is real
    step_B = jnp.zeros_like(seed_B)
    return sample_rows(logits_BxV, temp_B, topk_B, topp_B, seed_B, step_B), cache


def _decode(model, params, token_B, cache, position_B, slots_B, temp_B, topk_B, topp_B, seed_B, step_B):
    m = route(model, slots_B)
    ones_Bx1 = jnp.ones((token_B.shape[0], 1), jnp.int32)
    h_Bx1xD, cache = m.apply({"params": params}, token_B[:, None], ones_Bx1, positions_BxT=position_B[:, None],
                             cache=cache, prefill=False)
    logits_BxV = m.apply({"params": params}, h_Bx1xD, method=m.logits)[:, 0]
    return sample_rows(logits_BxV, temp_B, topk_B, topp_B, seed_B, step_B), cache


def _insert(cache, part, rows_n):
    """Copy the prefilled rows of `part` into rows `rows_n` of `cache` (an index >= B is dropped: padding)."""
    t = part["mask"].shape[1]
    layers = tuple((k.at[rows_n, :, :t].set(pk, mode="drop"), v.at[rows_n, :, :t].set(pv, mode="drop"))
                   for (k, v), (pk, pv) in zip(cache["layers"], part["layers"]))
    row_mask_nxS = jnp.zeros((rows_n.shape[0], cache["mask"].shape[1]), jnp.int32).at[:, :t].set(part["mask"])
    out = {**cache, "layers": layers, "mask": cache["mask"].at[rows_n].set(row_mask_nxS, mode="drop")}
    if part["prefixes"] is not None:
        out["prefixes"] = tuple((k.at[rows_n].set(pk, mode="drop"), v.at[rows_n].set(pv, mode="drop"))
                                for (k, v), (pk, pv) in zip(cache["prefixes"], part["prefixes"]))
    return out


def _compact(cache, live_B):
    """Each live row's set slots moved to the front in order; dead rows emptied. Returns (cache, count_B)."""
    mask_BxS = cache["mask"] * live_B[:, None]
    order_BxS = jnp.argsort(1 - mask_BxS, axis=1, stable=True)
    take = lambda x_BxNxSxK: jnp.take_along_axis(x_BxNxSxK, order_BxS[:, None, :, None], axis=2)
    layers = tuple((take(k), take(v)) for k, v in cache["layers"])
    mask_BxS = jnp.take_along_axis(mask_BxS, order_BxS, axis=1)
    return {**cache, "layers": layers, "mask": mask_BxS}, mask_BxS.sum(1)


def _write(leaves, slot, values):
    """Bank leaves with slot `slot` replaced by `values` (in place: the leaves are donated)."""
    return {k: jax.lax.dynamic_update_index_in_dim(x, values[k].astype(x.dtype), slot, 0) for k, x in leaves.items()}


def _classify(model, params, ids_BxT, mask_BxT, slots_B):
    return route(model, slots_B).apply({"params": params}, ids_BxT, mask_BxT)
