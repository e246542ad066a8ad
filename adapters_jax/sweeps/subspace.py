"""How alike two LoRA updates are: the subspace similarity of Hu et al. 2021 (Sec. 7.2, Figs. 3-4).

    u8, u64 = directions(a_r8), directions(a_r64)     # lora_A [in, r] -> its input-side directions [in, r]
    phi = similarity(u8, u64)                         # [8, 64]: phi[i-1, j-1] = phi(i, j)

phi(i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j), in [0, 1]: 1 when the top-i directions of one
update lie inside the top-j of the other (or the reverse), about max(i, j) / in for two random subspaces
(`random_level`). The paper takes the right singular vectors of its A [r, in]; ours is stored [in, r], so
they are the left singular vectors here, ordered by singular value. `update_directions` does the same for
the whole update dW = A @ B (input side), which is what a short run has learned when A is still close to
its random initialisation (`relative_change` says how close).
"""
from __future__ import annotations

import numpy as np


def directions(m: np.ndarray) -> np.ndarray:
    """The orthonormal input-side directions of `m` [in, r] ordered by singular value: U of m = U S V^T."""
    u, _, _ = np.linalg.svd(np.asarray(m, np.float64), full_matrices=False)
    return u


def update_directions(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The input-side directions of the update dW = A @ B ([in, r] @ [r, out]), top r, by singular value."""
    return directions(np.asarray(a, np.float64) @ np.asarray(b, np.float64))[:, :a.shape[1]]


def similarity(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """phi(i, j) for i <= u1's rank, j <= u2's rank, as an array [r1, r2] (index [i-1, j-1])."""
    overlap = np.cumsum(np.cumsum((u1.T @ u2) ** 2, axis=0), axis=1)  # ||U1[:, :i]^T U2[:, :j]||_F^2
    i = np.arange(1, u1.shape[1] + 1)[:, None]
    j = np.arange(1, u2.shape[1] + 1)[None, :]
    return overlap / np.minimum(i, j)


def random_level(dim: int, r1: int, r2: int) -> np.ndarray:
    """The expected phi(i, j) of two independent uniformly random subspaces of R^dim: max(i, j) / dim."""
    i = np.arange(1, r1 + 1)[:, None]
    j = np.arange(1, r2 + 1)[None, :]
    return np.maximum(i, j) / dim


def relative_change(final: np.ndarray, initial: np.ndarray) -> float:
    """||final - initial||_F / ||initial||_F: how far training moved a matrix from its initialisation."""
    return float(np.linalg.norm(np.asarray(final, np.float64) - initial) / np.linalg.norm(initial))
