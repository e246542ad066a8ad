"""Named adapters on a base model: add, activate, merge LoRA, save and load one adapter.

    model, params = add_adapters(base, "houlsby[bottleneck=64]", name="sst", head=heads.Classification(2))
    model, params = add_adapters((model, params), "lora[r=8]", name="other")   # keeps "sst"
    model = activate(model, "sst")                                            # which adapters run

The base params are reused as they are (same arrays, same paths); only the new
leaves are initialised, by running the model once with the params collection
mutable, so inits that read base weights (prompt_init=vocab) see the real ones.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from adapters_jax import configs
from adapters_jax.configs import AdapterConfigError, AdapterSetup, LoRA
from adapters_jax.models import Loaded, family_of, fingerprint
from adapters_jax.modules.lora import lora_delta_kernel

METHOD_DIRS = ("adapters", "attention_adapters", "output_adapters", "lora", "ia3", "prefix_tuning", "prompt_tuning")  # path segment before the adapter name


def _flat(params) -> dict[str, jax.Array]:
    return {"/".join(k): v for k, v in flatten_dict(params).items()}


def _unflat(flat: dict) -> dict:
    return unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def adapter_of(path: str) -> str | None:
    """The adapter name a param path belongs to (None for base and head params)."""
    parts = path.split("/")
    for i, p in enumerate(parts):
        if p in METHOD_DIRS and i + 2 < len(parts):  # <method>/<name>/<leaf...>
            return parts[i + 1]
    return None


def is_head(path: str) -> bool:
    return path.startswith("head/")


def base_only(params) -> dict:
    return _unflat({k: v for k, v in _flat(params).items() if adapter_of(k) is None and not is_head(k)})


def add_adapters(base, spec, name: str = "default", head=None, rng=None):
    """Add one named adapter (and optionally a task head) to a base model.

    base: a `Loaded` (from aj.load) or a (model, params) pair that may already hold adapters.
    spec: a config string ("houlsby[bottleneck=64]", "lora[r=8]|ia3", "mam") or config objects;
    None adds only the head (full fine-tuning, linear probing).
    Returns (model, params): the model has the new adapter active (alone), params hold
    the base arrays unchanged plus the new leaves. Raises AdapterConfigError for a bad spec,
    a bottleneck larger than the hidden size, or a LoRA/IA3 target that matches no module.
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
    _, state = model.apply({"params": params}, ids, mutable=["params"], rngs={"params": rng})
    new_params = state["params"]
    old, new = _flat(params), _flat(new_params)
    added = [k for k in new if k not in old]
    if spec is not None:
        _check_targets(setup, name, added, model)
    merged = dict(old)
    merged.update({k: new[k] for k in added})
    return model, _unflat(merged)


def _check_targets(setup: AdapterSetup, name: str, added: list[str], model) -> None:
    """Every method of the new adapter created at least one leaf, else its target matched nothing."""
    for m in setup.get(name).methods:
        seg = {"bottleneck": "adapters", "lora": "lora", "ia3": "ia3"}.get(m.method, m.method)
        if not any(f"{seg}/{name}/" in k for k in added):
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
    return sorted({k.rsplit("/", 1)[0] for k in _flat(shapes["params"]) if k.endswith("/kernel")})


def activate(model, *names: str):
    """The same model with only `names` active (in that order: Stack order for bottlenecks)."""
    return model.clone(adapters=model.adapters.activate(*names))


def merge_lora(model, params, name: str):
    """Fold LoRA adapter `name` into the base kernels; returns (model without it active, params).

    The adapter's leaves stay in params, so `unmerge_lora` can take it out again.
    """
    return _fold(model, params, name, +1.0)


def unmerge_lora(model, params, name: str):
    """Inverse of merge_lora: subtract the update again and reactivate the adapter."""
    model, params = _fold(model, params, name, -1.0)
    return activate(model, *model.adapters.active, name), params


def _fold(model, params, name, sign):
    cfgs = model.adapters.get(name).of(LoRA)
    if not cfgs or len(model.adapters.get(name).methods) != 1:
        raise AdapterConfigError(f"adapter {name!r} is not a pure LoRA adapter; only LoRA merges into kernels")
    flat = _flat(params)
    out = dict(flat)
    for k in flat:
        if k.endswith(f"/lora/{name}/lora_A"):
            module = k[: -len(f"/lora/{name}/lora_A")]
            lp = {"lora_A": flat[k], "lora_B": flat[k[:-1] + "B"]}
            out[f"{module}/kernel"] = flat[f"{module}/kernel"] + sign * lora_delta_kernel(lp, cfgs[0])
    model = activate(model, *[n for n in model.adapters.active if n != name])
    return model, _unflat(out)


# --- one adapter on disk: weights (safetensors) + config and base fingerprint (JSON) ---

def save_adapter(path, model, params, name: str, base_fingerprint: dict | None = None) -> Path:
    """Write adapter `name` (its leaves only, no optimizer state) to directory `path`.

    Files: adapter.safetensors (our leaf paths) and adapter_config.json (spec, config
    fingerprint of the base). The directory is written beside and renamed into
    place, so a failed save never leaves a half-written adapter where a good one was.
    """
    from safetensors.numpy import save_file

    named = model.adapters.get(name)
    leaves = {k: np.asarray(v) for k, v in _flat(params).items() if adapter_of(k) == name}
    if not leaves:
        raise AdapterConfigError(f"params hold no leaves of adapter {name!r}")
    fp = base_fingerprint or fingerprint(model.config, base_only(params))
    meta = {"name": name, "spec": named.spec, "canonical": configs.to_string(named.methods),
            "base_fingerprint": fp, "format": "adapters_jax.adapter/1"}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(leaves, str(tmp / "adapter.safetensors"))
    (tmp / "adapter_config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    if path.exists():  # swap in the new one, then drop the old: a good adapter is never half-overwritten
        old = path.with_name(path.name + ".old")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    return path


def load_adapter(base, path, name: str | None = None):
    """Add a saved adapter to `base` (a Loaded or (model, params)); refuses another base by fingerprint."""
    from safetensors.numpy import load_file

    path = Path(path)
    cfg_file, w_file = path / "adapter_config.json", path / "adapter.safetensors"
    if not cfg_file.exists() or not w_file.exists():
        raise AdapterConfigError(f"{path} is not a saved adapter (needs adapter_config.json and adapter.safetensors)")
    meta = json.loads(cfg_file.read_text())
    model, params = (base.model, base.params) if isinstance(base, Loaded) else base
    have = base.fingerprint if isinstance(base, Loaded) else fingerprint(model.config, base_only(params))
    if have != meta["base_fingerprint"]:
        raise AdapterConfigError(
            f"adapter {path} was trained on base {meta['base_fingerprint']}, not this base {have}; "
            "load it onto the model it was trained on"
        )
    saved = meta["name"]
    name = name or saved
    model, params = add_adapters((model, params), meta["canonical"], name=name)
    flat = _flat(params)
    for k, v in load_file(str(w_file)).items():
        k = k.replace(f"/{saved}/", f"/{name}/")
        if k not in flat or flat[k].shape != v.shape:
            raise AdapterConfigError(f"{w_file}: tensor {k} does not fit this model")
        flat[k] = jnp.asarray(v)
    return model, _unflat(flat)
