"""Named adapters on a base model: add, activate, merge LoRA, save and load one adapter.

    model, params = add_adapters(base, "houlsby[bottleneck=64]", name="sst", head=heads.Classification(2))
    model, params = add_adapters((model, params), "lora[r=8]", name="other")   # keeps "sst"
    model = activate(model, "sst")                                            # which adapters run

The base params are reused as they are (same arrays, same paths); only the new
leaves are initialised, by running the model once with the params collection
mutable, so inits that read base weights (prompt_init=vocab) see the real ones.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from adapters_jax import configs, formats, interop, paths
from adapters_jax.adapter_setup import AdapterSetup
from adapters_jax.configs import AdapterConfigError, LoRA
from adapters_jax.errors import InteropError
from adapters_jax.models import Loaded, family_of, fingerprint
from adapters_jax.modules import blocks, composition
from adapters_jax.modules.lora import lora_delta_kernel


def base_only(params) -> dict:
    return paths.unflat({k: v for k, v in paths.flat(params).items() if paths.is_base(k)})


def add_adapters(base, spec, name: str = "default", head=None, rng=None, init: bool = True):
    """Add one named adapter (and optionally a task head) to a base model.

    base: a `Loaded` (from aj.load) or a (model, params) pair that may already hold adapters.
    spec: a config string ("houlsby[bottleneck=64]", "lora[r=8]|ia3", "mam") or config objects;
    None adds only the head (full fine-tuning, linear probing).
    Returns (model, params): the model has the new adapter active (alone), params hold
    the base arrays unchanged plus the new leaves. Raises AdapterConfigError for a bad spec,
    a bottleneck larger than the hidden size, or a LoRA/IA3 target that matches no module.
    init=False traces the model instead of running it and gives the new leaves as zeros: for
    callers that fill every one of them (load_adapter), at no forward pass's cost.
    """
    model, params = (base.model, base.params) if isinstance(base, Loaded) else base
    cfg = model.config
    setup = model.adapters or AdapterSetup()
    if spec is not None:
        setup = setup.add(name, spec).activate(name)
        for m in setup.get(name).methods:
            if isinstance(m, configs.Bottleneck):
                m.size(cfg.hidden_size)  # raises when larger than the hidden size
    model = model.clone(adapters=setup, **({"head": head} if head is not None else {}))
    rng = jax.random.PRNGKey(0) if rng is None else rng
    ids = family_of(cfg.model_type).dummy_inputs(cfg)
    run = model if setup.bank is None else route(model, jnp.zeros((ids.shape[0],), jnp.int32))  # slot 0: a dummy run
    init_fn = lambda p: run.apply({"params": p}, ids, mutable=["params"], rngs={"params": rng})[1]["params"]  # noqa: E731
    old = paths.flat(params)
    new = paths.flat(init_fn(params) if init else jax.eval_shape(init_fn, params))
    added = [k for k in new if k not in old]
    if not init:
        new = {k: jnp.zeros(new[k].shape, new[k].dtype) for k in added}
    if spec is not None:
        _check_targets(setup, name, added, model)
    merged = dict(old)
    merged.update({k: new[k] for k in added})
    return model, paths.unflat(merged)


def adapter_drop(model, layers: int):
    """The model with no adapter running in its lowest `layers` layers (AdapterDrop, Rueckle et al. 2021).

    At inference they are skipped (less compute); `layers=0` restores every layer. Equal to
    adapters configured with leave_out=range(layers) (tests/test_adapter_drop.py).
    """
    if model.adapters is None:
        raise AdapterConfigError("this model has no adapters to drop")
    n_layers = model.config.num_hidden_layers
    if not 0 <= layers <= n_layers:
        raise AdapterConfigError(f"adapter_drop layers={layers}: choose 0..{n_layers} (the model's layers)")
    return model.clone(adapters=dataclasses.replace(model.adapters, drop_below=int(layers)))


def route(model, ids_B):
    """The model with each example b running adapter-bank slot ids_B[b] (-1: the base and active adapters alone).

    Call it inside the jitted function on the traced ids (adapters_jax/bank.py); a per-slot
    head (heads.SlotClassification) follows the same ids.
    """
    setup = model.adapters
    if setup is None or setup.bank is None:
        raise AdapterConfigError("this model has no adapter bank; build one with adapters_jax.bank.build")
    ids_B = jnp.asarray(ids_B, jnp.int32)
    head = model.head.clone(ids=ids_B) if hasattr(model.head, "ids") else model.head
    return model.clone(adapters=dataclasses.replace(setup, ids=ids_B), head=head)


def _check_targets(setup: AdapterSetup, name: str, added: list[str], model) -> None:
    """Every method of the new adapter created at least one leaf, else its target matched nothing."""
    created = {(p.method, p.name) for p in map(paths.parse, added)}
    for m in setup.get(name).methods:
        if (m.method, name) not in created:
            what = f"target={m.target!r}" if getattr(m, "target", None) else "its AdapterHub keys"
            raise AdapterConfigError(
                f"adapter {name!r}: {m.method} with {what} matches no module of this {model.config.model_type} model; "
                f"Linear paths look like: {linear_paths(model)[:6]}"
            )


def linear_paths(model) -> list[str]:
    """Paths of the model's projections (what LoRA/IA3 `target` regexes are matched against)."""
    cfg = model.config
    shapes = jax.eval_shape(lambda: model.clone(adapters=None, head=None).init(
        jax.random.PRNGKey(0), family_of(cfg.model_type).dummy_inputs(cfg)))
    return sorted({k.rsplit("/", 1)[0] for k in paths.flat(shapes["params"]) if k.endswith("/kernel")})


def activate(model, *names):
    """The same model with only `names` active (in that order: Stack order for bottlenecks), or one composition block.

    activate(model, "a", "b") keeps today's meaning (bottlenecks as a Stack, every other method applied);
    activate(model, Fuse("a", "b")) runs an AdapterHub composition block of bottleneck adapters
    (Stack, Parallel, Fuse, Average, BatchSplit: adapters_jax/composition.py), refused with a
    ConfigError naming the problem before anything changes. A Parallel block makes the model
    repeat its inputs once per adapter (output [K*B, ...]).
    """
    setup = model.adapters
    if not any(isinstance(n, blocks.Block) for n in names):
        return model.clone(adapters=setup.activate(*names))
    if len(names) != 1:
        raise AdapterConfigError(f"activate takes one composition block or adapter names, not {names!r}; "
                                 "nest the names in the block")
    block = names[0]
    if setup is None:
        raise AdapterConfigError(f"this model has no adapters to compose in {block!r}")
    active = blocks.check(setup, block, family_of(model.config.model_type).FAMILY)
    setup = dataclasses.replace(setup.activate(*active), composition=block)
    model = composition.replicating(model) if block.parallel_channels > 1 else model
    return model.clone(adapters=setup)


def merge_lora(model, params, name: str):
    """Fold LoRA adapter `name` into the base kernels; returns (model without it active, params).

    The adapter's leaves stay in params and the model's setup records the merge,
    so `unmerge_lora` can take it out again; merging twice is refused.
    """
    setup = model.adapters
    if setup is None or name in setup.merged:
        raise AdapterConfigError(f"adapter {name!r} is already merged into the base kernels" if setup else
                                 "this model has no adapters to merge")
    model, params = _fold(model, params, name, +1.0)
    setup = model.adapters
    return model.clone(adapters=dataclasses.replace(setup, merged=setup.merged + (name,))), params


def unmerge_lora(model, params, name: str):
    """Inverse of merge_lora: subtract the update again and reactivate the adapter.

    Refused unless `name` was merged (subtracting an update that is not in the kernels corrupts them).
    """
    setup = model.adapters
    if setup is None or name not in setup.merged:
        raise AdapterConfigError(f"adapter {name!r} is not merged into the base kernels "
                                 f"(merged: {list(setup.merged) if setup else []}); nothing to unmerge")
    model, params = _fold(model, params, name, -1.0)
    setup = dataclasses.replace(model.adapters, merged=tuple(n for n in setup.merged if n != name))
    return model.clone(adapters=setup.activate(*setup.active, name)), params


def _fold(model, params, name, sign):
    cfgs = model.adapters.get(name).of(LoRA)
    if not cfgs or len(model.adapters.get(name).methods) != 1:
        raise AdapterConfigError(f"adapter {name!r} is not a pure LoRA adapter; only LoRA merges into kernels")
    flat = paths.flat(params)
    out = dict(flat)
    for k in flat:
        p = paths.parse(k)
        if p.method == "lora" and p.name == name and p.leaf == "lora_A":
            group = f"{p.module}/{p.group}/{name}"
            lp = {"lora_A": flat[f"{group}/lora_A"], "lora_B": flat[f"{group}/lora_B"]}
            out[f"{p.module}/kernel"] = flat[f"{p.module}/kernel"] + sign * lora_delta_kernel(lp, cfgs[0])
    model = activate(model, *[n for n in model.adapters.active if n != name])
    return model, paths.unflat(out)


# --- one adapter on disk: ours (safetensors + config and base fingerprint), PEFT's or AdapterHub's directory ---

def model_info(model) -> formats.ModelInfo:
    """The facts of a base model the directory formats translate against (formats.ModelInfo)."""
    cfg = model.config
    shapes = jax.eval_shape(lambda: model.clone(adapters=None, head=None).init(
        jax.random.PRNGKey(0), family_of(cfg.model_type).dummy_inputs(cfg)))
    kinds = {"kernel": "linear", "embedding": "embed", "scale": "norm"}
    mods = {k.rsplit("/", 1)[0]: kinds[k.rsplit("/", 1)[1]] for k in paths.flat(shapes["params"])
            if k.rsplit("/", 1)[1] in kinds}
    return formats.ModelInfo(cfg.model_type, family_of(cfg.model_type).FAMILY, cfg.num_hidden_layers,
                             cfg.hidden_size, cfg.num_attention_heads, tuple(sorted(mods.items())))


def save_adapter(path, model, params, name: str, base_fingerprint: dict | None = None, format: str = "ours",
                 with_head: bool = True) -> Path:
    """Write adapter `name` (its leaves only, no optimizer state) to directory `path`.

    format="ours": adapter.safetensors (our leaf paths) + adapter_config.json (spec, fingerprint of the base).
    format="peft": adapter_config.json + adapter_model.safetensors, for PEFT 0.21's PeftModel.from_pretrained.
    format="adapterhub": adapter_config.json + adapter.safetensors (+ head_config.json + model_head.safetensors
    with the head), for AdapterHub 1.3's model.load_adapter(path, use_safetensors=True).
    What the target format has no equivalent for is refused (InteropError) before anything is written.
    The directory is written beside and renamed into place, so a failed save never leaves a half-written
    adapter where a good one was.
    """
    if format not in formats.FORMATS:
        raise AdapterConfigError(f"format={format!r}; choose one of {formats.FORMATS}")
    named = model.adapters.get(name) if model.adapters is not None else None
    flat = paths.flat(params)
    leaves = {k: np.asarray(v) for k, v in flat.items() if paths.adapter_of(k) == name}
    if named is None or not leaves:
        raise AdapterConfigError(f"params hold no leaves of adapter {name!r}")
    head = model.head if with_head and any(paths.is_head(k) for k in flat) else None
    head_params = {k: v for k, v in flat.items() if paths.is_head(k)}
    if format == "ours":
        fp = base_fingerprint or fingerprint(model.config, base_only(params))
        meta = {"name": name, "spec": named.spec, "canonical": configs.to_string(named.methods),
                "base_fingerprint": fp, "format": formats.OURS_FORMAT}
        return formats.write_dir(path, {"adapter.safetensors": leaves, "adapter_config.json": meta})
    info = model_info(model)
    if format == "peft":
        cfg, prefix = formats.peft.config(named.methods, leaves, info, head, name)
        tensors = {formats.peft.ROOT + prefix + k[len(formats.peft.ROOT):] if k.startswith(formats.peft.ROOT) else k: v
                   for k, v in interop.to_peft(model, params, name).items()}
        if head is not None:
            tensors.update(formats.peft.head_tensors(head_params))
        return formats.write_dir(path, {"adapter_config.json": cfg, "adapter_model.safetensors": tensors})
    cfg = formats.adapterhub.config(named.methods, leaves, info, head, name)
    files = {"adapter_config.json": cfg, "adapter.safetensors": interop.to_adapterhub(model, params, name)}
    if head is not None:
        files["head_config.json"], files["model_head.safetensors"] = formats.adapterhub.head_files(
            head, head_params, info, name)
    return formats.write_dir(path, files)


def load_adapter(base, path, name: str | None = None):
    """Add a saved adapter to `base` (a Loaded or (model, params)): ours, or a PEFT or AdapterHub directory.

    Ours is refused on another base (by fingerprint). A PEFT/AdapterHub directory's config is
    translated to our config string (formats), the adapter added, its leaves filled by interop
    (every leaf from a tensor, every tensor to a leaf, shapes checked) and a saved classification
    head added where ours is equal; what has no equivalent is refused with InteropError naming it.
    """
    fmt, meta = formats.detect(path)
    model, params = (base.model, base.params) if isinstance(base, Loaded) else base
    if fmt != formats.OURS:
        return _load_foreign(model, params, Path(path), fmt, meta, name)
    w_file = formats.weights_file(Path(path), fmt)
    have = base.fingerprint if isinstance(base, Loaded) else fingerprint(model.config, base_only(params))
    if have != meta["base_fingerprint"]:
        raise AdapterConfigError(
            f"adapter {path} was trained on base {meta['base_fingerprint']}, not this base {have}; "
            "load it onto the model it was trained on"
        )
    saved = meta["name"]
    name = name or saved
    model, params = add_adapters((model, params), meta["canonical"], name=name)
    flat = paths.flat(params)
    for k, v in formats.read_weights(w_file).items():
        k = paths.rename_adapter(k, saved, name)
        if k not in flat or flat[k].shape != v.shape:
            raise AdapterConfigError(f"{w_file}: tensor {k} does not fit this model")
        flat[k] = jnp.asarray(v)
    return model, paths.unflat(flat)


def _check_base(params, tensors: dict, model, path) -> None:
    """A peer saved base tensors beside the adapter (AdapterHub: a static model's lm_head): they must be this base's."""
    flat, family = paths.flat(params), family_of(model.config.model_type).FAMILY
    for k, v in tensors.items():
        p = paths.hf_to_path(k, family, flat)
        if p is None and k == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False):
            p = paths.hf_to_path("model.embed_tokens.weight", family, flat)  # tied: the lm_head is the embedding
        ours = None if p is None else np.asarray(flat[p]).T if p.endswith("/kernel") else np.asarray(flat[p])
        if ours is None or ours.shape != v.shape or not np.array_equal(ours, v.astype(ours.dtype)):
            raise InteropError(f"{path}: saved base tensor {k!r} differs from this base's (a trained or another "
                               "base's module); adapters_jax keeps the base frozen and cannot load it")


def _load_foreign(model, params, path: Path, fmt: str, meta: dict, name: str | None):
    foreign = formats.read(path, fmt, meta, model_info(model))
    name = name or foreign.name or "default"
    if foreign.head is not None and model.head is not None:
        raise InteropError(f"{path} holds a head, and this model has one already ({model.head!r})")
    try:
        model, params = add_adapters((model, params), foreign.spec, name=name, head=foreign.head, init=False)
    except AdapterConfigError as e:
        raise InteropError(f"{path}: its config, as {foreign.spec!r}, does not fit this base: {e}") from e
    _check_base(params, foreign.base_tensors, model, path)
    made = {(p.method, p.module) for p in map(paths.parse, paths.flat(params)) if p.name == name}
    for method, mods in foreign.hooks.items():
        missing = sorted(m for m in mods if (method, m) not in made)
        if missing:
            raise InteropError(f"{path}: the config puts {method} on {paths.hf_dotted(missing[0])}, which has no "
                               f"{method} hook here")
    if fmt == formats.PEFT:
        params = interop.from_peft(foreign.tensors, model, params, name)
    else:
        named = any(f".{foreign.name}." in k for k in foreign.tensors)  # else the one adapter the names hold
        params = interop.from_adapterhub(foreign.tensors, model, params, name, adapter=foreign.name if named else None)
    if foreign.head is not None:
        flat = paths.flat(params)
        unfilled = sorted(k for k in flat if paths.is_head(k) and k not in foreign.head_tensors)
        if unfilled:
            raise InteropError(f"{path}: the saved head has no tensor for {unfilled}")
        for k, (src, v) in foreign.head_tensors.items():
            if k not in flat or tuple(flat[k].shape) != tuple(v.shape):
                raise InteropError(f"{path}: head tensor {src!r} {tuple(v.shape)} does not fit {k}")
            flat[k] = jnp.asarray(v, flat[k].dtype)
        params = paths.unflat(flat)
    return model, params
