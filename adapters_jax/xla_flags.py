"""The library's XLA:CPU defaults, applied on import (before JAX creates its CPU client).

Dots go to oneDNN, one dot per oneDNN call (`--xla_cpu_use_onednn=true
--xla_cpu_experimental_onednn_fusion_type=individual_dot`), not to XLA:CPU's
default YNNPACK fusions. Measured on the 2-core AVX-512 machine of
bench/results (MiniLM-L6, batch 32, seq 128, float32, one process per run,
interleaved): full fine-tuning 2.76-2.97 -> 2.44-2.47 s/step, Houlsby
2.09-2.23 -> 1.83-1.86 s/step (bench/results/README.md has the tables).

Why `individual_dot` and not oneDNN's `dot` fusion type (which also fuses a
dot's elementwise producers): with jax 0.10.2, `dot` fusions whose dot
consumes an elementwise product (mean pooling then the classifier, or a dot
followed by a masked sum) fail oneDNN Graph's partition compile ("partition
compile failed", then the process dies with SIGILL). Minimal case:
`((h * m[..., None]).sum(1) / n) @ w`. That killed our evaluation step; the
`individual_dot` path compiles it (tests/test_xla_flags.py runs both patterns).

Not for every model: on SmolLM2-135M (causal LM, 49k-token vocabulary) the LM
loss's [128, 576] x [576, 49152] products run at half speed under oneDNN and a
Houlsby step was 13% slower in a same-session A/B (bench/results/README.md);
train causal LMs on a CPU with ADAPTERS_JAX_ONEDNN=0.

ADAPTERS_JAX_ONEDNN=0 turns this off (XLA:CPU's own defaults). A flag already
named in XLA_FLAGS is never overridden. Nothing changes if a JAX backend
already exists when adapters_jax is imported (XLA reads XLA_FLAGS once), nor on
GPU/TPU, where these flags are inert.
"""
from __future__ import annotations

import os
import sys

ONEDNN = ("--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_fusion_type=individual_dot")


def _backend_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def apply() -> list[str]:
    """Unless ADAPTERS_JAX_ONEDNN=0, append the oneDNN flags the user did not name; returns what was added."""
    if os.environ.get("ADAPTERS_JAX_ONEDNN", "1") == "0" or _backend_started():
        return []
    flags = os.environ.get("XLA_FLAGS", "")
    added = [f for f in ONEDNN if f.split("=")[0] not in flags]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()
    return added
