"""The hash-based dropout masks (layers.keep_mask): rate, independence, determinism, and its use in the models."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapters_jax import primitives as layers

N = 1 << 20


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_rate_within_binomial_bounds(rate):
    keep = np.asarray(layers.keep_mask(jax.random.PRNGKey(0), rate, (N,)))
    sd = np.sqrt(N * rate * (1 - rate))
    assert abs(keep.sum() - N * (1 - rate)) < 5 * sd


def test_neighbours_and_keys_are_uncorrelated():
    rate = 0.1
    a = np.asarray(layers.keep_mask(jax.random.PRNGKey(0), rate, (N,)), np.float64)
    b = np.asarray(layers.keep_mask(jax.random.PRNGKey(1), rate, (N,)), np.float64)
    c = np.asarray(layers.keep_mask(jax.random.fold_in(jax.random.PRNGKey(0), 7), rate, (N,)), np.float64)
    bound = 5 / np.sqrt(N)  # |correlation| of independent masks is ~N(0, 1/N)
    for x, y in ((a[:-1], a[1:]), (a[:-64], a[64:]), (a, b), (a, c), (b, c)):
        assert abs(np.corrcoef(x, y)[0, 1]) < bound
    # a 2-D mask: rows (e.g. attention rows) are not copies of each other
    m = np.asarray(layers.keep_mask(jax.random.PRNGKey(3), 0.5, (1024, 1024)), np.float64)
    assert abs(np.corrcoef(m[:-1].ravel(), m[1:].ravel())[0, 1]) < bound


def test_bits_are_a_bijection_of_the_index():
    bits = layers.hash_bits(jax.random.PRNGKey(5), (N,))
    assert len(np.unique(np.asarray(bits))) == N


def test_deterministic_typed_keys_and_vmap():
    key = jax.random.PRNGKey(42)
    m1 = layers.keep_mask(key, 0.1, (4, 8, 16))
    np.testing.assert_array_equal(m1, layers.keep_mask(key, 0.1, (4, 8, 16)))
    typed = jax.random.wrap_key_data(key)
    np.testing.assert_array_equal(m1, layers.keep_mask(typed, 0.1, (4, 8, 16)))
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(3))
    batched = jax.vmap(lambda k: layers.keep_mask(k, 0.1, (8, 16)))(keys)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], layers.keep_mask(keys[i], 0.1, (8, 16)))
    assert not np.array_equal(batched[0], batched[1])


def test_dropout_scales_and_edges():
    x = jnp.ones((256, 256))
    y = layers.dropout(x, 0.25, jax.random.PRNGKey(0))
    kept = np.asarray(y) != 0
    np.testing.assert_array_equal(np.asarray(y)[kept], np.float32(1 / 0.75))
    np.testing.assert_array_equal(layers.dropout(x, 0.0, jax.random.PRNGKey(0)), x)
    np.testing.assert_array_equal(layers.dropout(x, 1.0, jax.random.PRNGKey(0)), jnp.zeros_like(x))
    mod = layers.Dropout(0.5)
    np.testing.assert_array_equal(mod.apply({}, x, deterministic=True), x)
    out = mod.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
    assert 0.45 < float((out != 0).mean()) < 0.55


def test_model_dropout_active_in_training_only():
    """A real BERT forward: deterministic is exact and key-free; training differs by key and is reproducible."""
    from adapters_jax.models import bert

    conf = bert.Config(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37, max_position_embeddings=64)
    model = bert.Model(conf)
    ids = jnp.arange(2 * 16).reshape(2, 16) % 99
    params = model.init(jax.random.PRNGKey(0), ids)["params"]
    run = lambda det, k=None: model.apply({"params": params}, ids, deterministic=det,
                                          rngs=None if k is None else {"dropout": jax.random.PRNGKey(k)})
    np.testing.assert_array_equal(run(True), run(True))
    np.testing.assert_array_equal(run(False, 1), run(False, 1))
    assert float(jnp.abs(run(False, 1) - run(False, 2)).max()) > 1e-2
    assert float(jnp.abs(run(False, 1) - run(True)).max()) > 1e-2
