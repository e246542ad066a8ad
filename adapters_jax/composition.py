"""AdapterHub's composition of bottleneck adapters: blocks, fusion layers, parameter averaging.

    from adapters_jax.composition import Stack, Parallel, Fuse, Average, BatchSplit
    model = aj.activate(model, Stack("a", "b"))                       # or Parallel / Average / BatchSplit
    model, params = add_fusion((model, params), Fuse("a", "b"))     # AdapterFusion layer "a,b", active
    params = fusion_from_adapterhub(state_dict, model, params, "a,b")
    model, params = average_adapter((model, params), "avg", ["a", "b"], weights=[2, 1])

The blocks are adapters_jax/modules/blocks.py, what they compute modules/composition.py (docs/composition.md):
AdapterHub 1.3's semantics and names, equal to its outputs on MiniLM-L6 (tests/test_composition.py).
A fusion layer is a named entry of the model's setup (its config a `Fusion`) with params under
each hook it fuses at, `.../output/adapters/<fusion name>/{query,key,value}/...`, so that
`aj.labels(model, params, train=["a,b"])` trains it alone, as AdapterHub's train_adapter_fusion.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from adapters_jax import interop, paths
from adapters_jax.adapters import activate, add_adapters
from adapters_jax.configs import NamedAdapter
from adapters_jax.errors import ConfigError, InteropError
from adapters_jax.models import Loaded, family_of
from adapters_jax.modules.blocks import (
    ALLOWED, FUSION_PRESETS, Average, BatchSplit, Block, Fuse, Fusion, Parallel, Stack, check_fusable, fusion_of,
)

__all__ = ["ALLOWED", "FUSION_PRESETS", "Average", "BatchSplit", "Block", "Fuse", "Fusion", "Parallel", "Stack",
           "add_fusion", "average_adapter", "fusion_from_adapterhub", "fusion_regularization", "per_adapter"]


def _pair(base):
    return (base.model, base.params) if isinstance(base, Loaded) else base


def add_fusion(base, adapters, config="dynamic", name: str | None = None, rng=None, set_active: bool = True,
               **overrides):
    """AdapterHub's add_adapter_fusion: a fusion layer over bottleneck adapters, initialised as AdapterHub does.

    adapters: a Fuse block or adapter names; config: "dynamic" (AdapterHub's default: query, key and
    an identity-initialised value) or "static" (no value), a dict of Fusion fields, and `overrides`
    on top. The layer is named `name` (default AdapterHub's: the names joined by commas) and gets
    params at every hook its adapters share. Returns (model, params), the Fuse active unless
    set_active=False. Refused before anything changes: missing or non-bottleneck adapters, adapters
    at different hooks, ln_after adapters, a taken name, temperature=True.
    """
    model, params = _pair(base)
    setup = model.adapters
    if setup is None:
        raise ConfigError("this model has no adapters to fuse; add bottleneck adapters first")
    if isinstance(adapters, str):
        raise ConfigError(f"add_fusion takes a Fuse block or a list of adapter names, not the string {adapters!r}")
    fuse = adapters if isinstance(adapters, Fuse) else Fuse(*adapters, name=name)
    if isinstance(config, str):
        if config not in FUSION_PRESETS:
            raise ConfigError(f"unknown fusion config {config!r}; valid: {sorted(FUSION_PRESETS)} or a dict of "
                              f"{[f.name for f in dataclasses.fields(Fusion) if f.name != 'adapters']}")
        config = FUSION_PRESETS[config]
    kw = {**dict(config), **overrides}
    fields = [f.name for f in dataclasses.fields(Fusion) if f.name != "adapters"]
    bad = sorted(set(kw) - set(fields))
    if bad:
        raise ConfigError(f"unknown fusion config keys {bad}; valid: {fields}")
    cfg = Fusion(adapters=fuse.adapters, **kw)
    if cfg.temperature:
        raise ConfigError("fusion temperature=True anneals T from 50 towards 1 on every forward call (state AdapterHub "
                          "keeps in the layer); not supported: use temperature=False")
    for n in fuse.flatten():
        setup.get(n)  # names the adapters that exist
    check_fusable(setup, fuse.adapters)
    if fuse.name in setup.names:
        raise ConfigError(f"an adapter or fusion named {fuse.name!r} already exists; pass name=")
    if "/" in fuse.name or not fuse.name:
        raise ConfigError(f"fusion name {fuse.name!r} must be non-empty and hold no '/'")
    spec = f"fusion{list(fuse.adapters)}" + ("" if not kw else str(kw))
    new_setup = dataclasses.replace(setup, adapters=setup.adapters + (NamedAdapter(fuse.name, spec, (cfg,)),))
    fused = activate(model.clone(adapters=new_setup), fuse)
    params = _init_new_leaves(fused, params, rng, fuse.name)
    return (fused if set_active else model.clone(adapters=new_setup)), params


def _init_new_leaves(model, params, rng, name: str) -> dict:
    cfg = model.config
    ids = family_of(cfg.model_type).dummy_inputs(cfg)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    init = jax.jit(lambda p, r: model.apply({"params": p}, ids, mutable=["params"], rngs={"params": r})[1]["params"])
    old, new = paths.flat(params), paths.flat(init(params, rng))
    added = {k: v for k, v in new.items() if k not in old}
    if not added:
        raise ConfigError(f"fusion {name!r} created no params: its adapters run at no hook of this model")
    return paths.unflat({**old, **added})


def average_adapter(base, name: str, adapters, weights=None, normalize_weights: bool = True,
                    set_active: bool = False):
    """AdapterHub's average_adapter (combine_strategy="linear"): a new adapter, each leaf sum_k w_k leaf_k.

    The adapters must have one config (dropout and init_weights may differ, as AdapterHub allows);
    weights default to 1/K and are normalised to sum 1 unless normalize_weights=False. Returns
    (model, params) with adapter `name` added; the activation is unchanged unless set_active.
    """
    model, params = _pair(base)
    setup = model.adapters
    adapters = list(adapters)
    if setup is None or not adapters:
        raise ConfigError("average_adapter needs at least one existing adapter to average")
    named = [setup.get(n) for n in adapters]
    for a in named:
        if any(isinstance(m, Fusion) for m in a.methods):
            raise ConfigError(f"{a.name!r} is a fusion layer, not an adapter; fusion layers are not averaged")
    weights = [1.0 / len(adapters)] * len(adapters) if weights is None else [float(w) for w in weights]
    if len(weights) != len(adapters):
        raise ConfigError(f"average_adapter: {len(weights)} weights {weights} for {len(adapters)} adapters {adapters}")
    if normalize_weights:
        total = sum(weights)
        if total == 0:
            raise ConfigError(f"average_adapter weights {weights} sum to 0 and cannot be normalised")
        weights = [w / total for w in weights]

    def norm(a):  # AdapterHub's config hash ignores dropout and init_weights
        return tuple(dataclasses.replace(m, **{f: None for f in ("dropout", "init_weights") if hasattr(m, f)})
                     for m in a.methods)
    for a in named[1:]:
        if len(a.methods) != len(named[0].methods) or norm(a) != norm(named[0]):
            raise ConfigError(f"cannot average {named[0].name!r} ({named[0].spec}) and {a.name!r} ({a.spec}): "
                              "adapters of different configs")
    new_model, new_params = add_adapters((model, params), named[0].methods, name=name)
    old, flat = paths.flat(params), paths.flat(new_params)
    for k in [k for k in flat if paths.adapter_of(k) == name]:
        acc = None
        for n, w in zip(adapters, weights):
            term = w * np.asarray(old[paths.rename_adapter(k, name, n)], np.float32)
            acc = term if acc is None else acc + term
        flat[k] = jnp.asarray(acc, flat[k].dtype)
    setup_out = new_model.adapters
    if not set_active:
        setup_out = dataclasses.replace(setup_out, active=setup.active, composition=setup.composition)
    return new_model.clone(adapters=setup_out), paths.unflat(flat)


_AH_FUSION = re.compile(r"(?P<mod>.*)\.adapter_fusion_layer\.(?P<fn>[^.]+)\.(?P<lin>\w+)\.(?P<leaf>weight|bias)")


def fusion_from_adapterhub(state_dict: Mapping[str, np.ndarray], model, params, name: str, fusion: str | None = None,
                           strict: bool = True):
    """AdapterHub fusion tensors (`...output.adapter_fusion_layer.<F>.query.weight`) -> fusion `name`'s leaves.

    `fusion` is F, AdapterHub's fusion name in the tensor names (default: `name`, or the only one there); other
    tensors (the adapters' own: interop.from_adapterhub) are skipped. A tensor of F that maps to no
    leaf, a shape that does not fit or (strict) a leaf left unfilled is an InteropError naming it.
    """
    where = "AdapterHub fusion state dict"
    fusion_of(model.adapters, name)
    found = {m.group("fn") for k in state_dict if (m := _AH_FUSION.fullmatch(k))}
    if fusion is None and name in found:
        fusion = name
    if fusion is None:
        if len(found) != 1:
            raise InteropError(f"{where}: holds fusion layers {sorted(found)}; choose one with fusion=")
        fusion = next(iter(found))
    group = paths.BOTTLENECK_GROUP["bert"]["output_adapter"]
    targets = {}
    for key, value in state_dict.items():
        m = _AH_FUSION.fullmatch(key)
        if m is None or m.group("fn") != fusion:
            continue
        mod = paths.hf_module_path(m.group("mod"))
        base = f"{mod}/{name}/" if mod.rsplit("/", 1)[-1] in paths.GROUPS else f"{mod}/{group}/{name}/"
        value = np.asarray(value)
        weight = m.group("leaf") == "weight"
        targets[base + m.group("lin") + ("/kernel" if weight else "/bias")] = (key, value.T if weight else value)
    return interop.fill(model, params, name, targets, strict, where)


def fusion_regularization(model, params):
    """AdapterHub's get_fusion_regularization_loss: 0.01 * sum ||I - value||^2 over the regularised fusion layers."""
    setup = model.adapters
    names = {a.name for a in (setup.adapters if setup is not None else ())
             if isinstance(a.methods[0], Fusion) and a.methods[0].regularization and a.methods[0].value}
    total = jnp.float32(0.0)
    for k, v in paths.flat(params).items():
        p = paths.parse(k)
        if p.name in names and p.leaf == "value/kernel":
            total = total + 0.01 * jnp.sum(jnp.square(jnp.eye(v.shape[0], dtype=v.dtype) - v))
    return total


def per_adapter(out, block: Block) -> dict:
    """A Parallel model's output [K*B, ...] as {each child's last adapter: its [B, ...] rows} (AdapterHub's heads)."""
    par = next((b for b in block.blocks() if isinstance(b, Parallel)), None) if isinstance(block, Block) else None
    if par is None:
        raise ConfigError(f"{block!r} holds no Parallel block; its output is one batch")
    return dict(zip([c if isinstance(c, str) else c.last() for c in par], jnp.split(out, len(par), axis=0)))
