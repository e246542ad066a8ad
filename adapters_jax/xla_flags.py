"""XLA:CPU defaults this library sets on import (before JAX creates its CPU client).

Dots on XLA:CPU go through oneDNN's brgemm kernels instead of the default
(YNNPACK) ones: measured on the 2-core AVX-512 machine of bench/results, MiniLM-L6
batch 32 seq 128 float32, one process per run: Houlsby step 1.80 -> 1.66 s,
LoRA 1.85 -> 1.64 s, full fine-tuning 2.60 -> 2.36 s (same values to float32
rounding: the model and adapter parity suites pass with it). Costs ~100-350 MiB
more peak RSS (oneDNN keeps reordered weight copies).

Opt out with ADAPTERS_JAX_XLA_DEFAULTS=0, or by naming the flag yourself in
XLA_FLAGS (--xla_cpu_use_onednn=false): a flag you set is never overridden.
Nothing changes if a JAX backend already exists when adapters_jax is imported
(XLA reads XLA_FLAGS once), nor on GPU/TPU, where these flags are inert.
"""
from __future__ import annotations

import os
import sys

CPU_DEFAULTS = ("--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_fusion_type=dot")


def _backend_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def apply() -> list[str]:
    """Append the CPU defaults to XLA_FLAGS where the user named none of them; returns what was added."""
    if os.environ.get("ADAPTERS_JAX_XLA_DEFAULTS", "1") == "0" or _backend_started():
        return []
    flags = os.environ.get("XLA_FLAGS", "")
    added = [f for f in CPU_DEFAULTS if f.split("=")[0] not in flags]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()
    return added
