"""The library's XLA:CPU defaults: oneDNN dots unless ADAPTERS_JAX_ONEDNN=0, never overriding the user's flags,
and the dot patterns that crashed oneDNN's `dot` fusion type compile and run under them."""
import json
import os
import subprocess
import sys

import numpy as np

PROBE = ("import os, json, adapters_jax, jax.numpy as jnp; float(jnp.ones(2).sum()); "
         "print(json.dumps(os.environ.get('XLA_FLAGS', '')))")
ONEDNN = "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=individual_dot"

# mean pooling then a classifier dot, and a dot then a masked sum: each killed the process under
# --xla_cpu_experimental_onednn_fusion_type=dot ("partition compile failed", SIGILL) with jax 0.10.2
CRASHED = """
import json, adapters_jax, jax, jax.numpy as jnp, numpy as np
r = np.random.default_rng(0)
h = jnp.asarray(r.normal(size=(32, 32, 384)), jnp.float32)
m = jnp.asarray(r.integers(0, 2, (32, 32)), jnp.float32)
w = jnp.asarray(r.normal(size=(384, 2)), jnp.float32)
w1 = jnp.asarray(r.normal(size=(384, 384)), jnp.float32) / 20
pool_dot = jax.jit(lambda h, m, w: ((h * m[..., None]).sum(1) / jnp.maximum(m.sum(1, keepdims=True), 1.0)) @ w)
dot_pool = jax.jit(lambda h, m, w1: ((h @ w1) * m[..., None]).sum(1))
print(json.dumps([np.asarray(pool_dot(h, m, w)).tolist(), np.asarray(dot_pool(h, m, w1)).tolist()]))
"""


def run(code: str, env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ADAPTERS_JAX_ONEDNN")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-500:]
    return out.stdout.strip().splitlines()[-1]


def test_on_by_default_opt_out_and_user_flags_win():
    assert json.loads(run(PROBE, {})) == ONEDNN
    assert json.loads(run(PROBE, {"ADAPTERS_JAX_ONEDNN": "0"})) == ""
    mine = "--xla_force_host_platform_device_count=2 --xla_cpu_use_onednn=false"
    assert json.loads(run(PROBE, {"XLA_FLAGS": mine})) == (
        mine + " --xla_cpu_experimental_onednn_fusion_type=individual_dot")


def test_dot_patterns_that_crashed_onednn_fusions_run_and_match_numpy():
    pool_dot, dot_pool = (np.asarray(x) for x in json.loads(run(CRASHED, {})))
    r = np.random.default_rng(0)
    h = r.normal(size=(32, 32, 384)).astype(np.float32)
    m = r.integers(0, 2, (32, 32)).astype(np.float32)
    w = r.normal(size=(384, 2)).astype(np.float32)
    w1 = r.normal(size=(384, 384)).astype(np.float32) / 20
    h64, m64 = h.astype(np.float64), m.astype(np.float64)
    want_pool_dot = ((h64 * m64[..., None]).sum(1) / np.maximum(m64.sum(1, keepdims=True), 1.0)) @ w
    want_dot_pool = ((h64 @ w1) * m64[..., None]).sum(1)
    np.testing.assert_allclose(pool_dot, want_pool_dot, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dot_pool, want_dot_pool, rtol=1e-4, atol=1e-3)
