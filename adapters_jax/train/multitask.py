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
from adapters_jax.adapters import add_adapters, save_adapter
from adapters_jax.data import tokenize
from adapters_jax.data.batching import eval_batches
from adapters_jax.errors import ConfigError
from adapters_jax.models import heads, load
from adapters_jax.partition import labels as make_labels, merge, param_report, split
from adapters_jax.train import loop
from adapters_jax.train import optimizer as opt_lib
from adapters_jax.train import parallel
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


def save_task(model, params, slot: int, num_labels: int, out: Path) -> None:
    """Slot `slot` as a saved adapter (save_adapter's format) plus its head (head.safetensors)."""
    from safetensors.numpy import save_file

    m, p = bank.unstack(model, params, slot, "adapter")
    path = save_adapter(out, m, p, "adapter")
    flat = paths.flat(p)
    head = {}
    for k, v in flat.items():
        if k.startswith("head/slots/"):
            leaf = np.asarray(v[slot])
            if k.endswith("out_proj/kernel"):
                leaf = leaf[:, :num_labels]
            elif k.endswith("out_proj/bias"):
                leaf = leaf[:num_labels]
            head["head/" + k[len("head/slots/"):]] = leaf
    save_file(head, str(path / "head.safetensors"))


def run(config, workdir: str | Path) -> dict:
    """Train config.tasks at once (one bank slot and head each); returns the report (also report.json)."""
    t0 = time.time()
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
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t_train = time.time()
    for s in range(total):
        state, metrics = step_fn(state, frozen, data.batch(s))
        if (s + 1) % config.log_every == 0 or s + 1 == total:
            print(f"step {s + 1}/{total}: loss {float(metrics['loss']):.4f}", flush=True)
    jax.block_until_ready(state)
    train_s = time.time() - t_train
    report = {"tasks": list(config.tasks), "adapter": config.adapter, "model": config.model, "seed": config.seed,
              "steps": total, "sampling": mt.sampling, "probs": probs.tolist(), "train_s": train_s,
              "params": str(param_report(params, labels))}
    full = merge(state["trainable"], frozen)
    eval_fn = jax.jit(step_lib.make_eval_step(model))
    for i, (t, e) in enumerate(zip(tasks, encs)):
        for split_name in ("validation", "test"):
            if split_name in e:
                r = evaluate(eval_fn, state["trainable"], frozen, e[split_name], i, config, pad_id)
                report[f"{t.name}/{split_name}_accuracy"] = r["accuracy"]
        save_task(model, full, i, t.num_labels, workdir / "adapters" / t.name)
    report["wall_s"] = time.time() - t0
    (workdir / "report.json").write_text(json.dumps(report, indent=1))
    return report
