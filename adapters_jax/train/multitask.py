"""Multi-task training through the adapter bank: K task adapters, each with its own head, trained at once.

    python scripts/train.py --config experiments/configs/multitask.py

Each task gets a bank slot (adapters_jax/bank.py) and a head of its own label count
(heads.SlotClassification); a batch mixes examples of several tasks (each row's
`adapter_ids` names its task's slot), drawn with probabilities proportional to the
tasks' train sizes, their 1/T power ("temperature", T = config.multitask.temperature)
or uniform. Per task and per adapter, the run is the same as training that adapter
alone on the same examples:
- the loss is the sum over tasks of each task's mean loss in the batch, so slot k's
  gradient is its sub-batch's mean gradient;
- the optimizer runs once per slot (`jax.vmap` over the slot axis): its own clipping
  norm, moments and step count; a slot that no example of the batch used is left
  exactly as it was (params and optimizer state);
- at the end each task's adapter is saved with `save_adapter` (its own config, padding
  cut off) and its head beside it (head.safetensors, the Classification layout).
tests/test_multitask.py checks the equality against single-task training.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adapters_jax import bank, paths
from adapters_jax import checkpoint as ckpt_lib
from adapters_jax.adapters import add_adapters, save_adapter
from adapters_jax.data import tokenize
from adapters_jax.data.batching import eval_batches
from adapters_jax.errors import ConfigError, DataError, TrainingError
from adapters_jax.models import heads, load
from adapters_jax.configs import to_string
from adapters_jax.partition import labels as make_labels, merge, param_report, split
from adapters_jax.train import loop
from adapters_jax.train import optimizer as opt_lib
from adapters_jax.train import parallel, records
from adapters_jax.train import step as step_lib

SAMPLING = ("proportional", "temperature", "uniform")


def task_probs(sizes: list[int], sampling: str, temperature: float = 2.0) -> np.ndarray:
    if sampling not in SAMPLING:
        raise ConfigError(f"multitask.sampling={sampling!r}; choose one of {SAMPLING}")
    n = np.asarray(sizes, np.float64)
    w = n if sampling == "proportional" else n ** (1.0 / temperature) if sampling == "temperature" else np.ones_like(n)
    return w / w.sum()


def per_task_loss(logits_BxC, labels_B, example_mask_B, ids_B, k: int):
    """(sum over tasks of each task's mean cross-entropy in the batch, examples per task [K])."""
    nll_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC.astype(jnp.float32), labels_B)
    w_B = example_mask_B.astype(jnp.float32)
    count_K = jax.ops.segment_sum(w_B, ids_B, k)
    return (nll_B * w_B / jnp.maximum(count_K[ids_B], 1.0)).sum(), count_K


def _keep_unused(new, old, used_K):
    """Each [K, ...] leaf: the new value where the slot was used, the old one where it was not."""
    return jax.tree.map(lambda n, o: jnp.where(used_K.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old)


def init_state(trainable, tx, seed: int) -> dict:
    """One optimizer state per slot: tx.init vmapped over the leading slot axis of every trainable leaf."""
    return {"step": jnp.zeros((), jnp.int32), "trainable": trainable, "opt_state": jax.vmap(tx.init)(trainable),
            "rng": jax.random.PRNGKey(seed)}


def make_train_step(model, tx, k: int, deterministic: bool = False):
    """train_step(state, frozen, batch) -> (state, metrics); batch carries adapter_ids [B] (0..K-1)."""

    def train_step(state, frozen, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])

        def loss_fn(trainable):
            logits = step_lib.forward(model, merge(trainable, frozen), batch, deterministic, rng)
            return per_task_loss(logits, batch["labels"], batch["example_mask"], batch["adapter_ids"], k)

        (loss, count_K), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["trainable"])
        updates, opt_state = jax.vmap(tx.update)(grads, state["opt_state"], state["trainable"])
        used_K = count_K > 0
        trainable = _keep_unused(optax.apply_updates(state["trainable"], updates), state["trainable"], used_K)
        opt_state = _keep_unused(opt_state, state["opt_state"], used_K)
        new = {"step": state["step"] + 1, "trainable": trainable, "opt_state": opt_state, "rng": state["rng"]}
        return new, {"loss": loss, "examples_per_task": count_K}

    return train_step


@dataclasses.dataclass
class Mixed:
    """Mixed batches: each row's task drawn with `probs`, each task's rows from its own shuffled stream.

    Step s draws its task counts from default_rng([seed, s]); task k's stream is a fresh
    permutation of its examples per pass (default_rng([seed, 1000 + k, pass])). Rows are
    grouped by task and padded to the shortest bucket that holds the longest row.
    """

    encs: list  # tokenize.Encoded per task
    batch_size: int
    probs: np.ndarray
    buckets: list[int]
    pad_id: int
    seed: int = 0

    def __post_init__(self):
        self._pos = [0] * len(self.encs)
        self._pass = [0] * len(self.encs)
        self._perm = [self._permutation(k) for k in range(len(self.encs))]

    def _permutation(self, k):
        return np.random.default_rng([self.seed, 1000 + k, self._pass[k]]).permutation(len(self.encs[k]))

    def _take(self, k: int, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self._pos[k] == len(self._perm[k]):
                self._pass[k] += 1
                self._perm[k], self._pos[k] = self._permutation(k), 0
            take = min(n - len(out), len(self._perm[k]) - self._pos[k])
            out += self._perm[k][self._pos[k]:self._pos[k] + take].tolist()
            self._pos[k] += take
        return out

    def state(self, step: int) -> dict:
        """The position before `step`'s batch (JSON): each task stream's pass and offset. Step s's batch is
        a function of (seed, s, this position), so a restored Mixed continues with the same batches."""
        return {"seed": self.seed, "step": step, "pos": list(self._pos), "pass": list(self._pass)}

    def restore(self, state: dict, step: int) -> None:
        """Continue from `state` (Mixed.state) before batch `step` (refused: another seed, step or task count)."""
        k = len(self.encs)
        if state.get("seed") != self.seed or state.get("step") != step or len(state.get("pos", ())) != k \
                or len(state.get("pass", ())) != k:
            raise DataError(f"multi-task data position {state!r} does not fit this run (seed {self.seed}, "
                            f"step {step}, {k} tasks)")
        self._pass, self._pos = [int(x) for x in state["pass"]], [int(x) for x in state["pos"]]
        self._perm = [self._permutation(t) for t in range(k)]
        if any(not 0 <= p <= len(perm) for p, perm in zip(self._pos, self._perm)):
            raise DataError(f"multi-task data position {state!r}: an offset lies outside its task's examples")

    def batch(self, step: int) -> dict:
        counts = np.random.default_rng([self.seed, step]).multinomial(self.batch_size, self.probs)
        rows = [(k, i) for k, n in enumerate(counts) for i in self._take(k, int(n))]
        seqs = [self.encs[k].ids[i] for k, i in rows]
        longest = max(len(s) for s in seqs)
        length = next((b for b in self.buckets if b >= longest), self.buckets[-1])
        ids = np.full((len(rows), length), self.pad_id, np.int32)
        mask = np.zeros((len(rows), length), np.int32)
        for r, s in enumerate(seqs):
            ids[r, :min(len(s), length)] = s[:length]
            mask[r, :min(len(s), length)] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": np.asarray([self.encs[k].labels[i] for k, i in rows], np.int32),
                "example_mask": np.ones(len(rows), bool), "index": np.asarray([i for _, i in rows], np.int32),
                "adapter_ids": np.asarray([k for k, _ in rows], np.int32)}


def build(config):
    """(base, tasks, model, params, labels): one bank slot and one head per task, the members dropped."""
    names = list(config.tasks)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"tasks={names}: a multi-task run needs two or more distinct tasks")
    base = load(config.model, **dict(config.get("model_overrides", {})))
    tasks = [loop.load_task(config, t) for t in names]
    slot_names = [f"task_{i}" for i in range(len(names))]
    model, params = base.model, base.params
    for i, s in enumerate(slot_names):
        model, params = add_adapters((model, params), config.adapter, name=s, rng=jax.random.PRNGKey(config.seed + i))
    head = heads.SlotClassification(tuple(t.num_labels for t in tasks), pooling=config.head.pooling,
                                    hidden_layers=config.head.hidden_layers, dropout=config.head.dropout)
    model, params = bank.build((model, params), slot_names, name="tasks", head=head, keep_members=False,
                               rng=jax.random.PRNGKey(config.seed))
    model = model.clone(adapters=model.adapters.activate())
    return base, tasks, model, params, make_labels(model, params)


def evaluate(eval_fn, trainable, frozen, enc, slot: int, config, pad_id) -> dict:
    """Accuracy and loss of one task's split through its slot; eval_fn: jit(step.make_eval_step(model))."""
    totals = {"correct": 0.0, "count": 0.0, "loss_sum": 0.0}
    n = min(len(enc), config.get("max_eval_examples", 0) or len(enc))
    order = np.argsort(enc.lengths[:n], kind="stable")
    for b in eval_batches([enc.ids[i] for i in order], np.asarray(enc.labels)[order], config.eval_batch_size,
                          padding="max", max_length=config.max_length, pad_id=pad_id):
        batch = {k: b[k] for k in step_lib.BATCH_KEYS}
        batch["adapter_ids"] = np.full(len(b["labels"]), slot, np.int32)
        for k, v in eval_fn(trainable, frozen, batch).items():
            totals[k] += float(v)
    n = max(totals["count"], 1.0)
    return {"accuracy": totals["correct"] / n, "loss": totals["loss_sum"] / n}


def slot_state(model, state, frozen, slot: int, num_labels: int, config, name: str = "default"):
    """Bank slot `slot` of a multi-task train state as a single-adapter run's (model, params, train state).

    The model holds adapter `name` (the member's own config, padding cut off) and a
    `heads.Classification(num_labels)` head configured as config.head; the train state has
    step_lib.init_state's layout for that model and config.optimizer: the slot's params, its
    optimizer moments and count (slot k of every [K, ...] leaf, cut to the single shape), its
    count as `step`, and the run's rng. Continuing from it alone steps the adapter as it would
    have stepped inside the bank (tests/test_multitask.py).
    """
    bank_name = model.adapters.bank.name
    full = merge(state["trainable"], frozen)
    m, p = bank.unstack(model, full, slot, name)
    flat = {k: v for k, v in paths.flat(p).items() if paths.adapter_of(k) != bank_name and not k.startswith("head/")}
    for k, v in paths.flat(full).items():
        if k.startswith("head/slots/"):
            cut = k.endswith("out_proj/kernel") or k.endswith("out_proj/bias")
            flat["head/" + k[len("head/slots/"):]] = jnp.asarray(_cut(v[slot], v.shape[1:-1] + (num_labels,) if cut
                                                                      else v.shape[1:]))
    head = heads.Classification(num_labels, pooling=config.head.pooling, hidden_layers=config.head.hidden_layers,
                                dropout=config.head.dropout)
    m = m.clone(adapters=dataclasses.replace(m.adapters, bank=None).activate(name), head=head)
    params = paths.unflat(flat)
    labs = make_labels(m, params)
    trainable = split(params, labs)[0]
    tx = opt_lib.from_config(config.optimizer, split(labs, labs)[0], 1)  # the schedule does not shape the state
    single = step_lib.init_state(trainable, tx, config.seed)
    banked_leaves = {_single_path(kp, bank_name, name): v
                     for kp, v in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]}
    leaves, treedef = jax.tree_util.tree_flatten_with_path(single["opt_state"])
    opt = [_cut(np.asarray(banked_leaves[jax.tree_util.keystr(kp)])[slot], np.shape(v)) for kp, v in leaves]
    counts = [c for (kp, _), c in zip(leaves, opt) if jax.tree_util.keystr(kp).endswith(".count")]
    single.update(opt_state=jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in opt]),
                  step=jnp.asarray(counts[0] if counts else state["step"], jnp.int32), rng=state["rng"])
    return m, params, single


def _cut(x, shape) -> np.ndarray:
    """The leading `shape` corner of a padded slot leaf (padding sits at the end of every axis)."""
    return np.asarray(x)[tuple(slice(0, n) for n in shape)]


def _single_path(keypath, bank_name: str, name: str) -> str:
    """A bank state leaf's key path as the single adapter's: the bank's name -> the adapter's, head/slots -> head."""
    out, prev = [], None
    for k in keypath:
        key = getattr(k, "key", None)
        if key == "slots" and prev == "head":
            continue
        out.append(jax.tree_util.DictKey(name) if key == bank_name else k)
        prev = key
    return jax.tree_util.keystr(tuple(out))


def save_task(model, state, frozen, slot: int, task, config, base, out: Path) -> None:
    """Slot `slot` as a saved adapter (save_adapter's format) plus its head (head.safetensors) and, under
    out/checkpoints/<its step count>/, its train state as train/loop.py checkpoints it: `scripts/train.py
    --config <the task alone> --workdir out --resume` continues that adapter alone (data from the start of
    its own stream)."""
    from safetensors.numpy import save_file

    m, p, single = slot_state(model, state, frozen, slot, task.num_labels, config, name="adapter")
    path = save_adapter(out, m, p, "adapter")
    head = {k: np.asarray(v) for k, v in paths.flat(p).items() if k.startswith("head/")}
    save_file(head, str(path / "head.safetensors"))
    one = config.copy_and_resolve_references()
    one.tasks, one.task = [], task.name
    if config.adapter_name != "adapter":  # the run directory's state names the adapter as train/loop.py does
        m, _, single = slot_state(model, state, frozen, slot, task.num_labels, config, name=config.adapter_name)
    meta = records.run_meta(one, base, task, m)
    c = ckpt_lib.Checkpointer(out, meta, keep=1, best_metric=None, async_save=False)
    try:
        c.save(single, {"seed": config.seed, "epoch": 0, "step": 0})
    finally:
        c.close()


def run_meta(config, base, tasks, model) -> dict:
    """What each multi-task checkpoint records (checkpoint.MUST_MATCH: adapter, adapter_setup, task, base)."""
    return {"adapter": config.adapter, "adapter_setup": to_string(model.adapters.bank.methods),
            "task": [t.name for t in tasks], "train_rules": [list(r) for r in records.train_rules(config)],
            "base_fingerprint": base.fingerprint, "seed": config.seed, "model": config.model,
            "jax": jax.__version__, "config": json.loads(config.to_json())}


def run(config, workdir: str | Path, resume: bool = False) -> dict:
    """Train config.tasks at once (one bank slot and head each); returns the report (also report.json).

    Checkpoints (WORKDIR/checkpoints, adapters_jax/checkpoint.py: Orbax, never a half one) every
    config.checkpoint.every steps and at the end, keeping config.checkpoint.keep; `resume` continues
    the latest one bitwise (the state and the sampler's position)."""
    t0 = time.time()
    workdir = Path(workdir)
    done = ckpt_lib.finished_steps(workdir)
    if done and not resume:  # refused before anything loads
        raise TrainingError(f"{workdir / 'checkpoints'} already holds checkpoints (latest step {done[-1]}); "
                            "pass --resume to continue, or choose another --workdir")
    base, tasks, model, params, labels = build(config)
    trainable, frozen = split(params, labels)
    slot_labels = split(labels, labels)[0]  # one slot's labels: the same tree, the optimizer is vmapped over K
    k = len(tasks)
    bad = [p for p, v in paths.flat(trainable).items() if v.shape[:1] != (k,)]
    if bad:
        raise ConfigError(f"multi-task training needs every trainable leaf in the bank or its heads; {bad[:3]} are not")
    tokenizer = base.tokenizer
    encs = [tokenize.encode_task(t, tokenizer, config.max_length) for t in tasks]
    sizes = [len(e["train"]) for e in encs]
    mt = config.multitask
    probs = task_probs(sizes, mt.sampling, mt.temperature)
    total = config.max_steps or int(config.epochs * sum(sizes) // config.batch_size)
    tx = opt_lib.from_config(config.optimizer, slot_labels, total)
    single = parallel.Single()  # state placed like the frozen base: the donated outputs then match the first inputs
    state, frozen = jax.device_put(init_state(trainable, tx, config.seed), single.sharding), single.put_frozen(frozen)
    step_fn = jax.jit(make_train_step(model, tx, k), donate_argnums=(0,))
    pad_id = loop.pad_token_id(config, tokenizer)
    lengths = sorted({min(b, config.max_length) for b in config.buckets} | {config.max_length})
    data = Mixed([e["train"] for e in encs], config.batch_size, probs, lengths, pad_id, config.seed)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_lib.Checkpointer(workdir, run_meta(config, base, tasks, model), keep=config.checkpoint.keep,
                                 best_metric=None, async_save=config.checkpoint.async_save)
    try:
        if resume:
            state, position, _ = ckpt.restore(single.restore_target(state))
            data.restore(position, int(state["step"]))
            print(f"resumed from step {int(state['step'])}", flush=True)
        t_train, step = time.time(), int(state["step"])
        stop = loop.StopFlag()  # SIGTERM (a preemption): save at the next step boundary and exit cleanly
        while step < total:
            state, metrics = step_fn(state, frozen, data.batch(step))
            step += 1
            if step % config.log_every == 0 or step == total:
                print(f"step {step}/{total}: loss {float(metrics['loss']):.4f}", flush=True)
            if step == total or stop.requested or (config.checkpoint.every and step % config.checkpoint.every == 0):
                ckpt.save(state, data.state(step))
            if stop.requested:
                ckpt.wait()
                print(f"SIGTERM: saved step {step}, exiting", flush=True)
                break
        stop.restore()
        ckpt.wait()
        train_s = time.time() - t_train
    finally:
        ckpt.close()
    report = {"tasks": list(config.tasks), "adapter": config.adapter, "model": config.model, "seed": config.seed,
              "steps": step, "completed": step == total, "sampling": mt.sampling, "probs": probs.tolist(),
              "train_s": train_s, "params": str(param_report(params, labels))}
    if step < total:  # stopped early: the checkpoint is the result; --resume finishes the run
        report["wall_s"] = time.time() - t0
        ckpt_lib.write_json(workdir / "report.json", report)
        return report
    eval_fn = jax.jit(step_lib.make_eval_step(model))
    for i, (t, e) in enumerate(zip(tasks, encs)):
        for split_name in ("validation", "test"):
            if split_name in e:
                r = evaluate(eval_fn, state["trainable"], frozen, e[split_name], i, config, pad_id)
                report[f"{t.name}/{split_name}_accuracy"] = r["accuracy"]
        save_task(model, state, frozen, i, t, config, base, workdir / "adapters" / t.name)
    report["wall_s"] = time.time() - t0
    ckpt_lib.write_json(workdir / "report.json", report)
    return report
