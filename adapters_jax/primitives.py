"""Primitive layers shared by adapter modules and model families; they know nothing of adapters.

Linear, Embed, LayerNorm/RMSNorm, Dropout (hash-based masks), the activation
table and scaled dot-product attention. Params are stored in `param_dtype`
(float32 by default) and cast to the compute `dtype` at use, so float32 master
weights with bf16 compute is one flag. The bottom layer of the library:
modules/ (adapters and their hooks) and models/ build on it; it imports nothing
from either.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
default_kernel_init = nn.initializers.normal(stddev=0.02)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # erf GELU, as torch's nn.GELU()
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "leakyrelu": lambda x: jax.nn.leaky_relu(x, 0.01),
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called `name` (case-insensitive; HF's hidden_act and AdapterHub's non_linearity names)."""
    try:
        return ACTIVATIONS[name.lower()]
    except KeyError:
        raise ValueError(f"activation {name!r} is not supported; supported: {sorted(ACTIVATIONS)}") from None


class Linear(nn.Module):
    """y = x @ kernel + bias, kernel stored [in, out] (the transpose of torch's weight).

    `project` creates the params and computes the product, so a subclass that
    adds work around it (modules/hooks.AdaptedLinear) keeps the same param names.
    """

    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = default_kernel_init

    @nn.compact
    def __call__(self, x_BxTxI: jax.Array, deterministic: bool = True) -> jax.Array:
        return self.project(x_BxTxI.astype(self.dtype))

    def project(self, x_BxTxI: jax.Array) -> jax.Array:
        kernel_IxO = self.param("kernel", self.kernel_init, (x_BxTxI.shape[-1], self.features), self.param_dtype)
        y_BxTxO = jnp.dot(x_BxTxI, kernel_IxO.astype(self.dtype))
        if self.use_bias:
            bias_O = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            y_BxTxO = y_BxTxO + bias_O.astype(self.dtype)
        return y_BxTxO


@jax.custom_vjp
def materialize_grad(x):
    """Identity whose backward pass writes the incoming gradient to memory once (XLA:CPU only).

    XLA:CPU fuses cheap elementwise producers into every consumer. In a
    transformer's backward pass the residual stream's gradient is such a chain
    (each norm's backward, layer after layer), so each of the ~20 fusions that
    read it per layer recomputes it from all later layers: measured ~25% of a
    Houlsby step on MiniLM-L6 (profile: bench/results/README.md). The barrier is
    a one-trip while loop (opaque to fusion; XLA drops optimization_barrier and
    turns small conditionals into selects). Values are unchanged: y * 1.0.
    """
    return x


def _materialize_fwd(x):
    return x, None


def _materialize_bwd(_, g):
    if jax.default_backend() != "cpu":
        return (g,)
    first = g.reshape(-1)[0]
    trips = 1 + (first != first).astype(jnp.int32)  # 1 or 2, unknown to the compiler
    one = lambda i: jnp.where(i >= 0, 1, 0).astype(g.dtype)
    return (jax.lax.fori_loop(0, trips, lambda i, y: y * one(i), g),)


materialize_grad.defvjp(_materialize_fwd, _materialize_bwd)


class LayerNorm(nn.Module):
    """LayerNorm computed in float32 whatever the compute dtype (params `scale`, `bias`)."""

    eps: float = 1e-12
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        d = x_BxTxD.shape[-1]
        scale_D = self.param("scale", nn.initializers.ones, (d,), self.param_dtype)
        bias_D = self.param("bias", nn.initializers.zeros, (d,), self.param_dtype)
        x = materialize_grad(x_BxTxD).astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale_D.astype(jnp.float32) + bias_D.astype(jnp.float32)).astype(self.dtype)


class RMSNorm(nn.Module):
    """Llama's RMSNorm: x / rms(x) * scale, computed in float32 (param `scale`, torch `weight`)."""

    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        scale_D = self.param("scale", nn.initializers.ones, (x_BxTxD.shape[-1],), self.param_dtype)
        x = materialize_grad(x_BxTxD).astype(jnp.float32)
        y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps)
        return (y * scale_D.astype(jnp.float32)).astype(self.dtype)


class Embed(nn.Module):
    """Token/position embedding table (param `embedding`, torch `weight`)."""

    num_embeddings: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding", default_kernel_init, (self.num_embeddings, self.features), self.param_dtype
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, h_BxTxD: jax.Array) -> jax.Array:
        """Tied output projection: logits against the embedding table."""
        return jnp.dot(h_BxTxD.astype(self.dtype), self.embedding.astype(self.dtype).T)


def _fmix32(x_u32: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finalizer: a bijection of uint32 with full avalanche."""
    x_u32 = x_u32 ^ (x_u32 >> 16)
    x_u32 = x_u32 * jnp.uint32(0x85EBCA6B)
    x_u32 = x_u32 ^ (x_u32 >> 13)
    x_u32 = x_u32 * jnp.uint32(0xC2B2AE35)
    return x_u32 ^ (x_u32 >> 16)


def hash_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 words of `shape`: fmix32(fmix32(i * golden ^ k0) ^ k1), i the flat element index, (k0, k1) the key's words.

    For a fixed key the map i -> bits is a bijection (no repeated words within a
    mask); different keys give unrelated words. Keys still come from threefry
    (make_rng / fold_in), one per mask, so randomness stays splittable.
    """
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    words = key.reshape(-1).astype(jnp.uint32)
    n = math.prod(shape)
    if n >= 2**32:
        raise ValueError(f"hash_bits: {shape} has {n} elements; the element counter is 32 bits")
    i = jax.lax.iota(jnp.uint32, n).reshape(shape)
    return _fmix32(_fmix32((i * jnp.uint32(0x9E3779B9)) ^ words[0]) ^ words[-1])


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """Bernoulli(1 - rate) dropout mask of `shape` from `hash_bits` of (key, element index).

    jax.random.bernoulli draws threefry bits, which XLA:CPU runs as a rolled loop
    of memory-bound passes: 12% of a Houlsby step on MiniLM-L6 for the attention
    masks alone (bench/results/README.md). `hash_bits` is about a dozen integer
    ops per element that fuse into the mask's consumer (tests/test_dropout.py
    checks the rate, the independence of neighbouring elements and of keys, and
    the bijection). The keep probability is 1 - round(rate * 2^32) / 2^32.
    """
    threshold = min(int(round(rate * 2.0**32)), 2**32 - 1)
    return hash_bits(key, shape) >= jnp.uint32(threshold)


def dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Inverted dropout with `keep_mask`; rate 0 is the identity, rate 1 zeros."""
    if rate <= 0.0:
        return x
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep = keep_mask(key, rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
    """Drop-in for flax's nn.Dropout (same call signature, rng stream "dropout") on `keep_mask`."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        if deterministic or self.rate <= 0.0:
            return x
        return dropout(x, self.rate, self.make_rng("dropout"))


KV_LAYOUTS = ("BSNK", "BNSK")  # keys/values slot-major (projections) or heads-major (KV cache); S slots, N heads


@functools.partial(jax.checkpoint, static_argnums=(4, 5))
def _attention_probs(q_BxTxNxGxK, k_BxSxNxK, bias_Bx1xTxS, dropout_rng, dropout_rate: float, kv_layout: str):
    """softmax(q k^T / sqrt(K) + bias), dropped out: recomputed in the backward pass, not stored.

    The [B, H, T, S] probabilities (and their logits) are the largest activation
    per layer that a frozen model keeps for its backward pass; recomputing them
    from q and k (kept anyway for dq, dk) costs one [T, K] x [K, S] product per
    head. SmolLM2-135M batch 8 seq 128: bench/results/README.md.
    """
    k = q_BxTxNxGxK.shape[-1]
    logits = jnp.einsum(f"btngk,{kv_layout.lower()}->bngts", q_BxTxNxGxK, k_BxSxNxK).astype(jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(k))
    if bias_Bx1xTxS is not None:
        logits = logits + bias_Bx1xTxS[:, :, None].astype(jnp.float32)
    return dropout(jax.nn.softmax(logits, axis=-1), dropout_rate, dropout_rng)


def attention(
    q_BxTxHxK: jax.Array,
    k_BxSxNxK: jax.Array,
    v_BxSxNxK: jax.Array,
    bias_Bx1xTxS: jax.Array | None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    deterministic: bool = True,
    kv_layout: str = "BSNK",
) -> jax.Array:
    """Scaled dot-product attention with grouped-query heads (H query heads share N kv heads).

    The softmax is taken in float32; `bias` is additive (0 or a large negative number).
    `kv_layout` "BNSK": keys and values are [B, N, S, K] (the KV cache's layout, models/kv_cache.py):
    XLA:CPU then runs the batched (b, n) products without moving the cache; with [B, S, N, K] it copies
    every layer's keys and values to that order first (~8% of a SmolLM2 batch-16 decode step's thunk
    time; bench/results/README.md, "One decode step across commits"). Returns [B, T, H, K].
    """
    if kv_layout not in KV_LAYOUTS:
        raise ValueError(f"kv_layout={kv_layout!r}; expected one of {list(KV_LAYOUTS)}")
    b, t, h, k = q_BxTxHxK.shape
    n = k_BxSxNxK.shape[kv_layout.index("N")]
    q_BxTxNxGxK = q_BxTxHxK.reshape(b, t, n, h // n, k)
    rate = 0.0 if deterministic else dropout_rate  # rate 0: dropout is the identity and never reads the rng
    probs = _attention_probs(q_BxTxNxGxK, k_BxSxNxK, bias_Bx1xTxS, dropout_rng if rate > 0.0 else None, rate,
                             kv_layout)
    probs = probs.astype(v_BxSxNxK.dtype)
    if kv_layout == "BNSK":  # probs [B, N, G*T, S] as the left operand, v [B, N, S, K] untransposed on the right
        g = h // n
        out_BxNxGTxK = jax.lax.dot_general(probs.reshape(b, n, g * t, -1), v_BxSxNxK, (((3,), (2,)), ((0, 1), (0, 1))))
        return out_BxNxGTxK.reshape(b, n, g, t, k).transpose(0, 3, 1, 2, 4).reshape(b, t, h, k)
    out_BxTxNxGxK = jnp.einsum("bngts,bsnk->btngk", probs, v_BxSxNxK)
    return out_BxTxNxGxK.reshape(b, t, h, k)


def mask_to_bias(mask_BxS: jax.Array, dtype=jnp.float32) -> jax.Array:
    """[B, S] 1/0 padding mask -> additive bias [B, 1, 1, S]."""
    return jnp.where(mask_BxS[:, None, None, :] > 0, 0.0, jnp.finfo(dtype).min).astype(dtype)
