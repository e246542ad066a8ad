"""The training loop behind scripts/train.py: one config in, a trained adapter and report.json out.

    report = loop.run(config, workdir, resume=False)

Per run directory: checkpoints/ (Orbax, adapter-only), metrics.jsonl, tb/
(TensorBoard events), report.json. The compiled step sees one shape per length
bucket; every shape is compiled ahead of time (timed as compile_s), so the
steady state never recompiles and train_s is pure stepping.

config.strategy picks where the state lives (train/parallel.py): "single"
(default), "pmap" or "mesh". On several hosts each process runs this same loop
on its slice of every global batch; process 0 writes the logs and the report,
and a preemption stops every host at the same step, which they all save.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import adapters_jax as aj
from adapters_jax import checkpoint as ckpt_lib
from adapters_jax.data import tasks, tokenize
from adapters_jax.models import release_host_memory
from adapters_jax.data.batching import Batches, eval_batches
from adapters_jax.partition import param_report, split
from adapters_jax.train import optimizer as opt_lib
from adapters_jax.train import parallel
from adapters_jax.train.step import init_state, make_eval_step, make_train_step
from adapters_jax.errors import TrainingError  # noqa: F401  (re-exported)

BATCH_KEYS = ("input_ids", "attention_mask", "labels", "example_mask", "index")


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except Exception:
        return None


def train_rules(config) -> list[tuple[str, str]]:
    rules = [tuple(r) for r in config.train_rules]
    if config.full_finetune:
        rules.append((r".*", "base"))
    return rules


def build(config):
    """(base, task, model, params, labels) for a config: the parts every entry point shares."""
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.dtype]
    base = aj.load(config.model, dtype=dtype, **dict(config.get("model_overrides", {})))
    file_kw = {k: v for k, v in config.task_kwargs.items() if v is not None}  # for local files / hub sets
    task = tasks.load(config.task) if config.task in tasks.names() else tasks.load(config.task, **file_kw)
    head = aj.heads.Classification(len(task.label_names), pooling=config.head.pooling,
                                   hidden_layers=config.head.hidden_layers, dropout=config.head.dropout)
    spec = config.adapter if config.adapter not in ("", "none") else None
    model, params = aj.add_adapters(base, spec, name=config.adapter_name, head=head,
                                    rng=jax.random.PRNGKey(config.seed))
    labels = aj.labels(model, params, extra=train_rules(config))
    return base, task, model, params, labels


def make_optimizer(config, trainable_labels, total_steps: int):
    o = config.optimizer
    return opt_lib.make(trainable_labels, lr=o.lr, total_steps=total_steps, warmup=o.warmup, kind=o.schedule,
                        weight_decay=o.weight_decay, clip_norm=o.clip_norm, group_lr=dict(o.group_lr),
                        sgd=o.name == "sgd")


def _batch_spec(b: int, length: int):
    i32 = jnp.int32
    return {"input_ids": jax.ShapeDtypeStruct((b, length), i32), "attention_mask": jax.ShapeDtypeStruct((b, length), i32),
            "labels": jax.ShapeDtypeStruct((b,), i32), "example_mask": jax.ShapeDtypeStruct((b,), jnp.bool_),
            "index": jax.ShapeDtypeStruct((b,), i32)}


def _lengths(config) -> list[int]:
    if config.padding == "buckets":
        return sorted({min(b, config.max_length) for b in config.buckets} | {config.max_length})
    return [config.max_length]


class _Stop:
    """SIGTERM sets a flag; the loop saves at the next step boundary and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._old)


def evaluate(eval_fn, trainable, frozen, enc, config, pad_id, strategy=None) -> dict:
    """Accuracy and mean loss over a split, each example counted once (sorted by length: less padding)."""
    strategy = strategy or parallel.Single()
    totals = {"correct": 0.0, "count": 0.0, "loss_sum": 0.0}
    order = np.argsort([len(x) for x in enc.ids], kind="stable")
    ids, labels = [enc.ids[i] for i in order], np.asarray(enc.labels)[order]
    for batch in eval_batches(ids, labels, config.eval_batch_size, padding=config.padding,
                              buckets=_lengths(config), max_length=config.max_length, pad_id=pad_id,
                              process_index=jax.process_index(), process_count=jax.process_count()):
        batch = strategy.put_batch({k: batch[k] for k in BATCH_KEYS})
        out = eval_fn(batch["input_ids"].shape[-1])(trainable, frozen, batch)
        for k, v in strategy.scalars(out).items():
            totals[k] += v
    n = max(totals["count"], 1.0)
    return {"accuracy": totals["correct"] / n, "loss": totals["loss_sum"] / n, "count": int(totals["count"])}


def run(config, workdir: str | Path, resume: bool = False) -> dict:
    t_start = time.time()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir: {workdir.resolve()}", flush=True)

    base, task, model, params, labels = build(config)
    strategy = parallel.make(config)
    primary = jax.process_index() == 0
    report0 = param_report(params, labels)
    print(f"{config.model} + {config.adapter or 'no adapter'}: {report0}", flush=True)
    trainable, frozen = split(params, labels)
    trainable_labels, _ = split(labels, labels)
    del params

    tokenizer = base.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    enc = tokenize.encode_task(task, tokenizer, config.max_length)
    train_batches = Batches(enc["train"].ids, enc["train"].labels, config.batch_size, padding=config.padding,
                            buckets=_lengths(config), max_length=config.max_length, pad_id=pad_id,
                            seed=config.seed, shuffle=True, drop_last=True, group_by_length=config.group_by_length,
                            process_index=jax.process_index(), process_count=jax.process_count())
    steps_per_epoch = len(enc["train"].labels) // config.batch_size
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    eval_every = config.eval_every or steps_per_epoch

    b_local, eval_b_local = config.batch_size // jax.process_count(), config.eval_batch_size // jax.process_count()
    for what, b in (("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size)):
        if b % (jax.process_count() * strategy.batch_divisor):
            raise TrainingError(f"{what}={b} does not split over {jax.process_count()} process(es) x "
                                f"{strategy.batch_divisor} batch shard(s) per process (strategy {strategy.name}); "
                                "choose a multiple")
    optimizer = make_optimizer(config, trainable_labels, total_steps)
    state = strategy.init_state(trainable, optimizer, config.seed)
    frozen = strategy.put_frozen(frozen)

    meta = {
        "adapter": config.adapter, "adapter_setup": aj.configs.to_string(
            model.adapters.get(config.adapter_name).methods) if model.adapters.adapters else None,
        "adapter_name": config.adapter_name, "train_rules": [list(r) for r in train_rules(config)],
        "task": task.name, "label_names": list(task.label_names), "seed": config.seed, "model": config.model,
        "base_fingerprint": base.fingerprint, "git_commit": _git_commit(), "adapters_jax": aj.__version__,
        "jax": jax.__version__, "config": json.loads(config.to_json()),
    }
    checkpointer = ckpt_lib.Checkpointer(workdir, meta, keep=config.checkpoint.keep,
                                         best_metric="val_accuracy" if config.checkpoint.keep_best else None,
                                         async_save=config.checkpoint.async_save)
    best = {"val_accuracy": -1.0, "test_accuracy": None, "step": None}
    if resume:
        restored, position, _ = checkpointer.restore(strategy.restore_target(state))
        state = strategy.from_global(restored)
        train_batches.restore(position)
        best_file = workdir / "best.json"
        if best_file.exists():
            best = json.loads(best_file.read_text())
        print(f"resumed from step {int(restored['step'])}", flush=True)
    elif checkpointer.latest_step() is not None:
        raise TrainingError(f"{checkpointer.dir} already holds checkpoints (latest step "
                            f"{checkpointer.latest_step()}); pass --resume to continue, or choose another --workdir")

    # Compile every shape ahead of time: the steady state never recompiles.
    t_compile = time.time()
    train_jit = strategy.jit_train(make_train_step(model, optimizer, axis_name=strategy.axis_name))
    eval_jit = strategy.jit_eval(make_eval_step(model))
    train_fns = {n: train_jit.lower(state, frozen, strategy.batch_spec(_batch_spec(b_local, n))).compile()
                 for n in _lengths(config)}
    eval_fns = {n: eval_jit.lower(state["trainable"], frozen, strategy.batch_spec(_batch_spec(eval_b_local, n)))
                .compile() for n in _lengths(config)}
    compile_s = time.time() - t_compile
    print(f"compiled {len(train_fns)} train and {len(eval_fns)} eval shapes in {compile_s:.1f}s", flush=True)
    release_host_memory()  # the loader's and compiler's freed heap, before the steps' buffers come on top

    metrics_file = (workdir / "metrics.jsonl").open("a") if primary else open(os.devnull, "w")
    from tensorboardX import SummaryWriter

    tb = SummaryWriter(str(workdir / "tb"), write_to_disk=primary)

    def log(kind: str, step: int, values: dict):
        metrics_file.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        metrics_file.flush()
        for k, v in values.items():
            if isinstance(v, (int, float)):
                tb.add_scalar(f"{kind}/{k}", v, step)

    def do_eval(step: int):
        nonlocal best
        val = evaluate(eval_fns.get, state["trainable"], frozen, enc["validation"], config, pad_id, strategy)
        out = {"val_accuracy": val["accuracy"], "val_loss": val["loss"]}
        if val["accuracy"] > best["val_accuracy"]:
            test = evaluate(eval_fns.get, state["trainable"], frozen, enc["test"], config, pad_id, strategy)
            best = {"val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"], "step": step}
            out["test_accuracy"] = test["accuracy"]
            if primary:
                (workdir / "best.json").write_text(json.dumps(best))
        log("eval", step, out)
        if primary:
            print(f"step {step}: val acc {val['accuracy']:.4f}" +
                  (f", test acc {out['test_accuracy']:.4f}" if "test_accuracy" in out else ""), flush=True)
        return out

    from tqdm import tqdm

    # one host: SIGTERM sets a flag; several: JAX's preemption service catches it and picks the step
    stop = _Stop() if jax.process_count() == 1 else None
    step = int(strategy.scalars({"step": state["step"]})["step"])
    train_s = eval_s = 0.0
    real_tokens = padded_tokens = 0
    kill_at = config.fault.sigkill_at_step
    it = iter(train_batches)
    bar = tqdm(total=total_steps, initial=step, disable=not (config.progress and primary), dynamic_ncols=True)
    try:
        while step < total_steps:
            batch = next(it)
            t0 = time.time()
            state, m = train_fns[batch["input_ids"].shape[1]](state, frozen,
                                                              strategy.put_batch({k: batch[k] for k in BATCH_KEYS}))
            m = strategy.scalars(m)
            loss = m["loss"]
            train_s += time.time() - t0
            step += 1
            real_tokens += int(batch["attention_mask"].sum())
            padded_tokens += batch["input_ids"].size
            if not math.isfinite(loss):
                kept = checkpointer.latest_step()
                raise TrainingError(f"loss is {loss} at step {step}; stopping. The last good checkpoint "
                                    f"({'step ' + str(kept) if kept is not None else 'none yet'}) is kept as it was")
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{real_tokens / max(train_s, 1e-9):.0f}")
            if step % config.log_every == 0 or step == total_steps:
                log("train", step, {"loss": loss, "grad_norm": m["grad_norm"],
                                    "tokens_per_s": real_tokens / max(train_s, 1e-9)})
            evaluated = None
            if step % eval_every == 0 or step == total_steps:
                t0 = time.time()
                evaluated = do_eval(step)
                eval_s += time.time() - t0
            stopping = parallel.should_stop(step, stop is not None and stop.requested)
            if evaluated is not None or (config.checkpoint.every and step % config.checkpoint.every == 0) \
                    or stopping:
                checkpointer.save(strategy.to_global(state), train_batches.state(),
                                  metrics={"val_accuracy": evaluated["val_accuracy"]} if evaluated else None)
            if kill_at and step == kill_at:  # fault injection for the crash-safety tests
                if not config.fault.kill_during_save:
                    checkpointer.wait()
                os.kill(os.getpid(), signal.SIGKILL)
            if stopping:
                checkpointer.wait()
                print(f"SIGTERM: saved step {step}, exiting", flush=True)
                break
        checkpointer.wait()
    finally:
        bar.close()
        if stop is not None:
            stop.restore()
        metrics_file.close()
        tb.close()

    report = {
        "task": task.name, "adapter": config.adapter or "none", "model": config.model, "seed": config.seed,
        "trainable_params": report0.trainable, "total_params": report0.total,
        "trainable_share": report0.share, "val_accuracy": best["val_accuracy"],
        "test_accuracy": best["test_accuracy"], "best_step": best["step"], "steps": step,
        "completed": step >= total_steps, "wall_s": time.time() - t_start, "train_s": train_s,
        "eval_s": eval_s, "compile_s": compile_s, "tokens_per_s": real_tokens / max(train_s, 1e-9),
        "padded_tokens_per_s": padded_tokens / max(train_s, 1e-9), "devices": jax.device_count(),
        "platform": jax.devices()[0].platform, "strategy": strategy.name, "processes": jax.process_count(),
        "mesh": dict(strategy.sizes) if strategy.name == "mesh" else None,
    }
    if primary:
        (workdir / "report.json").write_text(json.dumps(report, indent=2))
    checkpointer.close()
    return report


def final_trainable(workdir: str | Path, config) -> dict:
    """The trainable params of a run's latest checkpoint (for tests and analysis)."""
    _, _, _, params, labels = build(config)
    trainable, _ = split(params, labels)
    trainable_labels, _ = split(labels, labels)
    state = init_state(trainable, make_optimizer(config, trainable_labels, 10), config.seed)
    c = ckpt_lib.Checkpointer(workdir, {}, async_save=False)
    try:  # whatever strategy wrote it, it reads onto one device
        restored, _, _ = c.restore(parallel.Single().restore_target(state))
    finally:
        c.close()
    return jax.device_get(restored["trainable"])

