"""What a run records beside its checkpoints: the checkpoint metadata, the metrics log and provenance.

    meta = run_meta(config, base, task, model)     # in every checkpoint (checkpoint.MUST_MATCH: what a resume checks)
    with open_log(workdir, primary) as log:        # metrics.jsonl + TensorBoard scalars
        log("train", step, {"loss": ...})
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import subprocess
from pathlib import Path

import jax

from adapters_jax.configs import to_string


def provenance() -> dict:
    """The installed library version and this checkout's git commit ("+dirty" with uncommitted changes to
    tracked files; None where unknown)."""
    out = {"adapters_jax": None, "git_commit": None}
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        out["adapters_jax"] = importlib.metadata.version("adapters_jax")
    with contextlib.suppress(Exception):
        git = lambda *a: subprocess.run(["git", *a], cwd=Path(__file__).resolve().parents[2],  # noqa: E731
                                        capture_output=True, text=True, timeout=5).stdout.strip()
        if commit := git("rev-parse", "HEAD"):
            out["git_commit"] = commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    return out


PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "transformers", "tokenizers")


def versions() -> dict:
    """The installed versions of what a result depends on. The same commit gave the default run's seed 0
    83.50% test on 2026-11-30 and 83.33% on 2026-12-02, with neither the packages nor the CPU recorded then
    (jax was 0.10.2 both times): record both (machine() below)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    """The CPU a result was computed on: oneDNN and XLA pick kernels by instruction set, which moves the
    low bits of every product (model name, cores, and which of AVX-512 / AMX / AVX-VNNI it has)."""
    import platform

    info = {"arch": platform.machine(), "cpu": None, "cores": os.cpu_count(), "isa": []}
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        names = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")]
        flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
        info["cpu"] = names[0] if names else None
        info["isa"] = sorted(f for f in set(flags) if f.startswith(("avx512", "amx", "avx_vnni", "avx2", "fma")))
    return info


def train_rules(config) -> list[tuple[str, str]]:
    rules = [tuple(r) for r in config.train_rules]
    if config.full_finetune:
        rules.append((r".*", "base"))
    return rules


def run_meta(config, base, task, model) -> dict:
    """What every checkpoint records about the run (checkpoint.MUST_MATCH says which keys a resume checks)."""
    return {
        "adapter": config.adapter, "adapter_setup": to_string(
            model.adapters.get(config.adapter_name).methods) if model.adapters.adapters else None,
        "adapter_name": config.adapter_name, "train_rules": [list(r) for r in train_rules(config)],
        "task": task.name, "label_names": list(task.label_names), "seed": config.seed, "model": config.model,
        "base_fingerprint": base.fingerprint, **provenance(), "jax": jax.__version__,
        "config": json.loads(config.to_json()),
    }


@contextlib.contextmanager
def open_log(workdir: Path, primary: bool):
    """log(kind, step, values) into metrics.jsonl and TensorBoard scalars; only process 0 writes to disk."""
    from tensorboardX import SummaryWriter

    tb = SummaryWriter(str(workdir / "tb"), write_to_disk=primary)
    with (workdir / "metrics.jsonl").open("a") if primary else open(os.devnull, "w") as f:
        def log(kind: str, step: int, values: dict):
            f.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
            f.flush()
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    tb.add_scalar(f"{kind}/{k}", v, step)

        try:
            yield log
        finally:
            tb.close()
