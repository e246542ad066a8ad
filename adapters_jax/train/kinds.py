"""Task kinds of the trainer (config.task_kind): what a run attaches, encodes, optimises and evaluates.

    classification  a head on the pooled hidden state; cross-entropy; accuracy (higher is better)
    lm              no head; next-token loss on every token of the task's texts; perplexity over the
                    whole split, token-weighted, padding excluded (lower is better)
    instruct        no head; prompt/response pairs (config.instruct: templates over a classification
                    task's text and label names, or the tokenizer's chat template), the loss on the response
                    tokens only; evaluation by the response loss and perplexity and, when the responses are
                    label-like (at most config.instruct.max_distinct distinct ones), by exact-match accuracy of
                    greedy generation (higher is better)

The loop asks this module and nothing else what differs between kinds; `score`
turns a kind's validation metrics into one higher-is-better number (the best
checkpoint and the reported test metrics follow it).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from adapters_jax.data import lm, tokenize
from adapters_jax.data.batching import eval_batches
from adapters_jax.decoding import generate
from adapters_jax.errors import ConfigError
from adapters_jax.models import heads
from adapters_jax.partition import merge
from adapters_jax.train import step as step_lib

KINDS = ("classification", "lm", "instruct")


def kind_of(config) -> str:
    kind = config.get("task_kind", "classification")
    if kind not in KINDS:
        raise ConfigError(f"task_kind={kind!r}; choose one of {KINDS}")
    if config.task_kwargs.get("response_column") and kind != "instruct":
        raise ConfigError(f"task_kwargs.response_column={config.task_kwargs.response_column!r} is for prompt/response "
                          f"files, which train as task_kind='instruct' (not {kind!r})")
    return kind


def metric(kind: str) -> str:
    """The metric `score` follows: accuracy, or perplexity for lm."""
    return "perplexity" if kind == "lm" else "accuracy"


def score(kind: str, metrics: dict) -> float:
    """Higher is better: validation accuracy, or minus validation perplexity (lm)."""
    v = metrics.get(f"val_{metric(kind)}")
    if v is None:
        return -math.inf
    return -v if kind == "lm" else v


def no_best(kind: str) -> dict:
    return {f"val_{metric(kind)}": None, f"test_{metric(kind)}": None, "step": None}


def head(config, task, kind: str):
    if kind != "classification":
        return None
    return heads.Classification(len(task.label_names), pooling=config.head.pooling,
                                hidden_layers=config.head.hidden_layers, dropout=config.head.dropout)


def loss_name(kind: str) -> str:
    return "classification" if kind == "classification" else "lm"


def batch_keys(kind: str) -> tuple[str, ...]:
    return step_lib.BATCH_KEYS + (() if kind == "classification" else ("loss_mask",))


def batch_spec(kind: str, b: int, length: int) -> dict:
    spec = step_lib.batch_spec(b, length)
    if kind != "classification":
        spec["loss_mask"] = jax.ShapeDtypeStruct((b, length), jnp.int32)
    return spec


def encode(config, task, tokenizer, kind: str) -> dict:
    """split -> encoded examples (tokenize.Encoded for classification, lm.LMEncoded otherwise)."""
    if kind == "classification":
        return tokenize.encode_task(task, tokenizer, config.max_length)
    if kind == "lm":
        return {s: lm.encode_lm(task[s]["text"], tokenizer, config.max_length) for s in task.splits}
    ic = config.instruct
    out = {}
    for s in task.splits:
        prompts, responses = lm.instruct_pairs(task, s, ic.prompt_template, ic.response_template,
                                               list(ic.response_names) or None)
        out[s] = lm.encode_instruct(prompts, responses, tokenizer, config.max_length, chat_template=ic.chat_template)
    return out


def make_eval_step(model, kind: str):
    """eval_step(trainable, frozen, batch) -> sums over the batch (classification: step.make_eval_step)."""
    if kind == "classification":
        return step_lib.make_eval_step(model)

    def eval_step(trainable, frozen, batch):
        count = step_lib.loss_weight(batch, "lm")
        mean = step_lib.batch_loss(model, merge(trainable, frozen), batch, True, None, "lm")
        return {"loss_sum": mean * count, "count": count}

    return eval_step


def evaluate(kind: str, eval_fn, trainable, frozen, enc, config, pad_id, strategy, *, buckets, model=None,
             tokenizer=None) -> dict:
    """A split's metrics, every example counted once (sorted by length: less padding); only the split's
    first config.max_eval_examples examples when that is > 0."""
    limit = min(len(enc.ids), config.get("max_eval_examples", 0) or len(enc.ids))
    order = np.argsort([len(enc.ids[i]) for i in range(limit)], kind="stable")
    ids, labels = [enc.ids[i] for i in order], np.asarray(enc.labels)[order]
    masks = None if kind == "classification" else [enc.loss_masks[i] for i in order]
    totals: dict[str, float] = {}
    for batch in eval_batches(ids, labels, config.eval_batch_size, padding=config.padding, buckets=buckets,
                              max_length=config.max_length, pad_id=pad_id, loss_masks=masks,
                              process_index=jax.process_index(), process_count=jax.process_count()):
        batch = strategy.put_batch({k: batch[k] for k in batch_keys(kind)})
        for k, v in strategy.scalars(eval_fn(batch["input_ids"].shape[-1])(trainable, frozen, batch)).items():
            totals[k] = totals.get(k, 0.0) + v
    n = max(totals["count"], 1.0)
    out = {"loss": totals["loss_sum"] / n, "count": int(totals["count"])}
    if kind == "classification":
        out["accuracy"] = totals["correct"] / n
        return out
    out["perplexity"] = math.exp(min(out["loss"], 700.0))
    if kind == "instruct" and len(set(enc.responses)) <= config.instruct.max_distinct:
        out["accuracy"] = exact_match(model, strategy.to_global(merge(trainable, frozen)), enc, tokenizer,
                                      config.eval_batch_size, limit=limit)
    return out


def exact_match(model, params, enc, tokenizer, batch_size: int, limit: int | None = None) -> float:
    """Share of examples (the first `limit`) whose greedy completion (to the end-of-sequence token) is the
    reference response."""
    prompts, responses = enc.prompts[:limit], enc.responses[:limit]
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in set(responses)) + 1
    # by prompt length: a batch pads to the power-of-two bucket of its longest prompt, so batches of
    # similar lengths prefill about half the padded tokens of batches in data order (the count is the same)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    hits = 0
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        outs = generate(model, params, [list(prompts[j]) for j in rows], longest, tokenizer=tokenizer)
        hits += sum(o.text.strip() == responses[j].strip() for o, j in zip(outs, rows))
    return hits / max(len(prompts), 1)
