"""Hugging Face-format checkpoints: safetensors in, our param pytree out.

Base param paths mirror the HF module names, so loading is a rename plus a
transpose (the rename is adapters_jax/paths.py's, for every family):

    encoder.layer.0.attention.self.query.weight -> encoder/layer_0/attention/self/query/kernel (transposed)
    model.embed_tokens.weight                   -> model/embed_tokens/embedding
    model.norm.weight                           -> model/norm/scale

A `weight` becomes `kernel`, `embedding` or `scale`, whichever the model's own
(abstract) param tree holds at that path; `bert.`/`roberta.` prefixes and
buffers are dropped (paths.HF_PREFIXES, paths.HF_DROP).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np

from adapters_jax import paths
from adapters_jax.errors import CheckpointError  # noqa: F401  (re-exported)


def read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{model_dir}: no config.json; a Hugging Face model directory needs one")
    return json.loads(path.read_text())


def safetensors_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a directory, single-file or sharded (model.safetensors.index.json)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({model_dir / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index} names shards that are not there: {missing}")
        return files
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    other = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if other:
        return [model_dir / name for name in other]
    pickled = [p.name for p in model_dir.glob("*.bin")] + [p.name for p in model_dir.glob("*.pt*")]
    if pickled:
        raise CheckpointError(
            f"{model_dir} holds only pickled weights ({', '.join(sorted(pickled))}); adapters_jax never "
            "unpickles. Convert once, where torch is installed: "
            "`python -c \"from transformers import AutoModel; AutoModel.from_pretrained('DIR')"
            ".save_pretrained('DIR', safe_serialization=True)\"`"
        )
    raise CheckpointError(f"{model_dir}: no model.safetensors, sharded index or *.safetensors file")


def read_safetensors(files: list[Path]) -> dict[str, np.ndarray]:
    """All tensors of the files as numpy, float16/bfloat16 kept as they are (cast later)."""
    from safetensors.numpy import load_file

    tensors: dict[str, np.ndarray] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{f}: cannot read safetensors ({e})") from e
    return tensors


def to_params(
    tensors: Mapping[str, np.ndarray],
    abstract_params: Mapping,
    family: str,
    dtype=np.float32,
    where: str = "checkpoint",
    source_names: Mapping[str, str] | None = None,
) -> dict:
    """Map HF-named tensors onto the model's param tree, checking every name and shape.

    `abstract_params` is the model's param tree (arrays or ShapeDtypeStructs, from
    `jax.eval_shape(model.init, ...)`); `family` ("bert", "llama") says which
    HF tensors are dropped. Raises CheckpointError naming every missing,
    unexpected or mis-shaped tensor, by its name in the file (`source_names` maps HF
    names back to the file's own, e.g. GGUF's).
    """
    source_names = source_names or {}
    expected = paths.flat(abstract_params)
    out: dict[str, np.ndarray] = {}
    unexpected = []
    for hf_name, value in tensors.items():
        if paths.is_dropped(hf_name, family):
            continue
        target = paths.hf_to_path(hf_name, family, expected)
        if target is None:
            unexpected.append(source_names.get(hf_name, hf_name))
            continue
        value = np.asarray(value)
        if target.endswith("/kernel"):
            value = value.T
        want = tuple(expected[target].shape)
        if tuple(value.shape) != want:
            raise CheckpointError(
                f"{where}: tensor {source_names.get(hf_name, hf_name)!r} has shape {tuple(value.shape)} but {target} needs {want} "
                "(after transposing Linear weights); is config.json the one these weights were saved with?"
            )
        out[target] = value.astype(dtype)
    missing = sorted(set(expected) - set(out))
    if missing or unexpected:
        msg = [f"{where} does not match the model:"]
        if missing:
            msg.append(f"missing tensors for {len(missing)} params: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            msg.append(f"unexpected tensors: {sorted(unexpected)[:8]}{' ...' if len(unexpected) > 8 else ''}")
        raise CheckpointError(" ".join(msg))
    return paths.unflat(out)
