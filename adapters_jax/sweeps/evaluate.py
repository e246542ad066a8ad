"""Evaluations of a trained run under variations of its trained params, for a config's `evaluate` hook.

    variants = {"none": lambda t: t, "layers 0-1": lambda t: remove(t, [0, 1])}
    metrics = evaluate_variants(config, run_dir, variants)     # name -> {"test_accuracy": ...}

The run's latest checkpoint is restored once, the split is encoded once and each length bucket compiles
once (the params are an argument of the compiled step), so a variant costs one pass over the split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax

from adapters_jax.partition import split
from adapters_jax.train import kinds, loop, parallel


def evaluate_variants(config, run_dir: str | Path, variants: dict[str, Callable], splits=("test",)) -> dict:
    """name -> {f"{split}_{metric}": value} for each variant (a function of the trained params' pytree)."""
    base, task, model, params, labels = loop.build(config)
    trained = loop.final_trainable(run_dir, config, params, labels)
    _, frozen = split(params, labels)
    kind, strategy = kinds.kind_of(config), parallel.Single()
    tokenizer = base.tokenizer
    pad_id = loop.pad_token_id(config, tokenizer)
    enc = kinds.encode(config, task, tokenizer, kind)
    eval_jit = jax.jit(kinds.make_eval_step(model, kind))
    frozen = jax.device_put(frozen)
    out = {}
    for name, fn in variants.items():
        t = fn(trained)
        out[name] = {}
        for s in splits:
            m = kinds.evaluate(kind, lambda n: eval_jit, t, frozen, enc[s], config, pad_id, strategy,
                               buckets=loop._lengths(config), model=model, tokenizer=tokenizer)
            out[name].update({f"{s}_{k}": v for k, v in m.items() if k != "count"})
    return out
