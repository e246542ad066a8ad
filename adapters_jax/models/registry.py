"""The model families' registry: `Loaded`, `family_of`, the base fingerprint, abstract params.

Kept apart from the loaders (models/__init__.py, gguf.py) so that both import it and not each other.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
from typing import Any

import jax
import numpy as np

from adapters_jax import paths
from adapters_jax.errors import CheckpointError

# model_type in config.json -> family module
FAMILIES = {
    "bert": "adapters_jax.models.bert",
    "roberta": "adapters_jax.models.bert",
    "llama": "adapters_jax.models.llama",
    "mistral": "adapters_jax.models.llama",
    "qwen2": "adapters_jax.models.llama",
}


@dataclasses.dataclass
class Loaded:
    """A loaded base model: what `aj.load` returns."""

    model: Any  # linen Module
    params: dict
    tokenizer: Any
    config: Any
    fingerprint: dict
    source: str

    @property
    def family(self):
        return family_of(self.config.model_type)


def family_of(model_type: str):
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"unsupported architecture model_type={model_type!r}; supported: {sorted(FAMILIES)}"
        )
    return importlib.import_module(FAMILIES[model_type])


def fingerprint(config, params: dict) -> dict:
    """Architecture, shapes, dtypes and a content hash of the base params.

    Computed once at load and stored with every adapter and checkpoint; restoring
    onto a base with another fingerprint is refused. Pass base params only (no
    adapter or head leaves: `adapters.base_only`).
    """
    flat = paths.flat(params)
    h = hashlib.sha256()
    for name in sorted(flat):
        arr = np.ascontiguousarray(np.asarray(flat[name]))
        h.update(name.encode())
        h.update(str(arr.dtype).encode())
        h.update(arr.tobytes())
    return {
        "architecture": config.model_type,
        "num_params": int(sum(int(np.prod(v.shape)) for v in flat.values())),
        "shapes_sha256": hashlib.sha256(
            repr(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in flat.items())).encode()
        ).hexdigest()[:16],
        "content_sha256": h.hexdigest()[:16],
    }


def abstract_params(model, config) -> dict:
    family = family_of(config.model_type)
    ids = family.dummy_inputs(config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids))
    return shapes["params"]
