"""Where adapters enter a model's forward pass: the hooks the model families call.

A model calls these at fixed points; each reads the calling module's
`adapters` attribute (an adapter_setup.AdapterSetup) and does nothing when no active
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

import numpy as np

from adapters_jax import paths, primitives
from adapters_jax.configs import IA3, Bottleneck, LoRA, PrefixTuning, PromptTuning
from adapters_jax.errors import ConfigError
from adapters_jax.modules import banked, blocks, composition
from adapters_jax.modules.bottleneck import BottleneckAdapter, apply_stack
from adapters_jax.modules.lora import IA3Scale, LoRAUpdate
from adapters_jax.modules.prefix import PrefixKV
from adapters_jax.modules.prompt import SoftPrompt


def _active(module, cls):
    setup = module.adapters
    return setup.active_methods(cls) if setup is not None else []


def _banked(module, cls):
    """The bank's config of this method, as [(bank name, config)] (empty without a bank or without it)."""
    setup = module.adapters
    return setup.bank_methods(cls) if setup is not None else []


def _bank_ids(module):
    setup = module.adapters
    if setup.ids is None:
        raise ValueError(f"this model has adapter bank {setup.bank.name!r}: call it through "
                         "adapters_jax.bank.route(model, adapter_ids) so each example names its slot")
    return setup.ids


def _rng(module, deterministic, rate):
    return None if deterministic or rate <= 0.0 else module.make_rng("dropout")


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

    adapters: Any = None  # adapter_setup.AdapterSetup

    @nn.compact
    def __call__(self, x_BxTxI, deterministic: bool = True):
        x_BxTxI = x_BxTxI.astype(self.dtype)
        skip, keep = dropped(self)
        if self.adapters is None or skip:
            return self.project(x_BxTxI)
        x_in_BxTxI = scale_linear_input(self, x_BxTxI)
        if keep is None:
            return linear_output(self, x_in_BxTxI, self.project(x_in_BxTxI), deterministic)
        if x_in_BxTxI is x_BxTxI:
            y_BxTxO = plain_BxTxO = self.project(x_BxTxI)
        else:  # IA3 scaled the input: the kernel (one param) projects both inputs
            y_BxTxO, plain_BxTxO = self.project(jnp.stack([x_in_BxTxI, x_BxTxI]))
        return jnp.where(keep, linear_output(self, x_in_BxTxI, y_BxTxO, deterministic), plain_BxTxO)


def dropped(module) -> tuple[bool, Any]:
    """AdapterDrop at the module's layer: (skip its adapters, or a traced keep flag / None).

    Layers below setup.drop_below skip their adapters; with a traced setup.drop_n the
    adapters run and a layer below it takes the plain result. No layer: never dropped.
    """
    setup, idx = module.adapters, paths.layer_index(_path(module))
    if setup is None or idx is None:
        return False, None
    if idx < setup.drop_below:
        return True, None
    return False, (None if setup.drop_n is None else idx >= setup.drop_n)


def _ia3(linear, h_BxTxN, where: str):
    """IA3 scales of the active adapters and the bank that act on this projection's `where` (input/output)."""
    path = _path(linear)
    hits = [(n, c) for n, c in _active(linear, IA3) if targets(c, path) == where]
    bank = [(n, c) for n, c in _banked(linear, IA3) if targets(c, path) == where]
    if not hits and not bank:
        return h_BxTxN

    def run(group):
        out = h_BxTxN
        for name, _ in hits:
            out = IA3Scale(h_BxTxN.shape[-1], linear.dtype, name=name, parent=group)(out)
        for name, _ in bank:
            p = banked.Stacked(lambda: (IA3Scale(h_BxTxN.shape[-1], linear.dtype, parent=None), (h_BxTxN[:1],)),
                               linear.adapters.bank.size, name=name, parent=group)()
            out = banked.ia3(p, linear.adapters.bank.size, out, _bank_ids(linear), linear.dtype)
        return out
    return _Group(name="ia3")(run)


def scale_linear_input(linear, x_BxTxI):
    return _ia3(linear, x_BxTxI, "input")


def linear_output(linear, x_BxTxI, y_BxTxO, deterministic):
    path = _path(linear)
    loras = [(n, c) for n, c in _active(linear, LoRA) if targets(c, path) == "output"]
    bank = [(n, c) for n, c in _banked(linear, LoRA) if targets(c, path) == "output"]
    if loras or bank:
        def run(group):
            out = sum(LoRAUpdate(c, linear.features, linear.dtype, name=n, parent=group)(x_BxTxI, deterministic)
                      for n, c in loras)
            for name, c in bank:
                single = LoRAUpdate(c, linear.features, linear.dtype, parent=None)
                p = banked.Stacked(lambda: (single, (x_BxTxI[:1], True)), linear.adapters.bank.size, name=name,
                                   parent=group)()
                out = out + banked.lora(p, lora_scalings(linear.adapters.bank), x_BxTxI, _bank_ids(linear),
                                        c.dropout, _rng(group, deterministic, c.dropout), linear.dtype)
            return out
        y_BxTxO = y_BxTxO + _Group(name="lora")(run)
    return _ia3(linear, y_BxTxO, "output")


def lora_scalings(bank) -> np.ndarray:
    """[K] each slot's own LoRA scaling (alpha/r of its member; 0 for a free slot)."""
    return np.asarray(bank.scalings, np.float32)


def bottleneck(module, location, h_BxTxD, x_in_BxTxD, layer_norm, deterministic, family: str):
    """A sublayer's end: LayerNorm(h + x_in) (or h + x_in when layer_norm is None), adapters inside.

    Params go under `<group>/<name>/`, the group by family and location (paths.BOTTLENECK_GROUP):
    "adapters" in BERT's output modules, "attention_adapters" and "output_adapters" in a Llama layer.
    """
    skip, keep = dropped(module)
    if skip:
        return _add_and_norm(h_BxTxD, x_in_BxTxD, layer_norm)
    out = _bottleneck(module, location, h_BxTxD, x_in_BxTxD, layer_norm, deterministic, family)
    return out if keep is None else jnp.where(keep, out, _add_and_norm(h_BxTxD, x_in_BxTxD, layer_norm))


def _bottleneck(module, location, h_BxTxD, x_in_BxTxD, layer_norm, deterministic, family: str):
    group = paths.BOTTLENECK_GROUP[family][location]
    idx = paths.layer_index(_path(module))
    here = lambda c: getattr(c, location) and (idx is None or idx not in c.leave_out)  # noqa: E731
    if module.adapters is not None and module.adapters.composition is not None:
        return _composed(module, group, here, h_BxTxD, x_in_BxTxD, layer_norm, deterministic)
    hits = [(n, c) for n, c in _active(module, Bottleneck) if here(c)]
    bank = [(n, c) for n, c in _banked(module, Bottleneck) if here(c)]
    if not hits and not bank:
        return _add_and_norm(h_BxTxD, x_in_BxTxD, layer_norm)

    def run(group):
        mods = [BottleneckAdapter(c, module.dtype, name=n, parent=group) for n, c in hits]
        cfgs = [c for _, c in hits]
        if not bank:
            return apply_stack(mods, cfgs, h_BxTxD, x_in_BxTxD, layer_norm, deterministic)
        (name, c), = bank  # the bank's adapter runs last in the Stack; id -1 rows take the stack without it
        ids_B, size = _bank_ids(module), module.adapters.bank.size
        single = BottleneckAdapter(c, module.dtype, parent=None)
        p = banked.Stacked(lambda: (single, (h_BxTxD[:1], h_BxTxD[:1], True)), size, name=name, parent=group)()
        rng = _rng(group, deterministic, c.dropout)

        def slot_adapter(x_BxTxD, residual_BxTxD, det):
            return banked.per_example(single, p, size, ids_B, (x_BxTxD, residual_BxTxD), (det,), rng)
        with_bank = apply_stack(mods + [slot_adapter], cfgs + [c], h_BxTxD, x_in_BxTxD, layer_norm, deterministic)
        without = (apply_stack(mods, cfgs, h_BxTxD, x_in_BxTxD, layer_norm, deterministic) if mods else
                   _add_and_norm(h_BxTxD, x_in_BxTxD, layer_norm))
        return jnp.where(banked.slots(ids_B, size)[1][:, None, None], with_bank, without)
    return _Group(name=group)(run)


def _add_and_norm(h_BxTxD, x_in_BxTxD, layer_norm):
    """The sublayer's end without adapters: LayerNorm(h + x_in), or h + x_in without a LayerNorm."""
    return layer_norm(h_BxTxD + x_in_BxTxD) if layer_norm is not None else h_BxTxD + x_in_BxTxD


def _composed(module, group, here, h_BxTxD, x_in_BxTxD, layer_norm, deterministic):
    """The active composition block at this hook (modules/composition.py); none of its adapters here: the plain end.

    Its adapters' params are the named adapters' own (`<group>/<name>/`); a Fuse's fusion layer is
    `<group>/<fusion name>/{query,key,value}` beside them.
    """
    setup = module.adapters
    if setup.bank is not None:
        raise ConfigError(f"bank {setup.bank.name!r} and composition {setup.composition!r} are both set; "
                          "they do not run together (activate plain names beside a bank)")
    block = setup.composition
    cfgs = {n: c for n in block.flatten() for c in setup.get(n).of(Bottleneck) if here(c)}
    if not cfgs:
        return _add_and_norm(h_BxTxD, x_in_BxTxD, layer_norm)
    c = module.config
    attn_dropout = getattr(c, "attention_probs_dropout_prob", getattr(c, "attention_dropout", 0.0))

    def run(group):
        adapters = {n: (BottleneckAdapter(cfg, module.dtype, name=n, parent=group), cfg) for n, cfg in cfgs.items()}
        made = {}

        def fusion_layer(name):
            if name not in made:
                f = blocks.fusion_of(setup, name)
                rate = f.dropout_prob if f.dropout_prob is not None else attn_dropout  # AdapterHub's default
                made[name] = (composition.FusionLayer(f, rate, module.dtype, name=name, parent=group), f)
            return made[name]
        return composition.compose(block, adapters, fusion_layer, h_BxTxD, x_in_BxTxD, layer_norm, deterministic)
    return _Group(name=group)(run)


def has_active(module, cls) -> bool:
    """Whether an active adapter or the bank has this method."""
    return bool(_active(module, cls) or _banked(module, cls))


class PromptPool(nn.Module):
    """The active soft prompts, concatenated in active order, in front of the word embeddings."""

    adapters: object

    @nn.compact
    def __call__(self, w_BxTxD, mask_BxT, table_VxD):
        b = w_BxTxD.shape[0]
        parts, masks = [], []
        for n, c in self.adapters.active_methods(PromptTuning):
            p_PxD = SoftPrompt(c, table_VxD, name=n)().astype(w_BxTxD.dtype)
            parts.append(jnp.broadcast_to(p_PxD, (b,) + p_PxD.shape))
            masks.append(jnp.ones((b, p_PxD.shape[0]), mask_BxT.dtype))
        # each example its slot's prompt, right before the tokens; a shorter member's padding and id -1 masked out
        for n, c in self.adapters.bank_methods(PromptTuning):
            size, ids_B = self.adapters.bank.size, _bank_ids(self)
            p = banked.Stacked(lambda: (SoftPrompt(c, table_VxD, parent=None), ()), size, name=n)()
            idx_B, _ = banked.slots(ids_B, size)
            rows_BxPxD, seen_BxP = banked.right_align(p["prompt_embedding"][idx_B],
                                                      banked.seen(self.adapters.bank, c, ids_B, c.prompt_length))
            parts.append(rows_BxPxD.astype(w_BxTxD.dtype))
            masks.append(seen_BxP.astype(mask_BxT.dtype))
        w_BxSxD = jnp.concatenate(parts + [w_BxTxD], axis=1)
        mask_BxS = jnp.concatenate(masks + [mask_BxT], axis=1)
        return w_BxSxD, mask_BxS, w_BxSxD.shape[1] - w_BxTxD.shape[1]


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
        shape = (self.n_layers, self.n_heads, self.head_dim, self.hidden, self.dtype)
        kvs = [(c, PrefixKV(c, *shape, name=n)(batch, deterministic), None)
               for n, c in self.adapters.active_methods(PrefixTuning)]
        # each example its slot's prefix, padded to the bank's length: the padding and id -1 rows masked out
        for n, c in self.adapters.bank_methods(PrefixTuning):
            size, ids_B = self.adapters.bank.size, _bank_ids(self)
            single = PrefixKV(c, *shape, parent=None)
            p = banked.Stacked(lambda: (single, (1, True)), size, name=n)()
            rng = _rng(self, deterministic, c.dropout)
            kv = banked.per_example(single, p, size, ids_B, (), (1, deterministic), rng)
            kvs.append((c, kv, banked.seen(self.adapters.bank, c, ids_B, kv.shape[1])))
        per_layer = []
        setup = self.adapters
        for i in range(self.n_layers):
            here = [(kv, valid) for c, kv, valid in kvs if i not in c.leave_out]
            if not here or i < setup.drop_below:  # left out, or AdapterDrop
                per_layer.append(None)
                continue
            k = jnp.concatenate([kv[:, :, i, 0] for kv, _ in here], 1)
            v = jnp.concatenate([kv[:, :, i, 1] for kv, _ in here], 1)
            if all(seen is None for _, seen in here) and setup.drop_n is None:
                per_layer.append((k, v))
                continue
            seen_BxP = jnp.concatenate([jnp.ones(kv.shape[:2], bool) if seen is None else seen for kv, seen in here], 1)
            if setup.drop_n is not None:
                seen_BxP = seen_BxP & (i >= setup.drop_n)
            per_layer.append((k, v, seen_BxP))  # prefix.prepend masks the unseen positions
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
    return sum(c.prompt_length for _, c in _active(module, PromptTuning) + _banked(module, PromptTuning))


def prompt_counts(module, batch: int):
    """[B] how many of those positions each example sees (its mask's ones): every active prompt's length plus
    its bank slot member's (0 for id -1). A decode step, which has no prompt in front, counts from there."""
    n_B = jnp.full((batch,), sum(c.prompt_length for _, c in _active(module, PromptTuning)), jnp.int32)
    for _, c in _banked(module, PromptTuning):
        n_B = n_B + banked.seen(module.adapters.bank, c, _bank_ids(module), c.prompt_length).sum(1)
    return n_B


def positions_after_prompt(mask_BxS, n_prompt: int, positions_BxT):
    """Positions [B, P+T] for `prompt`'s output: the soft positions an example sees numbered 0, 1, ... (the
    unseen ones 0; they are masked), its tokens' positions moved on by how many it sees (PEFT numbers the
    prompt first). A bank member's shorter prompt, or none for id -1, so gives each token its position alone."""
    soft_BxP = mask_BxS[:, :n_prompt].astype(jnp.int32)
    return jnp.concatenate([jnp.maximum(jnp.cumsum(soft_BxP, axis=1) - 1, 0),
                            positions_BxT + soft_BxP.sum(1, keepdims=True)], axis=1)


def prefixes(module, n_layers, n_kv_heads, head_dim, hidden, batch, deterministic):
    """Per-layer (keys, values) [B, P, N, K] of the active prefix adapters (None for a left-out layer), or None.

    Params go under `<module>/prefix_tuning/<name>/`; each layer's attention prepends its pair (modules/prefix.prepend).
    """
    if not has_active(module, PrefixTuning):
        return None
    pool = PrefixPool(module.adapters, n_layers, n_kv_heads, head_dim, hidden, module.dtype, name="prefix_tuning")
    return pool(batch, deterministic)
