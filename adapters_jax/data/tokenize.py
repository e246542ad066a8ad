"""Tokenisation with the model's own tokenizer, cached on disk.

    enc = tokenize.encode_task(task, tokenizer, max_length=128)   # {"train": Encoded, ...}: one per split of task
    enc["train"].ids       list of int32 arrays, ragged: special tokens included, truncated to max_length
    enc["train"].labels    int32 [N]
    enc["train"].lengths   int32 [N]

`tokenizer` is a fast transformers tokenizer (`AutoTokenizer.from_pretrained`)
or a `tokenizers.Tokenizer`. Its padding is turned off (MiniLM's tokenizer.json
pads to 128): padding is the batcher's job.

The cache key is (task name + content fingerprint, tokenizer fingerprint,
max_length): `$ADAPTERS_JAX_CACHE/tokenized/<task>-<task fp>-<tok fp>-L<max_length>/<split>.npz`,
written to a temp file and renamed into place, so a second run, or another
process, reads it instead of tokenising again.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tokenizers

from adapters_jax.data import assets
from adapters_jax.data.tasks import DataError, Task


@dataclasses.dataclass(frozen=True, eq=False)
class Encoded:
    """One split, tokenised: ragged ids stored flat with offsets."""

    flat: np.ndarray  # int32 [sum of lengths]
    offsets: np.ndarray  # int64 [N + 1]
    labels: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return len(self.labels)

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets).astype(np.int32)

    @functools.cached_property
    def ids(self) -> list[np.ndarray]:
        return np.split(self.flat, self.offsets[1:-1])

    @classmethod
    def from_ids(cls, ids: Sequence[Sequence[int]], labels) -> "Encoded":
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets, np.asarray(labels, dtype=np.int32))


def _backend(tokenizer: Any) -> tokenizers.Tokenizer:
    """A private copy of the Rust tokenizer with padding and truncation off."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not isinstance(backend, tokenizers.Tokenizer):
        raise DataError(f"{type(tokenizer).__name__} is not a fast tokenizer; load it with "
                        f"AutoTokenizer.from_pretrained(..., use_fast=True) or pass a tokenizers.Tokenizer")
    copy = tokenizers.Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the tokenizer's full definition (vocab, merges, normalizer, post-processor)."""
    h = hashlib.sha256(tokenizers.__version__.encode())
    h.update(_backend(tokenizer).to_str().encode())
    return h.hexdigest()


def encode_texts(texts: Sequence[str], tokenizer: Any, max_length: int) -> list[list[int]]:
    """Token ids with the tokenizer's special tokens, truncated to max_length, unpadded."""
    backend = _backend(tokenizer)
    backend.enable_truncation(max_length)
    return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=True)]


def cache_dir(task: Task, tokenizer: Any, max_length: int) -> Path:
    key = f"{task.name}-{task.fingerprint[:12]}-{tokenizer_fingerprint(tokenizer)[:12]}-L{max_length}"
    return assets.cache_root() / "tokenized" / key


def encode_task(task: Task, tokenizer: Any, max_length: int, *, cache: bool = True) -> dict[str, Encoded]:
    """Every split of `task`, tokenised (from the disk cache when there)."""
    if max_length < 2:
        raise DataError(f"max_length={max_length}: too small to hold the special tokens")
    where = cache_dir(task, tokenizer, max_length) if cache else None
    out = {}
    for split in task.splits:  # train, test, and validation unless the task has none
        file = where / f"{split}.npz" if where else None
        if file is not None and file.is_file():
            try:
                with np.load(file) as z:
                    out[split] = Encoded(z["flat"], z["offsets"], z["labels"])
                continue
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # a miss, not a failure
                warnings.warn(f"{file}: unreadable tokenisation cache ({type(e).__name__}: {e}); tokenising again")
        d = task.splits[split]
        enc = Encoded.from_ids(encode_texts(d["text"], tokenizer, max_length), d["label"])
        if file is not None:
            _save(file, enc)
        out[split] = enc
    return out


def _save(file: Path, enc: Encoded) -> None:
    """Write to a temp file and rename it into place, so a reader never sees half a file."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{file.stem}.", suffix=".npz", dir=file.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, flat=enc.flat, offsets=enc.offsets, labels=enc.labels)
        os.replace(tmp, file)
    except OSError as e:
        raise DataError(f"cannot write the tokenisation cache {file}: {e.strerror or e}; "
                        f"set ADAPTERS_JAX_CACHE to a writable directory or pass cache=False") from None
