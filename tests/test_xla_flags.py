"""XLA:CPU flags: chosen per model family by an explicit call (importing adapters_jax sets none), forced by
ADAPTERS_JAX_ONEDNN, never overriding the user's XLA_FLAGS, recorded by `current()`; and the dot patterns
that crashed oneDNN's `dot` fusion type compile and run under the flags chosen for an encoder."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adapters_jax import xla_flags
from adapters_jax.errors import ConfigError

FIX = Path(__file__).parent / "fixtures"
ENCODER, DECODER = str(FIX / "tiny-roberta"), str(FIX / "tiny-llama")
ONEDNN = " ".join(xla_flags.ONEDNN)
# whether XLA compiled a dot through oneDNN: the compiled HLO names the fusion
DOT_BACKEND = """
import jax, jax.numpy as jnp
hlo = jax.jit(lambda a, b: a @ b).lower(jnp.ones((64, 64)), jnp.ones((64, 64))).compile().as_text()
onednn = "onednn" in hlo
"""


@pytest.fixture
def fresh(monkeypatch):
    """xla_flags as a new process finds it: nothing chosen, no XLA_FLAGS, no ADAPTERS_JAX_ONEDNN (restored after)."""
    monkeypatch.setattr(xla_flags, "_chosen", None)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv(xla_flags.ENV, raising=False)
    return monkeypatch


def run(code: str, env_extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.ENV)}
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-500:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_family_from_the_asset_name_the_gguf_suffix_or_config_json(asset_path, tmp_path):
    asset_path("minilm-l6")
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text('{"model_type": "t5"}')
    want = {ENCODER: "encoder", str(FIX / "tiny-bert-bf16"): "encoder", "minilm-l6": "encoder",
            DECODER: "decoder", str(FIX / "tiny-mistral"): "decoder", str(FIX / "tiny-qwen2"): "decoder",
            "smollm2-135m": "decoder", str(tmp_path / "any.gguf"): "decoder",
            "no-such-model": "unknown", str(tmp_path): "unknown", str(tmp_path / "t5"): "unknown"}
    assert {m: xla_flags.family(m)[0] for m in want} == want


def test_every_model_family_has_a_flag_choice():
    from adapters_jax.models import FAMILIES

    assert {m.rpartition(".")[2] for m in FAMILIES.values()} <= set(xla_flags.KIND_OF_FAMILY)


def test_apply_for_chooses_per_family_and_current_says_why(fresh):
    assert xla_flags.current()["reason"] == "xla_flags.apply_for was not called"
    chosen = xla_flags.apply_for(ENCODER)
    assert os.environ["XLA_FLAGS"] == ONEDNN
    assert chosen == xla_flags.current()
    assert chosen["family"] == "encoder" and chosen["onednn"] and "roberta" in chosen["reason"]

    fresh.delenv("XLA_FLAGS")
    chosen = xla_flags.apply_for(DECODER)  # SmolLM2 measured 13% slower with oneDNN: XLA's defaults
    assert "XLA_FLAGS" not in os.environ and chosen["added"] == [] and not chosen["onednn"]
    assert xla_flags.current()["family"] == "decoder"


def test_env_forces_and_user_flags_win(fresh):
    fresh.setenv(xla_flags.ENV, "1")
    assert xla_flags.apply_for(DECODER)["onednn"] and os.environ["XLA_FLAGS"] == ONEDNN
    fresh.delenv("XLA_FLAGS")
    fresh.setenv(xla_flags.ENV, "0")
    chosen = xla_flags.apply_for(ENCODER)
    assert not chosen["onednn"] and "XLA_FLAGS" not in os.environ and "ADAPTERS_JAX_ONEDNN=0" in chosen["reason"]
    fresh.setenv(xla_flags.ENV, "yes")
    with pytest.raises(ConfigError, match="ADAPTERS_JAX_ONEDNN='yes'"):
        xla_flags.apply_for(ENCODER)

    fresh.delenv(xla_flags.ENV)
    mine = "--xla_force_host_platform_device_count=2 --xla_cpu_use_onednn=false"
    fresh.setenv("XLA_FLAGS", mine)
    chosen = xla_flags.apply_for(ENCODER)
    assert os.environ["XLA_FLAGS"] == mine + " --xla_cpu_experimental_onednn_fusion_type=individual_dot"
    assert chosen["user_xla_flags"] == mine and chosen["xla_flags"] == os.environ["XLA_FLAGS"]


def test_importing_changes_nothing_and_a_decoder_keeps_xla_defaults():
    """Import the library and the training loop: the environment is as it was. Then a decoder's flags reach
    XLA: its dots are not oneDNN's."""
    got = run(f"""
import json, os
before = dict(os.environ)
import adapters_jax, adapters_jax.train.loop
from adapters_jax import xla_flags
unchanged = dict(os.environ) == before
xla_flags.apply_for({DECODER!r})
{DOT_BACKEND}
print(json.dumps({{"unchanged": unchanged, "onednn": onednn, "flags": os.environ.get("XLA_FLAGS", "")}}))
""")
    assert got == {"unchanged": True, "onednn": False, "flags": ""}


# mean pooling then a classifier dot, and a dot then a masked sum: each killed the process under
# --xla_cpu_experimental_onednn_fusion_type=dot ("partition compile failed", SIGILL) with jax 0.10.2
CRASHED = f"""
import json
from adapters_jax import xla_flags
chosen = xla_flags.apply_for({ENCODER!r})
import jax, jax.numpy as jnp, numpy as np
{DOT_BACKEND}
r = np.random.default_rng(0)
h = jnp.asarray(r.normal(size=(32, 32, 384)), jnp.float32)
m = jnp.asarray(r.integers(0, 2, (32, 32)), jnp.float32)
w = jnp.asarray(r.normal(size=(384, 2)), jnp.float32)
w1 = jnp.asarray(r.normal(size=(384, 384)), jnp.float32) / 20
pool_dot = jax.jit(lambda h, m, w: ((h * m[..., None]).sum(1) / jnp.maximum(m.sum(1, keepdims=True), 1.0)) @ w)
dot_pool = jax.jit(lambda h, m, w1: ((h @ w1) * m[..., None]).sum(1))
print(json.dumps({{"added": chosen["added"], "onednn": onednn, "pool_dot": np.asarray(pool_dot(h, m, w)).tolist(),
                   "dot_pool": np.asarray(dot_pool(h, m, w1)).tolist()}}))
"""


def test_dot_patterns_that_crashed_onednn_fusions_run_and_match_numpy():
    got = run(CRASHED)
    assert got["added"] == list(xla_flags.ONEDNN) and got["onednn"], "the encoder's flags did not reach XLA"
    pool_dot, dot_pool = np.asarray(got["pool_dot"]), np.asarray(got["dot_pool"])
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
