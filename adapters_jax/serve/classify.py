"""Encoders: inputs of any adapters in one padded batch through the bank and a classification head per slot.

Each step takes the waiting inputs (engine.py), runs them in chunks of at most `max_batch` rows
(rows padded to a power of two, tokens right-padded to a prompt bucket, as BERT expects), and
answers each input with the softmax over its own adapter's labels.
"""
from __future__ import annotations

import numpy as np

from adapters_jax.decoding import prompt_bucket
from adapters_jax.serve.kernels import rows_bucket


def logits(kernels, params, rows: list, max_batch: int) -> np.ndarray:
    """[len(rows), max_labels] logits of rows [(token ids, bank slot)]; one request may hold more than a batch."""
    out = []
    for start in range(0, len(rows), max_batch):
        chunk = rows[start:start + max_batch]
        nb, t = rows_bucket(len(chunk), max_batch), prompt_bucket(max(len(ids) for ids, _ in chunk))
        ids_BxT, mask_BxT = np.zeros((nb, t), np.int32), np.zeros((nb, t), np.int32)
        slots_B = np.zeros((nb,), np.int32)
        for i, (ids, s) in enumerate(chunk):
            ids_BxT[i, :len(ids)], mask_BxT[i, :len(ids)], slots_B[i] = ids, 1, s
        out.append(np.asarray(kernels.classify(params, ids_BxT, mask_BxT, slots_B))[:len(chunk)])
    return np.concatenate(out)


def answer(logits_L: np.ndarray, labels: list) -> dict:
    """One input's label and probabilities over its adapter's own labels (the head's padding cut off)."""
    z = logits_L[:len(labels)].astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    return {"label": labels[int(p.argmax())], "probs": p.tolist(), "num_classes": len(labels)}


def warm(kernels, params, max_batch: int, max_model_len: int) -> None:
    """Compile every (rows, bucket) logits() can run for inputs of up to max_model_len tokens."""
    for nb in sorted({rows_bucket(n, max_batch) for n in range(1, max_batch + 1)}):
        for t in sorted({prompt_bucket(n) for n in range(1, max_model_len + 1)}):
            ids_BxT, mask_BxT = np.zeros((nb, t), np.int32), np.zeros((nb, t), np.int32)
            mask_BxT[:, 0] = 1
            np.asarray(kernels.classify(params, ids_BxT, mask_BxT, np.zeros((nb,), np.int32)))
