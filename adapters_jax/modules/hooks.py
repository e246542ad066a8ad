"""Where adapters enter a model's forward pass: the hooks the model families call.

A model calls these at fixed points; each reads the calling module's
`adapters` attribute (a configs.AdapterSetup) and does nothing when no active
adapter concerns that point, so a model without adapters computes exactly the
base model. Adapter params are created as children of the module that calls
the hook, under `<group>/<adapter name>/...` (the grammar of adapters_jax/paths.py):

    .../attention/self/query/lora/<name>/lora_A        LoRA on a projection (AdaptedLinear)
    .../attention/self/key/ia3/<name>/ia3_l            IA3 on a projection (AdaptedLinear)
    .../output/adapters/<name>/adapter_down/kernel     bottleneck at a sublayer output (`bottleneck`)
    prefix_tuning/<name>/control_trans_0/kernel        prefix pool at the model root (`prefixes`)
    embeddings/prompt_tuning/<name>/prompt_embedding   soft prompt beside the word embeddings (`prompt`)

Both families insert prompts and prefixes through `prompt` and `prefixes`, and
every projection is an `AdaptedLinear`.
"""
from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from adapters_jax import paths, primitives
from adapters_jax.configs import IA3, Bottleneck, LoRA, PrefixTuning, PromptTuning
from adapters_jax.modules.bottleneck import BottleneckAdapter, apply_stack
from adapters_jax.modules.lora import IA3Scale, LoRAUpdate
from adapters_jax.modules.prefix import PrefixKV
from adapters_jax.modules.prompt import SoftPrompt


def _active(module, cls):
    setup = module.adapters
    return setup.active_methods(cls) if setup is not None else []


def _path(module) -> str:
    return "/".join(module.path)


def targets(cfg: LoRA | IA3, path: str) -> str | None:
    """How a LoRA/IA3 config acts on the Linear at `path`: None, "output" or "input" (IA3 feed-forward)."""
    idx = paths.layer_index(path)
    if idx is not None and idx in cfg.leave_out:
        return None
    if isinstance(cfg, IA3) and cfg.feedforward is not None and re.search(cfg.feedforward, path):
        return "input"
    if cfg.target is not None:
        return "output" if re.search(cfg.target, path) else None
    role = paths.role_of(path)
    if cfg.selfattn_lora and role in cfg.attn_matrices:
        return "output"
    if isinstance(cfg, IA3):  # the paper's placement: scale the FFN activation = the input of its output projection
        if role == "ffn_out" and cfg.intermediate_lora:
            return "input"
        return "output" if role == "ffn_out" and cfg.output_lora else None
    if role == "ffn_in" and cfg.intermediate_lora:
        return "output"
    return "output" if role == "ffn_out" and cfg.output_lora else None


class _Group(nn.Module):
    """A named container, so that adapter params read `<method>/<adapter name>/...`."""

    @nn.compact
    def __call__(self, fn):
        return fn(self)


class AdaptedLinear(primitives.Linear):
    """A model's projection: primitives.Linear plus the LoRA/IA3 adapters that target its path.

    IA3 "input" scales (the FFN activation) apply before the product; LoRA
    updates and IA3 "output" scales after it. Param names are the Linear's
    (`kernel`, `bias`) plus `lora/<name>/...` and `ia3/<name>/ia3_l`.
    """

    adapters: Any = None  # configs.AdapterSetup

    @nn.compact
    def __call__(self, x_BxTxI, deterministic: bool = True):
        x_BxTxI = x_BxTxI.astype(self.dtype)
        if self.adapters is None:
            return self.project(x_BxTxI)
        x_BxTxI = scale_linear_input(self, x_BxTxI)
        return linear_output(self, x_BxTxI, self.project(x_BxTxI), deterministic)


def scale_linear_input(linear, x_BxTxI):
    path = _path(linear)
    hits = [(n, c) for n, c in _active(linear, IA3) if targets(c, path) == "input"]
    if hits:
        def run(group):
            out = x_BxTxI
            for name, _ in hits:
                out = IA3Scale(x_BxTxI.shape[-1], linear.dtype, name=name, parent=group)(out)
            return out
        x_BxTxI = _Group(name="ia3")(run)
    return x_BxTxI


def linear_output(linear, x_BxTxI, y_BxTxO, deterministic):
    path = _path(linear)
    loras = [(n, c) for n, c in _active(linear, LoRA) if targets(c, path) == "output"]
    if loras:
        def run(group):
            return sum(LoRAUpdate(c, linear.features, linear.dtype, name=n, parent=group)(x_BxTxI, deterministic)
                       for n, c in loras)
        y_BxTxO = y_BxTxO + _Group(name="lora")(run)
    ia3s = [(n, c) for n, c in _active(linear, IA3) if targets(c, path) == "output"]
    if ia3s:
        def run(group):
            out = y_BxTxO
            for name, _ in ia3s:
                out = IA3Scale(linear.features, linear.dtype, name=name, parent=group)(out)
            return out
        y_BxTxO = _Group(name="ia3")(run)
    return y_BxTxO


def bottleneck(module, location, h_BxTxD, x_in_BxTxD, layer_norm, deterministic, family: str):
    """A sublayer's end: LayerNorm(h + x_in) (or h + x_in when layer_norm is None), adapters inside.

    Params go under `<group>/<name>/`, the group by family and location (paths.BOTTLENECK_GROUP):
    "adapters" in BERT's output modules, "attention_adapters" and "output_adapters" in a Llama layer.
    """
    group = paths.BOTTLENECK_GROUP[family][location]
    idx = paths.layer_index(_path(module))
    hits = [(n, c) for n, c in _active(module, Bottleneck)
            if getattr(c, location) and (idx is None or idx not in c.leave_out)]
    if not hits:
        return layer_norm(h_BxTxD + x_in_BxTxD) if layer_norm is not None else h_BxTxD + x_in_BxTxD

    def run(group):
        mods = [BottleneckAdapter(c, module.dtype, name=n, parent=group) for n, c in hits]
        return apply_stack(mods, [c for _, c in hits], h_BxTxD, x_in_BxTxD, layer_norm, deterministic)
    return _Group(name=group)(run)


def has_active(module, cls) -> bool:
    return bool(_active(module, cls))


class PromptPool(nn.Module):
    """The active soft prompts, concatenated in active order, in front of the word embeddings."""

    adapters: object

    @nn.compact
    def __call__(self, w_BxTxD, mask_BxT, table_VxD):
        hits = self.adapters.active_methods(PromptTuning)
        p_PxD = jnp.concatenate([SoftPrompt(c, table_VxD, name=n)() for n, c in hits], 0).astype(w_BxTxD.dtype)
        b, n = w_BxTxD.shape[0], p_PxD.shape[0]
        w_BxSxD = jnp.concatenate([jnp.broadcast_to(p_PxD, (b, n, p_PxD.shape[1])), w_BxTxD], axis=1)
        mask_BxS = jnp.concatenate([jnp.ones((b, n), mask_BxT.dtype), mask_BxT], axis=1)
        return w_BxSxD, mask_BxS, n


class PrefixPool(nn.Module):
    """The active prefix adapters: per layer, (keys, values) [B, P, N, K] concatenated, or None."""

    adapters: object
    n_layers: int
    n_heads: int  # key/value heads (num_key_value_heads for grouped-query attention, as AdapterHub)
    head_dim: int
    hidden: int
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, batch: int, deterministic: bool):
        hits = self.adapters.active_methods(PrefixTuning)
        kvs = [(c, PrefixKV(c, self.n_layers, self.n_heads, self.head_dim, self.hidden, self.dtype, name=n)(
            batch, deterministic)) for n, c in hits]
        per_layer = []
        for i in range(self.n_layers):
            ks = [kv[:, :, i, 0] for c, kv in kvs if i not in c.leave_out]
            vs = [kv[:, :, i, 1] for c, kv in kvs if i not in c.leave_out]
            per_layer.append((jnp.concatenate(ks, 1), jnp.concatenate(vs, 1)) if ks else None)
        return per_layer


def prompt(module, w_BxTxD, mask_BxT, table_VxD):
    """Prepend the active soft prompts to the word embeddings: (w [B, P+T, D], mask [B, P+T], P).

    Params go under `<module>/prompt_tuning/<name>/`; P is 0 when no prompt adapter is active.
    """
    if not has_active(module, PromptTuning):
        return w_BxTxD, mask_BxT, 0
    return PromptPool(module.adapters, name="prompt_tuning")(w_BxTxD, mask_BxT, table_VxD)


def prompt_length(module) -> int:
    """How many soft-prompt positions `prompt` puts in front of the tokens (0 without prompt adapters)."""
    return sum(c.prompt_length for _, c in _active(module, PromptTuning))


def prefixes(module, n_layers, n_kv_heads, head_dim, hidden, batch, deterministic):
    """Per-layer (keys, values) [B, P, N, K] of the active prefix adapters (None for a left-out layer), or None.

    Params go under `<module>/prefix_tuning/<name>/`; each layer's attention prepends its pair (modules/prefix.prepend).
    """
    if not has_active(module, PrefixTuning):
        return None
    pool = PrefixPool(module.adapters, n_layers, n_kv_heads, head_dim, hidden, module.dtype, name="prefix_tuning")
    return pool(batch, deterministic)
