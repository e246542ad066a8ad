"""The training loop behind scripts/train.py: one config in, a trained adapter and report.json out.

    report = loop.run(config, workdir, resume=False)

`run` is the story: prepare (model, data, optimizer, state, checkpointer), resume
or refuse an occupied workdir, compile every shape ahead of time, the step loop
(evaluating and saving on schedule), the report. The compiled step sees one
shape per length bucket, each compiled before the first step (timed as
compile_s), so the steady state never recompiles and train_s is pure stepping.

Per run directory: checkpoints/ (Orbax, adapter-only, each with the best
evaluation so far), best.json, metrics.jsonl, tb/ (TensorBoard events),
report.json (which also records the data split rule and the XLA flags); train/records.py writes the
metadata and the metrics log.

config.strategy picks where the state lives (train/parallel.py): "single"
(default), "pmap" or "mesh". On several hosts each process runs this same loop
on its slice of every global batch; process 0 writes the logs and the report,
and a preemption stops every host at the same step, which they all save.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from adapters_jax import checkpoint as ckpt_lib
from adapters_jax import xla_flags
from adapters_jax.adapters import adapter_drop, add_adapters
from adapters_jax.data import tasks
from adapters_jax.data.batching import Batches
from adapters_jax.models import load, release_host_memory
from adapters_jax.partition import labels as make_labels, param_report, split
from adapters_jax.train import kinds
from adapters_jax.train import optimizer as opt_lib
from adapters_jax.train import parallel
from adapters_jax.train.records import machine, open_log, run_meta, train_rules, versions
from adapters_jax.train.step import init_state, make_train_step
from adapters_jax.errors import ConfigError, TrainingError  # noqa: F401  (TrainingError re-exported)


def build(config):
    """(base, task, model, params, labels) for a config: the parts every entry point shares."""
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if config.dtype not in dtypes:
        raise ConfigError(f"dtype {config.dtype!r}; choose one of {sorted(dtypes)}")
    dtype = dtypes[config.dtype]
    kind = kinds.kind_of(config)  # checks the kind and its task settings before anything loads
    base = load(config.model, dtype=dtype, **dict(config.get("model_overrides", {})))
    task = load_task(config, config.task)
    head = kinds.head(config, task, kind)
    spec = config.adapter if config.adapter not in ("", "none") else None
    model, params = add_adapters(base, spec, name=config.adapter_name, head=head, rng=jax.random.PRNGKey(config.seed))
    drop = config.get("adapter_drop", {})
    if drop.get("layers", 0) and not drop.get("random"):  # fixed AdapterDrop: training and evaluation skip them
        model = adapter_drop(model, drop["layers"])
    labels = make_labels(model, params, extra=train_rules(config))
    return base, task, model, params, labels


def load_task(config, name: str) -> tasks.Task:
    """A built-in task by name, or a local file / hub set read with config.task_kwargs."""
    if name in tasks.names():
        return tasks.load(name)
    return tasks.load(name, **{k: v for k, v in config.task_kwargs.items() if v is not None})


def _lengths(config) -> list[int]:
    if config.padding == "buckets":
        return sorted({min(b, config.max_length) for b in config.buckets} | {config.max_length})
    return [config.max_length]


class StopFlag:
    """SIGTERM sets a flag; the loop saves at the next step boundary and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._old)


@dataclasses.dataclass
class Run:
    """What one run is built from: prepared once, read by every later stage."""

    config: Any
    kind: str  # kinds.KINDS: classification | lm | instruct
    workdir: Path
    primary: bool  # process 0 writes the logs, best.json and the report
    task: tasks.Task
    model: Any
    params: Any  # the parameter report (trainable / total)
    strategy: Any
    optimizer: Any
    frozen: Any
    enc: dict  # split -> tokenized examples
    pad_id: int
    tokenizer: Any
    batches: Batches
    total_steps: int
    eval_every: int
    checkpointer: ckpt_lib.Checkpointer


@dataclasses.dataclass
class Progress:
    """What the step loop advances: the step, the best evaluation so far and the time and token counters."""

    step: int
    best: dict
    train_s: float = 0.0
    eval_s: float = 0.0
    real_tokens: int = 0
    padded_tokens: int = 0


Compiled = collections.namedtuple("Compiled", "train eval seconds")  # length -> compiled step; compile time


def run(config, workdir: str | Path, resume: bool = False) -> dict:
    """Train as `config` says in `workdir` (continuing its latest checkpoint if `resume`); returns the report."""
    t_start = time.time()
    workdir = Path(workdir)
    r, state = prepare(config, workdir)  # bad input fails here, before the run directory exists
    try:
        state, best = resume_or_refuse(r, state, resume)
        fns = compile_steps(r, state)
        with open_log(workdir, r.primary) as log:
            state, progress = train(r, fns, state, best, log)
        report = make_report(r, fns, progress, wall_s=time.time() - t_start)
        if r.primary:
            ckpt_lib.write_json(workdir / "report.json", report)
    finally:
        r.checkpointer.close()  # waits for a save still in flight
    return report


def prepare(config, workdir: Path) -> tuple[Run, dict]:
    """The run's parts and its initial train state: model, data, optimizer, strategy, checkpointer."""
    base, task, model, params, labels = build(config)
    strategy = parallel.make(config)
    check_batch_sizes(config, strategy)
    report0 = param_report(params, labels)
    print(f"{config.model} + {config.adapter or 'no adapter'}: {report0}", flush=True)
    trainable, frozen = split(params, labels)
    trainable_labels, _ = split(labels, labels)
    del params
    if (tokenizer := base.tokenizer) is None:
        raise ConfigError(f"{config.model} has no tokenizer (tokenizer.json, vocab.txt or tokenizer_config.json)")
    pad_id = pad_token_id(config, tokenizer)
    kind = kinds.kind_of(config)
    enc = kinds.encode(config, task, tokenizer, kind)
    batches = Batches(enc["train"].ids, enc["train"].labels, config.batch_size, padding=config.padding,
                      buckets=_lengths(config), max_length=config.max_length, pad_id=pad_id,
                      seed=config.seed, shuffle=True, drop_last=True, group_by_length=config.group_by_length,
                      process_index=jax.process_index(), process_count=jax.process_count(),
                      loss_masks=getattr(enc["train"], "loss_masks", None))
    steps_per_epoch = len(enc["train"].labels) // config.batch_size
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    optimizer = opt_lib.from_config(config.optimizer, trainable_labels, total_steps)
    state = strategy.init_state(trainable, optimizer, config.seed)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir: {workdir.resolve()}", flush=True)
    checkpointer = ckpt_lib.Checkpointer(workdir, run_meta(config, base, task, model), keep=config.checkpoint.keep,
                                         best_metric="val_score" if config.checkpoint.keep_best else None,
                                         async_save=config.checkpoint.async_save)
    r = Run(config=config, kind=kind, workdir=workdir, primary=jax.process_index() == 0, task=task, model=model,
            params=report0, strategy=strategy, optimizer=optimizer, frozen=strategy.put_frozen(frozen), enc=enc,
            pad_id=pad_id, tokenizer=tokenizer, batches=batches, total_steps=total_steps,
            eval_every=config.eval_every or steps_per_epoch, checkpointer=checkpointer)
    return r, state


def pad_token_id(config, tokenizer) -> int:
    """The id that pads batches: config.pad_token if set, else the tokenizer's pad token (none: an error)."""
    name = config.get("pad_token", "")
    if name:
        tid = tokenizer.convert_tokens_to_ids(name)
        if tid is None or (tid == tokenizer.unk_token_id and name != tokenizer.unk_token):
            raise ConfigError(f"pad_token={name!r} is not a token of {config.model}'s vocabulary")
        return int(tid)
    if tokenizer.pad_token_id is None:
        eos = getattr(tokenizer, "eos_token", None)
        raise ConfigError(f"{config.model}'s tokenizer has no pad token; set config.pad_token to one of its tokens"
                          + (f" (its end-of-sequence token {eos!r} is the usual choice for a causal LM: "
                             f"--config.pad_token='{eos}')" if eos else ""))
    return int(tokenizer.pad_token_id)


def check_batch_sizes(config, strategy) -> None:
    """Each process's slice of a batch splits evenly over its devices."""
    for what, b in (("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size)):
        if b % (jax.process_count() * strategy.batch_divisor):
            raise TrainingError(f"{what}={b} does not split over {jax.process_count()} process(es) x "
                                f"{strategy.batch_divisor} batch shard(s) per process (strategy {strategy.name}); "
                                "choose a multiple")


def resume_or_refuse(r: Run, state: dict, resume: bool) -> tuple[dict, dict]:
    """(state, best so far): the latest checkpoint's if `resume`, else the fresh state, refusing a used workdir."""
    if not resume:
        if (latest := r.checkpointer.latest_step()) is not None:
            raise TrainingError(f"{r.checkpointer.dir} already holds checkpoints (latest step {latest}); "
                                "pass --resume to continue, or choose another --workdir")
        return state, kinds.no_best(r.kind)
    restored, position, _ = r.checkpointer.restore(r.strategy.restore_target(state))
    step = int(restored["step"])
    r.batches.restore(position)
    print(f"resumed from step {step}", flush=True)
    return r.strategy.from_global(restored), r.checkpointer.saved_best(step) or kinds.no_best(r.kind)


def compile_steps(r: Run, state: dict) -> Compiled:
    """Every train and eval shape (one per length bucket), compiled ahead of time: stepping never recompiles."""
    t0 = time.time()
    b_train, b_eval = (b // jax.process_count() for b in (r.config.batch_size, r.config.eval_batch_size))
    spec = lambda b, n: r.strategy.batch_spec(kinds.batch_spec(r.kind, b, n))  # noqa: E731
    drop = r.config.get("adapter_drop", {})
    train_jit = r.strategy.jit_train(make_train_step(r.model, r.optimizer, task=kinds.loss_name(r.kind),
                                                     axis_name=r.strategy.axis_name,
                                                     drop_layers=drop.get("layers", 0) if drop.get("random") else 0))
    eval_jit = r.strategy.jit_eval(kinds.make_eval_step(r.model, r.kind))
    lengths = _lengths(r.config)
    train_fns = {n: train_jit.lower(state, r.frozen, spec(b_train, n)).compile() for n in lengths}
    eval_fns = {n: eval_jit.lower(state["trainable"], r.frozen, spec(b_eval, n)).compile() for n in lengths}
    fns = Compiled(train_fns, eval_fns, time.time() - t0)
    print(f"compiled {len(train_fns)} train and {len(eval_fns)} eval shapes in {fns.seconds:.1f}s", flush=True)
    release_host_memory()  # the loader's and compiler's freed heap, before the steps' buffers come on top
    return fns


def train(r: Run, fns: Compiled, state: dict, best: dict, log) -> tuple[dict, Progress]:
    """Step to total_steps (or to a SIGTERM / preemption, saving there), evaluating and saving on schedule."""
    from tqdm import tqdm

    config = r.config
    p = Progress(step=int(r.strategy.scalars({"step": state["step"]})["step"]), best=best)
    # one host: SIGTERM sets a flag; several: JAX's preemption service catches it and picks the step
    stop = StopFlag() if jax.process_count() == 1 else None
    batches = iter(r.batches)
    bar = tqdm(total=r.total_steps, initial=p.step, disable=not (config.progress and r.primary), dynamic_ncols=True)
    try:
        while p.step < r.total_steps:
            state, m = train_step(r, fns, state, next(batches), p)
            if not math.isfinite(m["loss"]):
                raise nan_error(r, m["loss"], p.step)
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{p.real_tokens / max(p.train_s, 1e-9):.0f}")
            if p.step % config.log_every == 0 or p.step == r.total_steps:
                log("train", p.step, {"loss": m["loss"], "grad_norm": m["grad_norm"],
                                      "tokens_per_s": p.real_tokens / max(p.train_s, 1e-9)})
            evaluated = None
            if p.step % r.eval_every == 0 or p.step == r.total_steps:
                evaluated = evaluate_and_track_best(r, fns, state, p, log)
            stopping = parallel.should_stop(p.step, stop is not None and stop.requested)
            if evaluated or stopping or (config.checkpoint.every and p.step % config.checkpoint.every == 0):
                save(r, state, p, evaluated)
            if stopping:
                r.checkpointer.wait()
                print(f"SIGTERM: saved step {p.step}, exiting", flush=True)
                break
        r.checkpointer.wait()
    finally:
        bar.close()
        if stop is not None:
            stop.restore()
    return state, p


def train_step(r: Run, fns: Compiled, state: dict, batch: dict, p: Progress) -> tuple[dict, dict]:
    t0 = time.time()
    state, m = fns.train[batch["input_ids"].shape[1]](state, r.frozen,
                                                      r.strategy.put_batch({k: batch[k] for k in kinds.batch_keys(r.kind)}))
    m = r.strategy.scalars(m)
    p.train_s += time.time() - t0
    p.step += 1
    p.real_tokens += int(batch["attention_mask"].sum())
    p.padded_tokens += batch["input_ids"].size
    return state, m


def nan_error(r: Run, loss: float, step: int) -> TrainingError:
    r.checkpointer.wait()  # a save still in flight holds the last good state: let it land before naming it
    kept = r.checkpointer.latest_step()
    return TrainingError(f"loss is {loss} at step {step}; stopping. The last good checkpoint "
                         f"({'step ' + str(kept) if kept is not None else 'none yet'}) is kept as it was")


def evaluate_and_track_best(r: Run, fns: Compiled, state: dict, p: Progress, log) -> dict:
    """Validation metrics now; a new best (kinds.score) also gets the test split and best.json.
    A task without a validation split (validation="none") gets the test split every time: the best is the last."""
    t0 = time.time()

    def ev(split):
        return kinds.evaluate(r.kind, fns.eval.get, state["trainable"], r.frozen, r.enc[split], r.config, r.pad_id,
                              r.strategy, buckets=_lengths(r.config), model=r.model, tokenizer=r.tokenizer)

    out, key = {}, kinds.metric(r.kind)
    if "validation" in r.enc:
        out = {f"val_{k}": v for k, v in ev("validation").items() if k != "count"}
    if "validation" not in r.enc or kinds.score(r.kind, out) > kinds.score(r.kind, p.best):
        out.update({f"test_{k}": v for k, v in ev("test").items() if k != "count"})
        p.best = {f"val_{key}": out.get(f"val_{key}"), f"test_{key}": out[f"test_{key}"], "step": p.step}
        if r.primary:
            ckpt_lib.write_json(r.workdir / "best.json", p.best)
    p.eval_s += time.time() - t0
    log("eval", p.step, out)
    if r.primary:
        print(f"step {p.step}: " + ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in out.items()), flush=True)
    return out


def save(r: Run, state: dict, p: Progress, evaluated: dict | None) -> None:
    """Checkpoint the state, the data position and the best so far (the best rule keeps the top val_score)."""
    has_val = evaluated and any(k.startswith("val_") for k in evaluated)
    metrics = {"val_score": kinds.score(r.kind, evaluated)} if has_val else None
    r.checkpointer.save(r.strategy.to_global(state), r.batches.state(), metrics=metrics, best=p.best)


def make_report(r: Run, fns: Compiled, p: Progress, wall_s: float) -> dict:
    config, per_s = r.config, max(p.train_s, 1e-9)
    return {
        "task": r.task.name, "adapter": config.adapter or "none", "model": config.model, "seed": config.seed,
        "split_rule": r.task.split_rule, "split_counts": r.task.split_counts,
        "trainable_params": r.params.trainable, "total_params": r.params.total,
        "trainable_share": r.params.share, "task_kind": r.kind, **{k: v for k, v in p.best.items() if k != "step"},
        "best_step": p.best["step"], "steps": p.step, "max_eval_examples": config.get("max_eval_examples", 0),
        "completed": p.step >= r.total_steps, "wall_s": wall_s, "train_s": p.train_s,
        "eval_s": p.eval_s, "compile_s": fns.seconds, "tokens_per_s": p.real_tokens / per_s,
        "padded_tokens_per_s": p.padded_tokens / per_s, "devices": jax.device_count(),
        "platform": jax.devices()[0].platform, "strategy": r.strategy.name, "processes": jax.process_count(),
        "mesh": dict(r.strategy.sizes) if r.strategy.name == "mesh" else None,
        "xla_flags": xla_flags.current(), "versions": versions(), "machine": machine(),
    }


def final_trainable(workdir: str | Path, config, params=None, labels=None) -> dict:
    """The trainable params of a run's latest checkpoint (for tests and analysis); `params` and `labels`
    (from build(config)) when the caller has them already."""
    if params is None:
        _, _, _, params, labels = build(config)
    trainable, _ = split(params, labels)
    trainable_labels, _ = split(labels, labels)
    state = init_state(trainable, opt_lib.from_config(config.optimizer, trainable_labels, 10), config.seed)
    c = ckpt_lib.Checkpointer(workdir, {}, async_save=False)
    try:  # whatever strategy wrote it, it reads onto one device
        restored, _, _ = c.restore(parallel.Single().restore_target(state))
    finally:
        c.close()
    return jax.device_get(restored["trainable"])

