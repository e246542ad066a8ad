"""The adapter bank's forward pass: K adapters stacked on a leading axis, a slot per example.

A bank's params are one adapter's params with a leading slot axis, under the
bank's name where an adapter's name would be (adapters_jax/paths.py):

    .../query/lora/<bank>/lora_A [K, in, r]        .../output/adapters/<bank>/adapter_down/kernel [K, D, M]

Example b reads slot ids[b]: its params are gathered ([B, ...]) and it computes
what that adapter computes alone: the same two products batched over examples
for LoRA, the same scale for IA3, the same linen module applied per example
(`jax.vmap` over the batch) for bottleneck and prefix adapters. ids[b] = -1
runs the base there: the LoRA update is zeroed, the IA3 scale is one, the
bottleneck output is the block's own, the prefix and prompt positions are
masked out of attention (and not counted in the tokens' positions). Members
smaller than the bank (LoRA rank, bottleneck size, prefix and prompt length) are
zero-padded by adapters_jax/bank.py; padded rows and columns add exactly nothing,
padded prefix and prompt positions are masked out of attention (`seen`: masked
keys get exactly zero weight). Dropout inside a banked adapter draws per example.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adapters_jax.primitives import dropout


class Stacked(nn.Module):
    """Declares the bank's params: each top-level key of one adapter's params, with a leading [K] axis.

    `factory()` returns (an unbound module for one adapter, example call args); a fresh
    bank initialises each slot as that adapter would be, with its own rng.
    """

    factory: Callable
    size: int

    @nn.compact
    def __call__(self) -> dict:
        single, args = self.factory()
        shapes = jax.eval_shape(lambda: single.init(jax.random.PRNGKey(0), *args)["params"])

        def init_for(key):
            def init(rng):
                return jax.vmap(lambda r: single.init(r, *args)["params"][key])(jax.random.split(rng, self.size))
            return init

        return {k: self.param(k, init_for(k)) for k in shapes}


def slots(ids_B, size: int):
    """(slot index clamped into range [B], valid [B]: the example uses a slot, not the base alone)."""
    ids_B = jnp.asarray(ids_B, jnp.int32)
    return jnp.clip(ids_B, 0, size - 1), ids_B >= 0


def gather(tree, idx_B):
    return jax.tree_util.tree_map(lambda a: a[idx_B], tree)


# tokens per example x slots at or below which banked.lora multiplies every slot's A and B instead of gathering
# each example's: at decode shapes (t=1, 32 slots) the [B, in, r] gathers cost more than the arithmetic they
# save (MiniLM-L6 b32 t1, 32 adapters: 0.68 -> 0.85 of the one-adapter forward, bench/results/README.md)
ALL_SLOTS_MAX_TK = 64


def lora(p, scaling_K: np.ndarray, x_BxTxI, ids_B, rate: float, rng, dtype):
    """Each example's LoRA update (alpha/r) * dropout(x) A B with its slot's A, B and scaling; 0 for id -1.

    Few tokens and slots (T * K <= ALL_SLOTS_MAX_TK): x A_k for every slot k, then each example's own slot
    kept (a one-hot weight carrying its scaling) and multiplied with every B_k: the other slots add exact
    zeros. Otherwise each example's A and B are gathered ([B, in, r], [B, r, out]) and multiplied.
    """
    k = scaling_K.shape[0]
    idx_B, valid_B = slots(ids_B, k)
    if rng is not None and rate > 0.0:
        x_BxTxI = dropout(x_BxTxI, rate, rng)
    s_B = jnp.where(valid_B, jnp.asarray(scaling_K, dtype)[idx_B], 0)
    if x_BxTxI.shape[1] * k <= ALL_SLOTS_MAX_TK:
        h_BxTxKxR = jnp.einsum("bti,kir->btkr", x_BxTxI, p["lora_A"].astype(dtype))
        w_BxK = jax.nn.one_hot(idx_B, k, dtype=dtype) * s_B[:, None]
        return jnp.einsum("btkr,kro->bto", h_BxTxKxR * w_BxK[:, None, :, None], p["lora_B"].astype(dtype))
    h_BxTxR = jnp.einsum("bti,bir->btr", x_BxTxI, p["lora_A"][idx_B].astype(dtype))
    up_BxTxO = jnp.einsum("btr,bro->bto", h_BxTxR, p["lora_B"][idx_B].astype(dtype))
    return up_BxTxO * s_B[:, None, None]


def ia3(p, size: int, h_BxTxN, ids_B, dtype):
    """Each example's IA3 scale of h (ones for id -1)."""
    idx_B, valid_B = slots(ids_B, size)
    l_BxN = jnp.where(valid_B[:, None], p["ia3_l"][idx_B].astype(dtype), jnp.ones((), dtype))
    return h_BxTxN * l_BxN[:, None, :]


def seen(bank, config, ids_B, length: int):
    """[B, P] which of the bank's P positions of prefix- or prompt-tuning method `config` example b uses: the
    first n of its slot's member, n its true length (the rest is padding); none for id -1."""
    lengths_K = np.asarray(bank.lengths(config), np.int32)
    idx_B, valid_B = slots(ids_B, bank.size)
    return valid_B[:, None] & (jnp.arange(length)[None, :] < jnp.asarray(lengths_K)[idx_B][:, None])


def right_align(x_BxPxD, seen_BxP):
    """(x, seen) with each example's seen rows (the first n of P) moved to the end, after its P - n unseen ones:
    a shorter soft prompt then sits right before the tokens, as it does alone (sliding windows count slots)."""
    p = seen_BxP.shape[1]
    src_BxP = jnp.arange(p)[None, :] - (p - seen_BxP.sum(1))[:, None]
    return jnp.take_along_axis(x_BxPxD, jnp.maximum(src_BxP, 0)[..., None], axis=1), src_BxP >= 0


def per_example(single, p, size: int, ids_B, args_B: tuple, static: tuple = (), rng=None):
    """`single` applied to each example with its slot's params: vmap over the batch of gathered params.

    args_B are batched ([B, ...], each example gets its own row, a leading axis of 1 added back);
    static args are passed as they are. Dropout keys: one per example from `rng`.
    """
    idx_B, _ = slots(ids_B, size)
    keys = jax.random.split(rng, idx_B.shape[0]) if rng is not None else None

    def one(params, key, *args):
        rngs = {"dropout": key} if key is not None else {}
        out = single.apply({"params": params}, *(a[None] for a in args), *static, rngs=rngs)
        return jax.tree_util.tree_map(lambda o: o[0], out)

    return jax.vmap(one, in_axes=(0, 0 if keys is not None else None) + (0,) * len(args_B))(
        gather(p, idx_B), keys, *args_B)
