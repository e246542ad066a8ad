"""The opt-in XLA:CPU flags: off by default, added with ADAPTERS_JAX_ONEDNN=1, never overriding the user's."""
import json
import os
import subprocess
import sys

PROBE = ("import os, json, adapters_jax, jax.numpy as jnp; float(jnp.ones(2).sum()); "
         "print(json.dumps(os.environ.get('XLA_FLAGS', '')))")


def flags_after_import(env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ADAPTERS_JAX_ONEDNN")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_off_by_default_opt_in_and_user_flags_win():
    assert flags_after_import({}) == ""
    assert flags_after_import({"ADAPTERS_JAX_ONEDNN": "1"}) == (
        "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot")
    mine = "--xla_force_host_platform_device_count=2 --xla_cpu_use_onednn=false"
    assert flags_after_import({"ADAPTERS_JAX_ONEDNN": "1", "XLA_FLAGS": mine}) == (
        mine + " --xla_cpu_experimental_onednn_fusion_type=dot")
