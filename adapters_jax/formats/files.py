"""Adapter directories as files: which format a directory holds, safe reads, and writes that never half-replace.

    ours        adapter_config.json {"format": "adapters_jax.adapter/1", ...} + adapter.safetensors
    peft        adapter_config.json {"peft_type": ...} + adapter_model.safetensors
    adapterhub  adapter_config.json {"config": ..., "model_class": ...} + adapter.safetensors
                (+ head_config.json + model_head.safetensors when saved with its head)

Only JSON and safetensors are read; a directory whose weights are pickled
(`pytorch_adapter.bin`, `adapter_model.bin`, `pytorch_model_head.bin`) is
refused with the one-line conversion to run where torch is installed.
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np

from adapters_jax.errors import InteropError

OURS, PEFT, ADAPTERHUB = "ours", "peft", "adapterhub"
OURS_FORMAT = "adapters_jax.adapter/1"
CONFIG = "adapter_config.json"
WEIGHTS = {OURS: "adapter.safetensors", PEFT: "adapter_model.safetensors", ADAPTERHUB: "adapter.safetensors"}
AH_HEAD_CONFIG, AH_HEAD_WEIGHTS = "head_config.json", "model_head.safetensors"
# the pickled file each format writes without safetensors, and how to convert it (torch.load is never called here)
PICKLED = {PEFT: "adapter_model.bin", ADAPTERHUB: "pytorch_adapter.bin", "head": "pytorch_model_head.bin"}
_CONVERT = {
    PEFT: "`python -c \"import torch, safetensors.torch as st; "
          "st.save_file(torch.load('DIR/adapter_model.bin'), 'DIR/adapter_model.safetensors')\"`",
    ADAPTERHUB: "`python -c \"import torch, safetensors.torch as st; sd = torch.load('DIR/pytorch_adapter.bin'); "
                "st.save_file({k: v.clone() for k, v in sd.items()}, 'DIR/adapter.safetensors')\"` "
                "(clone: AdapterHub repeats a prefix pool under every layer, and safetensors refuses shared tensors)",
    "head": "`python -c \"import torch, safetensors.torch as st; "
            "st.save_file(torch.load('DIR/pytorch_model_head.bin'), 'DIR/model_head.safetensors')\"`",
}


def read_json(path: Path) -> dict:
    try:
        out = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InteropError(f"{path}: cannot read JSON ({e})") from e
    if not isinstance(out, dict):
        raise InteropError(f"{path}: expected a JSON object, found {type(out).__name__}")
    return out


def detect(path) -> tuple[str, dict]:
    """(format, adapter_config) of an adapter directory; InteropError says what is missing or unsafe."""
    path = Path(path)
    if not path.is_dir():
        raise InteropError(f"{path} is not a directory (an adapter directory holds {CONFIG} and its weights)")
    if not (path / CONFIG).exists():
        pickled = sorted(p.name for p in path.glob("*.bin"))
        raise InteropError(f"{path}: no {CONFIG}" + (f" (it holds {pickled})" if pickled else "")
                           + "; expected our, PEFT's or AdapterHub's adapter directory")
    cfg = read_json(path / CONFIG)
    if cfg.get("format") == OURS_FORMAT:
        fmt = OURS
    elif "peft_type" in cfg:
        fmt = PEFT
    elif "config" in cfg and "model_class" in cfg:
        fmt = ADAPTERHUB
    elif "format" in cfg:
        raise InteropError(f"{path / CONFIG}: format {cfg['format']!r} is not one this version reads ({OURS_FORMAT})")
    else:
        raise InteropError(f"{path / CONFIG}: neither ours (`format`), PEFT's (`peft_type`) nor AdapterHub's "
                           f"(`config` + `model_class`); keys: {sorted(cfg)[:10]}")
    weights_file(path, fmt)
    return fmt, cfg


def weights_file(path: Path, fmt: str, kind: str | None = None) -> Path:
    """The safetensors file of a format (kind="head": AdapterHub's head), refusing a pickled-only directory."""
    name = AH_HEAD_WEIGHTS if kind == "head" else WEIGHTS[fmt]
    pickled_name = PICKLED.get(kind or fmt)
    w = Path(path) / name
    if w.exists():
        return w
    if pickled_name and (Path(path) / pickled_name).exists():
        raise InteropError(
            f"{path} holds only pickled weights ({pickled_name}); adapters_jax never unpickles. Convert once, where "
            f"torch is installed, with DIR={path}: {_CONVERT[kind or fmt]}")
    raise InteropError(f"{path}: weights file {name} is missing (its {CONFIG} is in {fmt} format)")


def read_weights(file: Path) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file as numpy; a truncated or corrupt file is an InteropError naming it."""
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(file)))
    except Exception as e:  # safetensors raises its own types (SafetensorError, ValueError) for bad headers/lengths
        raise InteropError(f"{file}: cannot read safetensors ({type(e).__name__}: {e}); the file is truncated "
                           "or not safetensors") from e


def write_dir(path, files: dict) -> Path:
    """Write directory `path` from {file name: dict of arrays (-> safetensors) | dict (-> JSON)}.

    Written beside (`.NAME.<tag>.tmp`) and renamed into place, so a failed write never leaves a
    half-written directory where a good one was; an existing directory is swapped out whole.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    tag = uuid.uuid4().hex[:8]  # two writers of one destination never share a temporary
    tmp, old = path.with_name(f".{path.name}.{tag}.tmp"), path.with_name(f".{path.name}.{tag}.old")
    tmp.mkdir(parents=True)
    try:
        for name, content in files.items():
            if name.endswith(".safetensors"):
                save_file({k: np.ascontiguousarray(v) for k, v in content.items()}, str(tmp / name))
            else:
                (tmp / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():  # swap in the new one, then drop the old: a good adapter is never half-overwritten
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    return path
