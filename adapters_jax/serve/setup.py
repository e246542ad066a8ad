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

import numpy as np

from adapters_jax import bank as bank_lib
from adapters_jax import configs, paths
from adapters_jax.adapter_setup import AdapterSetup, Bank
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
    """(model, params, residency.Template): `base` with a bank of k slots of `methods`, every slot zeros.

    The bank is set up directly (every slot the placeholder) and its leaves traced, not initialised: every
    slot is written before a request uses it, so zeros will do and no forward pass runs at startup.
    """
    spec = configs.to_string(methods)
    placeholder = NamedAdapter("slot", spec, methods)
    setup_ = dataclasses.replace(base.model.adapters or AdapterSetup(), bank=Bank("bank", methods, (placeholder,) * k))
    head = None
    if not decoder:
        head = heads.SlotClassification((max_labels,) * k, pooling=pooling,
                                        hidden_layers=head_hidden_layers(found.values()))
    model = base.model.clone(adapters=setup_, **({"head": head} if head is not None else {}))
    model, params = add_adapters((model, base.params), None, init=False)
    flat = paths.flat(params)
    leaves = {p: (tuple(v.shape[1:]), np.dtype(v.dtype)) for p, v in flat.items() if paths.adapter_of(p) == "bank"}
    head_leaves = {p: (tuple(v.shape[1:]), np.dtype(v.dtype)) for p, v in flat.items() if p.startswith("head/slots/")}
    template = residency.Template("bank", methods, base.config.hidden_size, leaves, head_leaves, max_labels)
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
