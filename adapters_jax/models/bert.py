"""The BERT family (BERT, RoBERTa, MiniLM) as a Flax linen encoder.

Post-LN blocks, absolute learned positions (RoBERTa's offset by pad_token_id+1),
token types defaulting to zeros, exact erf GELU, optional pooler. Param paths
mirror the HF module names (`encoder/layer_0/attention/self/query/kernel`).

Layers are unrolled, not under `nn.scan`: scan would stack the layers under one
path (`encoder/layer/...`) and break the one-to-one mirror of HF names that
checkpoint loading and PEFT/AdapterHub interop rely on. Compile time for the
6-layer MiniLM is a few seconds either way (measured: see README, Models).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from adapters_jax.errors import CheckpointError
from adapters_jax.modules import hooks
from adapters_jax.modules.hooks import AdaptedLinear
from adapters_jax.modules.prefix import prepend
from adapters_jax.primitives import ACTIVATIONS, Dropout, Embed, LayerNorm, Linear, activation, attention, mask_to_bias

FAMILY = "bert"  # paths.HF_DROP: which HF tensors have no param here


@dataclasses.dataclass(frozen=True)
class Config:
    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    add_pooling_layer: bool = True
    remat: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def position_offset(self) -> int:
        # RoBERTa numbers positions from pad_token_id + 1 (HF create_position_ids_from_input_ids)
        return self.pad_token_id + 1 if self.model_type == "roberta" else 0


def config_from_hf(d: dict, **overrides) -> Config:
    fields = {f.name for f in dataclasses.fields(Config)}
    kw = {k: v for k, v in d.items() if k in fields}
    if kw.get("hidden_act") not in ACTIVATIONS:
        raise CheckpointError(f"hidden_act={kw.get('hidden_act')!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"position_embedding_type={d['position_embedding_type']!r}: only 'absolute' is supported")
    kw.update(overrides)
    return Config(**kw)


def dummy_inputs(config: Config):
    return jnp.ones((1, 8), jnp.int32)


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout.

    Prompt tuning prepends its soft prompt to the word embeddings here, before
    positions are added, as PEFT does; the mask and token types grow with it.
    Returns (h [B, P+T, D], attention_mask [B, P+T], P).
    """

    config: Config
    adapters: Any = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids_BxT, mask_BxT, token_types_BxT, deterministic):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        word_embeddings = Embed(c.vocab_size, c.hidden_size, name="word_embeddings", **kw)
        w_BxSxD = word_embeddings(ids_BxT)
        w_BxSxD, mask_BxS, n_prompt = hooks.prompt(self, w_BxSxD, mask_BxT, word_embeddings.embedding)
        b, s = mask_BxS.shape
        token_types_BxS = jnp.pad(token_types_BxT, ((0, 0), (n_prompt, 0)))
        if c.model_type == "roberta":  # HF create_position_ids_from_input_ids; the prompt positions a row sees count
            not_pad_BxS = jnp.concatenate([mask_BxS[:, :n_prompt].astype(jnp.int32),
                                           (ids_BxT != c.pad_token_id).astype(jnp.int32)], axis=1)
            positions_BxS = jnp.cumsum(not_pad_BxS, axis=1) * not_pad_BxS + c.pad_token_id
        else:
            positions_BxS = jnp.broadcast_to(jnp.arange(s - n_prompt), (b, s - n_prompt))
            if n_prompt:
                positions_BxS = hooks.positions_after_prompt(mask_BxS, n_prompt, positions_BxS)
        h_BxSxD = w_BxSxD + Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings", **kw)(positions_BxS)
        h_BxSxD = h_BxSxD + Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings", **kw)(token_types_BxS)
        h_BxSxD = LayerNorm(c.layer_norm_eps, name="LayerNorm", **kw)(h_BxSxD)
        return Dropout(c.hidden_dropout_prob)(h_BxSxD, deterministic=deterministic), mask_BxS, n_prompt


class SelfAttention(nn.Module):
    config: Config
    adapters: Any = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h_BxTxD, bias_Bx1xTxS, deterministic, prefix=None):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, adapters=self.adapters)
        b, t, _ = h_BxTxD.shape
        split = lambda x: x.reshape(b, x.shape[1], c.num_attention_heads, c.head_dim)
        q_BxTxHxK = split(AdaptedLinear(c.hidden_size, name="query", **kw)(h_BxTxD, deterministic))
        k_BxSxHxK = split(AdaptedLinear(c.hidden_size, name="key", **kw)(h_BxTxD, deterministic))
        v_BxSxHxK = split(AdaptedLinear(c.hidden_size, name="value", **kw)(h_BxTxD, deterministic))
        if prefix is not None:  # prefix tuning: extra key/value positions in front
            k_BxSxHxK, v_BxSxHxK, bias_Bx1xTxS = prepend(prefix, k_BxSxHxK, v_BxSxHxK, bias_Bx1xTxS)
        rng = None if deterministic or c.attention_probs_dropout_prob == 0 else self.make_rng("dropout")
        out_BxTxHxK = attention(
            q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, bias_Bx1xTxS, c.attention_probs_dropout_prob, rng, deterministic
        )
        return out_BxTxHxK.reshape(b, t, c.hidden_size)


class SublayerOutput(nn.Module):
    """dense -> dropout -> (bottleneck adapters) -> LayerNorm(h + input): BertSelfOutput and BertOutput."""

    config: Config
    location: str  # "mh_adapter" (after attention) or "output_adapter" (after the FFN): AdapterHub's names
    adapters: Any = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h_BxTxF, input_BxTxD, deterministic):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h_BxTxD = AdaptedLinear(c.hidden_size, name="dense", adapters=self.adapters, **kw)(h_BxTxF, deterministic)
        h_BxTxD = Dropout(c.hidden_dropout_prob)(h_BxTxD, deterministic=deterministic)
        layer_norm = LayerNorm(c.layer_norm_eps, name="LayerNorm", **kw)
        return hooks.bottleneck(self, self.location, h_BxTxD, input_BxTxD, layer_norm, deterministic, FAMILY)


class AttentionBlock(nn.Module):
    """BertAttention: self-attention + its output sublayer (`attention/self`, `attention/output`)."""

    config: Config
    adapters: Any = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h_BxTxD, bias_Bx1xTxS, deterministic, prefix=None):
        kw = dict(config=self.config, adapters=self.adapters, dtype=self.dtype, param_dtype=self.param_dtype)
        a_BxTxD = SelfAttention(name="self", **kw)(h_BxTxD, bias_Bx1xTxS, deterministic, prefix)
        return SublayerOutput(location="mh_adapter", name="output", **kw)(a_BxTxD, h_BxTxD, deterministic)


class Intermediate(nn.Module):
    config: Config
    adapters: Any = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h_BxTxD, deterministic):
        c = self.config
        dense = AdaptedLinear(c.intermediate_size, name="dense", adapters=self.adapters, dtype=self.dtype,
                              param_dtype=self.param_dtype)
        f_BxTxF = activation(c.hidden_act)(dense(h_BxTxD, deterministic))
        # IA3 scales the FFN activation here (PEFT and the paper: the input of output.dense)
        return f_BxTxF


class Layer(nn.Module):
    config: Config
    adapters: Any = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h_BxTxD, bias_Bx1xTxS, deterministic, prefix=None):
        kw = dict(config=self.config, adapters=self.adapters, dtype=self.dtype, param_dtype=self.param_dtype)
        a_BxTxD = AttentionBlock(name="attention", **kw)(h_BxTxD, bias_Bx1xTxS, deterministic, prefix)
        f_BxTxF = Intermediate(name="intermediate", **kw)(a_BxTxD, deterministic)
        return SublayerOutput(location="output_adapter", name="output", **kw)(f_BxTxF, a_BxTxD, deterministic)


class Encoder(nn.Module):
    config: Config
    adapters: Any = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h_BxSxD, mask_BxS, deterministic, prefixes=None):
        c = self.config
        kw = dict(config=c, adapters=self.adapters, dtype=self.dtype, param_dtype=self.param_dtype)
        bias_Bx1x1xS = mask_to_bias(mask_BxS, jnp.float32)
        layer_cls = nn.remat(Layer, static_argnums=(3,)) if c.remat else Layer
        for i in range(c.num_hidden_layers):
            prefix = prefixes[i] if prefixes is not None else None  # None too for left-out layers
            h_BxSxD = layer_cls(name=f"layer_{i}", **kw)(h_BxSxD, bias_Bx1x1xS, deterministic, prefix)
        return h_BxSxD


class Model(nn.Module):
    """BertModel (+ an optional task head from `adapters_jax.models.heads`).

    __call__(input_ids, attention_mask=None, token_type_ids=None, *, deterministic=True)
    returns the last hidden state [B, T, D] (soft-prompt positions removed), or
    the head's output when `head` is set (`return_hidden=True` gives the hidden
    state anyway).
    """

    config: Config
    adapters: Any = None
    head: Any = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids_BxT, attention_mask_BxT=None, token_type_ids_BxT=None, *,
                 deterministic: bool = True, return_hidden: bool = False):
        c = self.config
        kw = dict(config=c, adapters=self.adapters, dtype=self.dtype, param_dtype=self.param_dtype)
        b, t = input_ids_BxT.shape
        if attention_mask_BxT is None:
            attention_mask_BxT = jnp.ones((b, t), jnp.int32)
        if token_type_ids_BxT is None:
            token_type_ids_BxT = jnp.zeros((b, t), jnp.int32)
        h_BxSxD, mask_BxS, n_prompt = Embeddings(name="embeddings", **kw)(
            input_ids_BxT, attention_mask_BxT, token_type_ids_BxT, deterministic)
        prefixes = hooks.prefixes(self, c.num_hidden_layers, c.num_attention_heads, c.head_dim, c.hidden_size, b,
                                  deterministic)
        h_BxSxD = Encoder(name="encoder", **kw)(h_BxSxD, mask_BxS, deterministic, prefixes)
        h_BxTxD = h_BxSxD[:, n_prompt:]
        pooled_BxD = Pooler(name="pooler", **kw)(h_BxTxD) if c.add_pooling_layer else None
        if self.head is None or return_hidden:
            return h_BxTxD
        return self.head(h_BxTxD, attention_mask_BxT, pooled_BxD, deterministic)


class Pooler(nn.Module):
    """tanh(dense(h[:, 0])): BERT's pretrained pooler (params `pooler/dense`)."""

    config: Config
    adapters: Any = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h_BxTxD, deterministic=True):
        dense = Linear(self.config.hidden_size, name="dense", dtype=self.dtype, param_dtype=self.param_dtype)
        return jnp.tanh(dense(h_BxTxD[:, 0], deterministic))
