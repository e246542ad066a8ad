"""Adapter directories: ours, PEFT's and AdapterHub's, recognised, translated and written.

This package is the pure half of the exchange: files (JSON, safetensors), and the
translation of a peer's config into our config string and back. Adding the
adapter to a base and filling its leaves happens in adapters.py (load_adapter,
save_adapter), with interop.py's tensor mapping; nothing here imports either,
so the layers stay one way:

    configs, paths, models, modules  <-  formats  <-  adapters.py (+ interop.py)  <-  scripts/convert.py

    fmt, cfg = formats.detect(DIR)                       # "ours" | "peft" | "adapterhub"
    foreign = formats.read(DIR, fmt, cfg, info)          # Foreign: our spec, the peer's tensors, a head
    formats.write_dir(DIR, {"adapter_config.json": {...}, "adapter_model.safetensors": tensors})

docs/interop.md lists what maps to what and what is refused.
"""
from __future__ import annotations

from pathlib import Path

from adapters_jax.formats import adapterhub, peft
from adapters_jax.formats.base import Foreign, ModelInfo  # noqa: F401
from adapters_jax.formats.files import (  # noqa: F401
    ADAPTERHUB, AH_HEAD_CONFIG, CONFIG, OURS, OURS_FORMAT, PEFT, WEIGHTS, detect, read_json, read_weights,
    weights_file, write_dir,
)

FORMATS = (OURS, PEFT, ADAPTERHUB)


def read(path, fmt: str, cfg: dict, info: ModelInfo) -> Foreign:
    """A PEFT or AdapterHub directory (already `detect`ed) translated for the base `info` describes."""
    path = Path(path)
    where = str(path / CONFIG)
    tensors = read_weights(weights_file(path, fmt))
    if fmt == PEFT:
        return peft.read(cfg, tensors, info, where)
    head_cfg = head_weights = None
    if (path / AH_HEAD_CONFIG).exists():
        head_cfg = read_json(path / AH_HEAD_CONFIG)
        head_weights = read_weights(weights_file(path, fmt, kind="head"))
    return adapterhub.read(cfg, tensors, info, where, head_cfg, head_weights)
