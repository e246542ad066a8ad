"""Opt-in XLA:CPU flags, applied on import (before JAX creates its CPU client).

ADAPTERS_JAX_ONEDNN=1 routes XLA:CPU dots through oneDNN's brgemm kernels instead
of the default (YNNPACK) ones. Measured on the 2-core AVX-512 machine of
bench/results (MiniLM-L6, batch 32, seq 128, float32, one process per run):
Houlsby step 1.80 -> 1.66 s, LoRA 1.85 -> 1.64 s, full fine-tuning 2.60 -> 2.36 s,
and the model and adapter parity suites pass with it. It is NOT the default:
with jax 0.10.2 the same flags kill the evaluation step of a training run
("partition compile failed", then SIGILL). Bisected: a plain deterministic
MiniLM-L6 forward at batch 128, seq 32 runs, with or without adapters; adding the
classification head (mean pooling, then a [128, 384] x [384, 2] dot) crashes;
that dot alone, every train-step shape (vmapped per example) and the FFN and
attention dots alone run fine. The flag is
experimental upstream (`xla_cpu_experimental_onednn_fusion_type`).

A flag already named in XLA_FLAGS is never overridden. Nothing changes if a JAX
backend already exists when adapters_jax is imported (XLA reads XLA_FLAGS
once), nor on GPU/TPU, where these flags are inert.
"""
from __future__ import annotations

import os
import sys

ONEDNN = ("--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_fusion_type=dot")


def _backend_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def apply() -> list[str]:
    """With ADAPTERS_JAX_ONEDNN=1, append the oneDNN flags the user did not name; returns what was added."""
    if os.environ.get("ADAPTERS_JAX_ONEDNN", "0") != "1" or _backend_started():
        return []
    flags = os.environ.get("XLA_FLAGS", "")
    added = [f for f in ONEDNN if f.split("=")[0] not in flags]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()
    return added
