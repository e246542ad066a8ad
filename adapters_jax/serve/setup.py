"""The serving model: the frozen base with one bank of K slots (and, for encoders, a head per slot).

The bank's shape is fixed at startup (`--bank`, or the widest adapter found). Every slot carries
the same placeholder config, so the model, a static argument of every compiled step, never changes
while adapters come and go: adapter_setup.Bank compares the slots' LoRA scalings, so writing an adapter
with another alpha/r through bank.write would give another model and compile every step again.
Each adapter's own LoRA scaling is folded into its lora_B instead when it is read (residency.py).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from adapters_jax import bank as bank_lib
from adapters_jax import configs, paths
from adapters_jax.adapters import add_adapters
from adapters_jax.configs import AdapterConfigError, NamedAdapter
from adapters_jax.errors import ConfigError
from adapters_jax.models import heads
from adapters_jax.serve import residency


def scan(root: Path) -> dict[str, Path]:
    """{name: directory} of every saved adapter under root (its directory name is its name)."""
    if not root.is_dir():
        raise ConfigError(f"--adapters {root} is not a directory")
    return {d.name: d for d in sorted(root.iterdir()) if (d / "adapter_config.json").is_file()}


def bank_methods(spec: str | None, found: dict[str, Path], hidden: int) -> tuple:
    """The bank's methods: `spec` parsed, else the widest rank / bottleneck among the found adapters of the
    first one's setup."""
    if spec:
        return configs.parse(spec)
    for name, path in found.items():
        meta = json.loads((path / "adapter_config.json").read_text())
        if "canonical" in meta:
            members = [NamedAdapter(name, meta["canonical"], configs.parse(meta["canonical"]))]
            for other, p in found.items():  # widen to the largest rank/bottleneck of the same setup
                m = json.loads((p / "adapter_config.json").read_text())
                try:
                    cand = NamedAdapter(other, m["canonical"], configs.parse(m["canonical"]))
                    bank_lib._shape_of(members + [cand], hidden)
                    members.append(cand)
                except (AdapterConfigError, KeyError):
                    pass
            return bank_lib._shape_of(members, hidden)
    raise ConfigError("no adapter directory to take the bank's shape from: give bank='lora[r=16]' "
                      "(scripts/serve.py --bank), the largest adapter run-time loads must fit")


def build(base, methods: tuple, k: int, found: dict[str, Path], decoder: bool, pooling: str, max_labels: int):
    """(model, params, residency.Template): `base` with a bank of k slots of `methods`, every slot zeros."""
    spec = configs.to_string(methods)
    model, params = add_adapters(base, spec, name="slot", init=False)
    head = None
    if not decoder:
        hidden = head_hidden_layers(found.values())
        head = heads.SlotClassification((max_labels,) * k, pooling=pooling, hidden_layers=hidden)
    built = {}

    def stacked(p):  # traced, not run: every slot is written before a request uses it, so zeros will do
        built["model"], p = bank_lib.build((model, p), ["slot"], name="bank", size=k, keep_members=False, head=head)
        return p

    shapes, given = paths.flat(jax.eval_shape(stacked, params)), paths.flat(params)
    model = built["model"]
    params = paths.unflat({p: given[p] if p in given else jnp.zeros(v.shape, v.dtype) for p, v in shapes.items()})
    placeholder = NamedAdapter("slot", spec, model.adapters.bank.methods)
    setup = model.adapters.activate()
    setup = dataclasses.replace(setup, bank=dataclasses.replace(setup.bank, slots=(placeholder,) * k))
    model = model.clone(adapters=setup)
    flat = paths.flat(params)
    leaves = {p: (tuple(v.shape[1:]), np.dtype(v.dtype)) for p, v in flat.items() if paths.adapter_of(p) == "bank"}
    head_leaves = {p: (tuple(v.shape[1:]), np.dtype(v.dtype)) for p, v in flat.items() if p.startswith("head/slots/")}
    template = residency.Template("bank", model.adapters.bank.methods, base.config.hidden_size, leaves, head_leaves,
                                  max_labels)
    return model, params, template


def head_hidden_layers(dirs) -> int:
    """Hidden layers of the classification heads saved in `dirs` (the first readable head.safetensors), else 0."""
    from safetensors import safe_open

    for d in dirs:
        f = Path(d) / "head.safetensors"
        if f.is_file():
            try:
                with safe_open(str(f), "numpy") as h:
                    return sum(k.startswith("head/dense_") and k.endswith("/kernel") for k in h.keys())
            except Exception:
                continue
    return 0
