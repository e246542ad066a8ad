"""The XLA:CPU defaults set on import: added when absent, never overriding the user's, opt-out honoured."""
import json
import os
import subprocess
import sys

PROBE = ("import os, json, adapters_jax, jax.numpy as jnp; float(jnp.ones(2).sum()); "
         "print(json.dumps(os.environ.get('XLA_FLAGS', '')))")


def flags_after_import(env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ADAPTERS_JAX_XLA_DEFAULTS")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_defaults_added_kept_and_opt_out():
    assert flags_after_import({}) == "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot"
    mine = "--xla_force_host_platform_device_count=2 --xla_cpu_use_onednn=false"
    assert flags_after_import({"XLA_FLAGS": mine}) == mine + " --xla_cpu_experimental_onednn_fusion_type=dot"
    assert flags_after_import({"ADAPTERS_JAX_XLA_DEFAULTS": "0", "XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
                              ) == "--xla_cpu_enable_fast_math=false"
