"""Subspace similarity (Hu et al. 2021, Sec. 7.2): the formula, its exact cases and its random level."""
import numpy as np

from adapters_jax.sweeps import subspace


def by_definition(u1, u2):
    """phi(i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j), written as the paper writes it."""
    return np.array([[np.linalg.norm(u1[:, :i].T @ u2[:, :j]) ** 2 / min(i, j)
                      for j in range(1, u2.shape[1] + 1)] for i in range(1, u1.shape[1] + 1)])


def orthonormal(rng, dim, r):
    return np.linalg.qr(rng.standard_normal((dim, r)))[0]


def test_matches_the_definition():
    rng = np.random.default_rng(0)
    u1, u2 = orthonormal(rng, 40, 8), orthonormal(rng, 40, 24)
    np.testing.assert_allclose(subspace.similarity(u1, u2), by_definition(u1, u2), rtol=1e-12, atol=1e-14)


def test_exact_cases():
    e = np.eye(6)
    u = e[:, :3]
    np.testing.assert_allclose(subspace.similarity(u, u), np.ones((3, 3)), atol=1e-15)
    # one shared direction: [e0, e1] against [e0, e2, e3]
    phi = subspace.similarity(e[:, [0, 1]], e[:, [0, 2, 3]])
    np.testing.assert_allclose(phi, [[1, 1, 1], [1, 0.5, 0.5]], atol=1e-15)
    # disjoint subspaces: 0 everywhere
    np.testing.assert_allclose(subspace.similarity(e[:, [0, 1]], e[:, [2, 3, 4]]), np.zeros((2, 3)), atol=1e-15)


def test_directions_are_ordered_by_singular_value():
    rng = np.random.default_rng(1)
    u, v = orthonormal(rng, 30, 4), orthonormal(rng, 4, 4)
    m = u[:, [2, 0, 3, 1]] @ np.diag([3.0, 5.0, 1.0, 4.0]) @ v.T  # singular values out of order
    d = subspace.directions(m)
    np.testing.assert_allclose(np.abs(np.sum(d * u, axis=0)), np.ones(4), atol=1e-12)  # u0 (5), u1 (4), ...
    # the update's directions: A @ B with B mixing A's columns keeps A's column space
    b = rng.standard_normal((4, 7))
    np.testing.assert_allclose(subspace.similarity(subspace.update_directions(m, b), u)[-1, -1], 1.0, atol=1e-12)


def test_random_level_is_the_mean_of_random_subspaces():
    rng = np.random.default_rng(2)
    dim, r1, r2, draws = 64, 4, 16, 400
    mean = np.mean([subspace.similarity(orthonormal(rng, dim, r1), orthonormal(rng, dim, r2))
                    for _ in range(draws)], axis=0)
    level = subspace.random_level(dim, r1, r2)
    assert level[0, 0] == 1 / 64 and level[-1, -1] == 16 / 64
    np.testing.assert_allclose(mean, level, atol=0.012)  # 400 draws: the standard error of phi(4, 16) is ~0.004


def test_relative_change():
    a0 = np.array([[3.0, 0.0], [0.0, 4.0]])
    assert subspace.relative_change(a0 + np.array([[0.0, 0.5], [0.0, 0.0]]), a0) == 0.1
