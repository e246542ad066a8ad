"""The Llama family of decoders in Flax linen: Llama, Mistral, Qwen2, SmolLM2.

Pre-norm blocks: RMSNorm -> grouped-query attention with RoPE -> residual,
RMSNorm -> SwiGLU MLP -> residual; a final RMSNorm and an lm_head that is
either its own matrix or the transposed token embedding (tied).

Numerics follow transformers: RoPE angles are computed in float32 (HF's
`rotate_half` layout, halves not interleaved pairs), the attention softmax,
the norms and the logits are float32 whatever the compute `dtype`; params are
stored in `param_dtype`. The lm_head runs in float32 even under bf16 compute,
because a bf16 logit of ~20 is only resolved to 0.125, too coarse for a loss.

Layers are unrolled, not under `nn.scan`. Scanning would stack the layers'
params under one `model/layers/...` path with a leading layer axis, which
breaks the HF-mirroring paths (`model/layers_0/self_attn/q_proj/kernel`) that
checkpoint loading and PEFT interop rely on, and per-layer adapter choices
(top-k layers, a LoRA on layer 3 only) are simpler on per-layer trees; the
price is a longer compile, once per input shape (docs/models.md).
`remat=True` wraps each layer in `nn.remat` (activations recomputed in the
backward pass).

`Model.__call__` returns float32 logits [B, T, V]; with `return_hidden=True`
it returns the final-normed hidden state [B, T, D] instead and skips the
vocabulary projection; with a `head` (as `bert.Model`) the head's output.
`init` always creates `lm_head`, so the param tree is the same whichever
output a caller asks for.

Adapters: every projection is a `hooks.AdaptedLinear` (LoRA, IA3);
`attn_out_BxTxD` / `mlp_out_BxTxD` are the block outputs right before their
residual adds, where bottleneck adapters go; soft prompts and prefixes enter
through `hooks.prompt` and `hooks.prefixes`, as in the BERT family.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax import primitives as layers
from adapters_jax.errors import CheckpointError
from adapters_jax.models import kv_cache
from adapters_jax.modules import hooks
from adapters_jax.modules.hooks import AdaptedLinear
from adapters_jax.modules.prefix import prepend

FAMILY = "llama"  # paths.HF_DROP: which HF tensors have no param here

Dtype = Any


@dataclasses.dataclass(frozen=True)
class Config:
    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # biases on q/k/v (Qwen2; Llama's attention_bias also sets o_bias)
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None  # Mistral: a query sees the last `sliding_window` keys
    attention_dropout: float = 0.0  # on the attention probabilities (HF's attention_dropout)
    dropout: float = 0.0  # on attention and MLP outputs before the residual add (HF Llama has none)
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    remat: bool = False


def config_from_hf(d: dict, **overrides) -> Config:
    """HF config.json (llama, mistral, qwen2) -> Config; `overrides` replace fields by name."""
    model_type = d.get("model_type", "llama")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{model_type}: hidden_act={act!r} is not supported (SwiGLU with silu only)")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise CheckpointError(f"{model_type}: rope_type={rope_type!r} is not supported (plain RoPE only)")
    rope_theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    heads = d["num_attention_heads"]
    bias = bool(d.get("attention_bias", False))
    sliding_window = None
    if model_type == "mistral":
        sliding_window = d.get("sliding_window")
    elif model_type == "qwen2" and d.get("use_sliding_window", False):
        raise CheckpointError("qwen2: use_sliding_window=True (per-layer sliding windows) is not supported")
    if model_type == "qwen2":
        bias, o_bias = True, False  # Qwen2 always has q/k/v biases and no o_proj bias
    else:
        o_bias = bias
    cfg = Config(
        model_type=model_type,
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_hidden_layers=d["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=d.get("num_key_value_heads") or heads,
        head_dim=d.get("head_dim") or d["hidden_size"] // heads,
        rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope_theta),
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        attention_bias=bias,
        o_bias=o_bias,
        mlp_bias=bool(d.get("mlp_bias", False)),
        sliding_window=sliding_window,
        attention_dropout=float(d.get("attention_dropout", 0.0)),
        pad_token_id=d.get("pad_token_id"),
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"),
    )
    return replace(cfg, **overrides)


def replace(config: Config, **overrides) -> Config:
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise CheckpointError(f"unknown llama Config fields {unknown}; fields: {[f.name for f in dataclasses.fields(Config)]}")
    return dataclasses.replace(config, **overrides)


def dummy_inputs(config: Config) -> jax.Array:
    return jnp.zeros((1, 4), jnp.int32)


def rope_cos_sin(positions_BxT: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, T, K] in float32, halves repeated (HF's rotate_half layout)."""
    inv_freq_K2 = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles_BxTxK2 = positions_BxT.astype(jnp.float32)[..., None] * inv_freq_K2
    angles_BxTxK = jnp.concatenate([angles_BxTxK2, angles_BxTxK2], axis=-1)
    return jnp.cos(angles_BxTxK), jnp.sin(angles_BxTxK)


def apply_rope(x_BxTxHxK: jax.Array, cos_BxTxK: jax.Array, sin_BxTxK: jax.Array) -> jax.Array:
    # HF casts cos/sin to the compute dtype before rotating; do the same for parity.
    cos, sin = cos_BxTxK[:, :, None].astype(x_BxTxHxK.dtype), sin_BxTxK[:, :, None].astype(x_BxTxHxK.dtype)
    x1, x2 = jnp.split(x_BxTxHxK, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x_BxTxHxK * cos + rotated * sin


def attention_bias(mask_BxS: jax.Array | None, t: int, sliding_window: int | None) -> jax.Array:
    """Additive float32 bias [B, 1, T, T]: causal, within the window, and not on padding (kv_cache.slot_bias)."""
    return kv_cache.slot_bias(jnp.arange(t), t, mask_BxS, sliding_window)


class Attention(nn.Module):
    config: Config
    adapters: Any = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h_BxTxD, cos_BxTxK, sin_BxTxK, bias_Bx1xTxS, deterministic: bool = True, prefix=None,
                 kv=None):
        """kv: None, or this layer's cache slots (k, v) [B, N, S, K] and the slot `index` to write the T new
        keys/values at; then returns (out, (k, v)) with the queries attending to every slot the bias allows."""
        c = self.config
        b, t, _ = h_BxTxD.shape
        kw = dict(adapters=self.adapters, dtype=self.dtype, param_dtype=self.param_dtype)
        proj = lambda heads, bias, name: AdaptedLinear(heads * c.head_dim, use_bias=bias, name=name, **kw)
        q_BxTxHxK = proj(c.num_attention_heads, c.attention_bias, "q_proj")(h_BxTxD, deterministic)
        k_BxTxNxK = proj(c.num_key_value_heads, c.attention_bias, "k_proj")(h_BxTxD, deterministic)
        v_BxTxNxK = proj(c.num_key_value_heads, c.attention_bias, "v_proj")(h_BxTxD, deterministic)
        q_BxTxHxK = apply_rope(q_BxTxHxK.reshape(b, t, -1, c.head_dim), cos_BxTxK, sin_BxTxK)
        k_BxTxNxK = apply_rope(k_BxTxNxK.reshape(b, t, -1, c.head_dim), cos_BxTxK, sin_BxTxK)
        v_BxTxNxK = v_BxTxNxK.reshape(b, t, -1, c.head_dim)
        layout = "BSNK"
        if kv is not None:  # write the new keys/values into their cache slots [B, N, S, K], attend over all slots
            (k_BxNxSxK, v_BxNxSxK), index = kv
            write = lambda cache, x_BxTxNxK: jax.lax.dynamic_update_slice(
                cache, x_BxTxNxK.transpose(0, 2, 1, 3).astype(cache.dtype), (0, 0, index, 0))
            k_BxTxNxK, v_BxTxNxK = write(k_BxNxSxK, k_BxTxNxK), write(v_BxNxSxK, v_BxTxNxK)  # now [B, N, S, K]
            kv, layout = (k_BxTxNxK, v_BxTxNxK), "BNSK"
        if prefix is not None:  # prefix tuning: un-rotated key/value positions in front (AdapterHub)
            k_BxTxNxK, v_BxTxNxK, bias_Bx1xTxS = prepend(prefix, k_BxTxNxK, v_BxTxNxK, bias_Bx1xTxS, layout)
        dropout_rng = None
        if not deterministic and c.attention_dropout > 0.0:
            dropout_rng = self.make_rng("dropout")
        ctx_BxTxHxK = layers.attention(
            q_BxTxHxK, k_BxTxNxK, v_BxTxNxK, bias_Bx1xTxS, c.attention_dropout, dropout_rng, deterministic, layout
        )
        o_proj = AdaptedLinear(c.hidden_size, use_bias=c.o_bias, name="o_proj", **kw)
        out_BxTxD = o_proj(ctx_BxTxHxK.reshape(b, t, -1), deterministic)
        return out_BxTxD if kv is None else (out_BxTxD, kv)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    config: Config
    adapters: Any = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h_BxTxD, deterministic: bool = True):
        c = self.config
        kw = dict(use_bias=c.mlp_bias, adapters=self.adapters, dtype=self.dtype, param_dtype=self.param_dtype)
        gate_BxTxF = AdaptedLinear(c.intermediate_size, name="gate_proj", **kw)(h_BxTxD, deterministic)
        up_BxTxF = AdaptedLinear(c.intermediate_size, name="up_proj", **kw)(h_BxTxD, deterministic)
        return AdaptedLinear(c.hidden_size, name="down_proj", **kw)(nn.silu(gate_BxTxF) * up_BxTxF, deterministic)


class DecoderLayer(nn.Module):
    config: Config
    adapters: Any = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h_BxTxD, cos_BxTxK, sin_BxTxK, bias_Bx1xTxT, deterministic: bool = True, prefix=None,
                 kv=None):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x_BxTxD = layers.RMSNorm(c.rms_norm_eps, name="input_layernorm", **kw)(h_BxTxD)
        attn = Attention(c, adapters=self.adapters, name="self_attn", **kw)
        attn_out_BxTxD = attn(x_BxTxD, cos_BxTxK, sin_BxTxK, bias_Bx1xTxT, deterministic, prefix, kv)
        if kv is not None:
            attn_out_BxTxD, kv = attn_out_BxTxD
        attn_out_BxTxD = layers.Dropout(c.dropout)(attn_out_BxTxD, deterministic=deterministic)
        # residual add, with bottleneck adapters inside (pre-LN: no LayerNorm at this point)
        h_BxTxD = hooks.bottleneck(self, "mh_adapter", attn_out_BxTxD, h_BxTxD, None, deterministic, FAMILY)
        x_BxTxD = layers.RMSNorm(c.rms_norm_eps, name="post_attention_layernorm", **kw)(h_BxTxD)
        mlp_out_BxTxD = MLP(c, adapters=self.adapters, name="mlp", **kw)(x_BxTxD, deterministic)
        mlp_out_BxTxD = layers.Dropout(c.dropout)(mlp_out_BxTxD, deterministic=deterministic)
        h_BxTxD = hooks.bottleneck(self, "output_adapter", mlp_out_BxTxD, h_BxTxD, None, deterministic, FAMILY)
        return h_BxTxD if kv is None else (h_BxTxD, kv)


class LlamaModel(nn.Module):
    """The decoder stack without the lm_head (HF's `model.`): returns the final-normed hidden state."""

    config: Config
    adapters: Any = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embed_tokens = layers.Embed(c.vocab_size, c.hidden_size, **kw)
        # static_argnums counts self: 5 is `deterministic`, a Python bool.
        layer_cls = nn.remat(DecoderLayer, static_argnums=(5,)) if c.remat else DecoderLayer
        self.layers = [layer_cls(c, adapters=self.adapters, **kw) for _ in range(c.num_hidden_layers)]
        self.norm = layers.RMSNorm(c.rms_norm_eps, **kw)

    @nn.compact  # soft prompt and prefix pools are created by the hooks (params under model/...)
    def __call__(self, input_ids_BxT, attention_mask_BxT=None, deterministic=True, positions_BxT=None,
                 cache=None, prefill: bool = True):
        """The final-normed hidden state [B, T, D]; with `cache` (models/kv_cache.py) also the updated cache.

        With a cache, the T new tokens go into slots index..index+T-1 and attend to every earlier slot
        whose mask is set; `positions_BxT` must be given. `prefill=False` (a decode step) skips the
        soft prompt and takes the prefix keys/values the prefill stored in the cache.
        """
        c = self.config
        b, t = input_ids_BxT.shape
        mask_BxT = jnp.ones((b, t), jnp.int32) if attention_mask_BxT is None else attention_mask_BxT
        h_BxSxD, mask_BxS, n_prompt = self.embed_tokens(input_ids_BxT), mask_BxT, 0
        if prefill:
            h_BxSxD, mask_BxS, n_prompt = hooks.prompt(self, h_BxSxD, mask_BxT, self.embed_tokens.embedding)
        if attention_mask_BxT is None and n_prompt == 0 and cache is None:
            mask_BxS = None  # no padding: the causal mask alone
        s = t + n_prompt
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(t), (b, t))
        if n_prompt:  # positions are counted over the soft prompt in front (PEFT), the positions each row sees
            positions_BxT = hooks.positions_after_prompt(mask_BxS, n_prompt, positions_BxT)
        elif not prefill:  # a decode step: the soft prompt the prefill put in front still counts
            positions_BxT = positions_BxT + hooks.prompt_counts(self, b)[:, None]
        cos_BxSxK, sin_BxSxK = rope_cos_sin(positions_BxT, c.head_dim, c.rope_theta)
        if prefill:
            prefixes = hooks.prefixes(self, c.num_hidden_layers, c.num_key_value_heads, c.head_dim, c.hidden_size,
                                      b, deterministic)
        else:
            prefixes = cache["prefixes"]
        if cache is None:
            bias = attention_bias(mask_BxS, s, c.sliding_window)
        else:
            cache, bias = kv_cache.write_mask(cache, mask_BxS, c.sliding_window)
        new_layers = []
        for i, layer in enumerate(self.layers):
            prefix = prefixes[i] if prefixes is not None else None
            if cache is None:
                h_BxSxD = layer(h_BxSxD, cos_BxSxK, sin_BxSxK, bias, deterministic, prefix)
            else:
                h_BxSxD, kv = layer(h_BxSxD, cos_BxSxK, sin_BxSxK, bias, deterministic, prefix,
                                    (cache["layers"][i], cache["index"]))
                new_layers.append(kv)
        h_BxTxD = self.norm(h_BxSxD[:, n_prompt:])
        if cache is None:
            return h_BxTxD
        return h_BxTxD, kv_cache.advance(cache, tuple(new_layers), s, prefixes)


class Model(nn.Module):
    """LlamaForCausalLM (+ an optional task head from `adapters_jax.models.heads`).

    Returns float32 logits [B, T, V]; the head's output when `head` is set
    (it gets the hidden state, the mask and no pooler output: use pooling
    "last" or "mean"); the final-normed hidden state [B, T, D] with
    `return_hidden=True`; with a KV `cache` (generation), (hidden, new cache).
    """

    config: Config
    adapters: Any = None
    head: Any = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        c = self.config
        self.model = LlamaModel(c, adapters=self.adapters, dtype=self.dtype, param_dtype=self.param_dtype)
        if not c.tie_word_embeddings:
            self.lm_head = AdaptedLinear(
                c.vocab_size, use_bias=False, adapters=self.adapters, dtype=jnp.float32, param_dtype=self.param_dtype
            )

    def __call__(
        self,
        input_ids_BxT: jax.Array,
        attention_mask_BxT: jax.Array | None = None,
        *,
        deterministic: bool = True,
        positions_BxT: jax.Array | None = None,
        return_hidden: bool = False,
        cache: dict | None = None,
        prefill: bool = True,
    ) -> jax.Array:
        if cache is not None:  # generation: (hidden [B, T, D], cache); logits of chosen positions via `logits`
            return self.model(input_ids_BxT, attention_mask_BxT, deterministic, positions_BxT, cache, prefill)
        h_BxTxD = self.model(input_ids_BxT, attention_mask_BxT, deterministic, positions_BxT)
        logits_BxTxV = None
        # init always builds lm_head, so the param tree matches the checkpoint whatever is returned
        if self.is_initializing() or (self.head is None and not return_hidden):
            logits_BxTxV = self.logits(h_BxTxD, deterministic)
        if return_hidden:
            return h_BxTxD
        if self.head is not None:
            if attention_mask_BxT is None:
                attention_mask_BxT = jnp.ones(input_ids_BxT.shape, jnp.int32)
            return self.head(h_BxTxD, attention_mask_BxT, None, deterministic)
        return logits_BxTxV

    def logits(self, h_BxTxD: jax.Array, deterministic: bool = True) -> jax.Array:
        if self.config.tie_word_embeddings:
            embedding_VxD = self.model.embed_tokens.embedding
            # contract over D directly: a transposed [D, V] operand made XLA:CPU copy the table per call
            return jnp.einsum("btd,vd->btv", h_BxTxD.astype(jnp.float32), embedding_VxD.astype(jnp.float32))
        return self.lm_head(h_BxTxD, deterministic)
