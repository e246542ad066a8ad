"""XLA:CPU flags chosen per model family, applied by an entry point that asks for them (never on import).

    from adapters_jax import xla_flags
    xla_flags.apply_for(config.model)   # before the first JAX computation in the process
    xla_flags.current()                 # what was chosen here and why (loop.run records it in report.json)

Encoder (BERT-family) models get oneDNN dots, one dot per oneDNN call (ONEDNN). Llama-family models
(a .gguf file, or a config.json whose model_type is llama, mistral or qwen2: models.FAMILIES) and models
whose family cannot be read get XLA:CPU's defaults. docs/xla_flags.md has the measurements behind the
choice and the crash that rules out oneDNN's `dot` fusion type.

ADAPTERS_JAX_ONEDNN=1 or 0 forces the choice. A flag already named in XLA_FLAGS is never overridden.
XLA reads XLA_FLAGS once, when JAX creates its backend, so flags set after the first JAX computation have
no effect; importing jax or adapters_jax computes nothing. On GPU/TPU these flags are inert.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from adapters_jax.data import assets
from adapters_jax.errors import AdaptersJaxError, ConfigError
from adapters_jax.models import FAMILIES

ONEDNN = ("--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_fusion_type=individual_dot")
KIND_OF_FAMILY = {"bert": "encoder", "llama": "decoder"}  # models.FAMILIES' module -> what decides the flags
ENV = "ADAPTERS_JAX_ONEDNN"

_chosen: dict | None = None


def family(model: str) -> tuple[str, str]:
    """("encoder" | "decoder" | "unknown", why) for an asset name, HF-format directory or .gguf file.

    Reads the .gguf suffix or config.json's model_type; an asset is looked up in the catalog (a .gguf
    asset is decided from its file name, a directory asset is fetched, as loading it would). JAX-free.
    """
    path = Path(model)
    if not path.exists() and not model.endswith(".gguf"):
        try:
            asset = assets.get(model)
            if asset.main and asset.main.endswith(".gguf"):
                return "decoder", f"asset {model} is a GGUF file ({asset.main}): Llama family"
            path = assets.fetch(model)
        except (AdaptersJaxError, OSError) as e:
            return "unknown", f"{model!r} cannot be read ({e})"
    if path.suffix == ".gguf":
        return "decoder", f"{path.name} is a GGUF file: Llama family"
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        return "unknown", f"no readable {path / 'config.json'} ({type(e).__name__})"
    module = FAMILIES.get(model_type, "").rpartition(".")[2]
    if module not in KIND_OF_FAMILY:
        return "unknown", f"config.json model_type {model_type!r} is not a supported family"
    return KIND_OF_FAMILY[module], f"config.json model_type {model_type!r}: {module} family"


def apply_for(model: str) -> dict:
    """Choose and set XLA_FLAGS for `model` (see the module docstring); returns what `current()` returns."""
    global _chosen
    fam, why = family(str(model))
    forced = os.environ.get(ENV)
    if forced not in (None, "", "0", "1"):
        raise ConfigError(f"{ENV}={forced!r}; set it to 1 (oneDNN dots), 0 (XLA's defaults) or leave it unset")
    if forced in ("0", "1"):
        onednn, why = forced == "1", f"{ENV}={forced} ({why})"
    else:
        onednn = fam == "encoder"
    user = os.environ.get("XLA_FLAGS", "")
    added = [f for f in ONEDNN if f.split("=")[0] not in user] if onednn else []
    if added:
        os.environ["XLA_FLAGS"] = " ".join([user, *added]).strip()
    _chosen = {"model": str(model), "family": fam, "onednn": onednn, "reason": why, "user_xla_flags": user,
               "added": added, "xla_flags": os.environ.get("XLA_FLAGS", "")}
    return dict(_chosen)


def current() -> dict:
    """What apply_for chose in this process and why; if it was not called, XLA_FLAGS as the process found it."""
    if _chosen is None:
        return {"model": None, "family": None, "onednn": None, "reason": "xla_flags.apply_for was not called",
                "added": [], "xla_flags": os.environ.get("XLA_FLAGS", "")}
    return dict(_chosen)
