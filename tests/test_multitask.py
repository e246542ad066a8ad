"""Multi-task training through the bank equals training each task's adapter alone on the same examples:
per-task mean losses, one optimizer state per slot (its own clipping, moments and count), unused slots untouched."""
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adapters_jax as aj
from adapters_jax import bank, paths
from adapters_jax.models import heads
from adapters_jax.partition import labels as make_labels, merge, split
from adapters_jax.train import multitask
from adapters_jax.train import optimizer as opt_lib
from adapters_jax.train import step as step_lib

FIX = Path(__file__).parent / "fixtures"
SPEC = "houlsby[bottleneck=4]|lora[r=2]"
NUM_LABELS = (2, 3)


def batches(vocab):
    """Three mixed batches of 6 rows of 7 tokens (right padding): tasks 0 and 1 in the first two, task 0 alone in the
    last (slot 1 unused: it must not move)."""
    g = np.random.default_rng(0)
    out = []
    for ids in ([0, 1, 1, 0, 1, 0], [1, 1, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0]):
        ids = np.asarray(ids, np.int32)
        lengths = g.integers(3, 8, len(ids))
        out.append({"input_ids": g.integers(3, vocab, (len(ids), 7)).astype(np.int32),
                    "attention_mask": (np.arange(7)[None] < lengths[:, None]).astype(np.int32),
                    "labels": np.asarray([g.integers(0, NUM_LABELS[k]) for k in ids], np.int32),
                    "example_mask": np.ones(len(ids), bool), "index": np.arange(len(ids), dtype=np.int32),
                    "adapter_ids": ids})
    return out


def test_multitask_steps_equal_each_adapter_trained_alone(optimizer="sgd"):
    base = aj.load(FIX / "tiny-roberta", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model, params = base.model, base.params
    for i in range(2):
        model, params = aj.add_adapters((model, params), SPEC, name=f"task_{i}", rng=jax.random.PRNGKey(i))
    head = heads.SlotClassification(NUM_LABELS, dropout=0.0)
    model, params = bank.build((model, params), ["task_0", "task_1"], name="tasks", head=head, keep_members=False)
    model = aj.activate(model)
    labels = make_labels(model, params)
    trainable, frozen = split(params, labels)
    kw = dict(lr=0.05, total_steps=3, warmup=0.0, kind="constant", clip_norm=0.5, sgd=optimizer == "sgd")
    tx = opt_lib.make(split(labels, labels)[0], **kw)
    state = multitask.init_state(trainable, tx, 0)
    step = jax.jit(multitask.make_train_step(model, tx, 2))
    data = batches(model.config.vocab_size)
    for b in data:
        state, _ = step(state, frozen, b)
    after = merge(state["trainable"], frozen)
    # SGD: the gradients' last bits (batched rows vs the task's rows alone) pass straight through: 1e-5. (AdamW
    # divides by sqrt(v), which turns last-bit differences of near-zero gradients into visible ones: measured
    # 1.4e-5 on one of 64 entries; its per-slot state is checked exactly in the next test.)
    tol = 1e-5

    for k in range(2):  # adapter k alone: the same initial values, its rows of each batch, a plain train step
        m, p = bank.unstack(model, params, k, "alone")
        setup = dataclasses.replace(m.adapters, bank=None).activate("alone")
        m = m.clone(adapters=setup, head=heads.Classification(NUM_LABELS[k], dropout=0.0))
        flat = {kk: v for kk, v in paths.flat(p).items() if not kk.startswith("head/")}
        for kk, v in paths.flat(params).items():
            if kk.startswith("head/slots/"):
                v = v[k][..., :NUM_LABELS[k]] if kk.endswith("out_proj/kernel") or kk.endswith("out_proj/bias") else v[k]
                flat["head/" + kk[len("head/slots/"):]] = v
        p = paths.unflat(flat)
        lab = make_labels(m, p)
        tr, fr = split(p, lab)
        tx1 = opt_lib.make(split(lab, lab)[0], **kw)
        st = step_lib.init_state(tr, tx1, 0)
        one = jax.jit(step_lib.make_train_step(m, tx1))
        for b in data:  # its rows: the others masked out of the batch (one compiled step for every batch)
            rows = b["adapter_ids"] == k
            if rows.any():
                st, _ = one(st, fr, {**{key: v for key, v in b.items() if key != "adapter_ids"},
                                     "example_mask": rows, "labels": np.where(rows, b["labels"], 0)})
        mine = paths.flat(merge(st["trainable"], fr))
        m2, p2 = bank.unstack(model, after, k, "alone")
        got = paths.flat(p2)
        for kk, v in mine.items():
            if paths.adapter_of(kk) == "alone":
                np.testing.assert_allclose(got[kk], v, atol=tol, rtol=0, err_msg=kk)
        for kk, v in paths.flat(after).items():
            if kk.startswith("head/slots/"):
                want = mine["head/" + kk[len("head/slots/"):]]
                np.testing.assert_allclose(v[k][..., :want.shape[-1]] if v[k].ndim else v[k], want, atol=tol, rtol=0,
                                           err_msg=kk)


def test_with_adamw_each_slot_keeps_its_own_count_and_an_unused_slot_does_not_move():
    """AdamW's moments and step count per slot: after three batches, the last without task 1, slot 1 has taken
    two steps and its params and moments are exactly those after the second batch (AdamW alone on its rows
    would not have stepped either); slot 0 has taken three."""
    base = aj.load(FIX / "tiny-roberta", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model, params = base.model, base.params
    for i in range(2):
        model, params = aj.add_adapters((model, params), SPEC, name=f"task_{i}", rng=jax.random.PRNGKey(i))
    model, params = bank.build((model, params), ["task_0", "task_1"], name="tasks",
                               head=heads.SlotClassification(NUM_LABELS, dropout=0.0), keep_members=False)
    model = aj.activate(model)
    labels = make_labels(model, params)
    trainable, frozen = split(params, labels)
    tx = opt_lib.make(split(labels, labels)[0], lr=0.05, total_steps=3, warmup=0.0, kind="constant", clip_norm=0.5)
    state = multitask.init_state(trainable, tx, 0)
    step = jax.jit(multitask.make_train_step(model, tx, 2))
    data = batches(model.config.vocab_size)
    state, _ = step(state, frozen, data[0])
    state, _ = step(state, frozen, data[1])
    before = jax.tree.map(np.asarray, state)
    state, metrics = step(state, frozen, data[2])
    assert list(np.asarray(metrics["examples_per_task"])) == [6, 0]
    counts = [x for x in jax.tree.leaves(state["opt_state"]) if x.dtype == jnp.int32 and x.shape == (2,)]
    assert counts and all(list(np.asarray(c)) == [3, 2] for c in counts)
    for new, old in zip(jax.tree.leaves((state["trainable"], state["opt_state"])),
                        jax.tree.leaves((before["trainable"], before["opt_state"]))):
        np.testing.assert_array_equal(np.asarray(new)[1], old[1])  # slot 1 untouched
    moved = [not np.array_equal(np.asarray(n)[0], o[0])
             for n, o in zip(jax.tree.leaves(state["trainable"]), jax.tree.leaves(before["trainable"]))]
    assert any(moved)


def test_a_multitask_run_trains_both_tasks_and_saves_each_adapter_as_if_alone(tmp_path, real_task):
    """multitask.run on MiniLM-L6 with two local files of real rows (2 and 5 labels): both heads learn, and each
    task's adapter is saved in save_adapter's format with its own config, its head (its label count) beside it."""
    import csv
    import sys

    from safetensors.numpy import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from experiments.configs import base as base_config

    files = []
    for name, n in (("rt_polarity", 160), ("bbc_news", 160)):
        t = real_task(name)
        path = tmp_path / f"{name}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label", "split"])
            for split, m in (("train", n), ("validation", 40), ("test", 40)):  # noqa: B007
                d = t[split]
                rows = np.linspace(0, len(d) - 1, m).astype(int)  # bbc_news is stored by topic: spread the rows
                w.writerows((d["text"][i][:300], t.label_names[d["label"][i]], split) for i in rows)
        files.append(str(path))
    c = base_config.get_config()
    c.tasks, c.task_kwargs.split_column = files, "split"
    c.adapter, c.max_length, c.buckets, c.batch_size, c.eval_batch_size = "houlsby[bottleneck=16]", 32, (32,), 16, 40
    c.max_steps, c.log_every, c.optimizer.lr, c.multitask.sampling = 30, 10, 3e-3, "uniform"
    rep = multitask.run(c, tmp_path / "run")
    assert rep["steps"] == 30 and rep["probs"] == [0.5, 0.5]
    # measured: rt_polarity 0.725 / bbc_news 0.85 test accuracy after 30 steps (chance 0.5 / ~0.2)
    print({k: v for k, v in rep.items() if "accuracy" in k})
    assert rep["rt_polarity/test_accuracy"] > 0.55 and rep["bbc_news/test_accuracy"] > 0.5, rep
    saved = tmp_path / "run" / "adapters" / "bbc_news"
    head = load_file(str(saved / "head.safetensors"))
    assert head["head/out_proj/kernel"].shape == (384, 5)
    base = aj.load("minilm-l6")
    m, p = aj.load_adapter(base, saved)
    assert m.adapters.get("adapter").methods == aj.parse("houlsby[bottleneck=16]")  # its own config, unpadded


def test_a_slot_state_continued_alone_equals_the_slot_continued_in_the_bank(optimizer="adamw"):
    """multitask.slot_state after one mixed batch: slot k as a single-adapter train state (step.init_state's
    layout: its params, AdamW moments and count cut to its own shapes: LoRA ranks 2 and 4, heads of 2 and 3 labels).
    Continued alone on its rows of two more batches it ends where the bank ends after them: every float leaf to 1e-5
    (measured 7.8e-6 at most; SGD: 4e-9), counts and steps exact."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from experiments.configs import base as base_config

    c = base_config.get_config()
    c.head.dropout, c.optimizer.name, c.optimizer.lr, c.optimizer.warmup = 0.0, optimizer, 0.05, 0.0
    c.optimizer.schedule, c.optimizer.clip_norm = "constant", 0.5
    base = aj.load(FIX / "tiny-roberta", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model, params = base.model, base.params
    for i in range(2):
        model, params = aj.add_adapters((model, params), f"lora[r={2 + 2 * i}]", name=f"task_{i}",
                                        rng=jax.random.PRNGKey(i))
    model, params = bank.build((model, params), ["task_0", "task_1"], name="tasks",
                               head=heads.SlotClassification(NUM_LABELS, dropout=0.0), keep_members=False)
    model = aj.activate(model)
    labels = make_labels(model, params)
    trainable, frozen = split(params, labels)
    tx = opt_lib.from_config(c.optimizer, split(labels, labels)[0], 3)
    state = multitask.init_state(trainable, tx, 0)
    step = jax.jit(multitask.make_train_step(model, tx, 2))
    data = batches(model.config.vocab_size)
    state, _ = step(state, frozen, data[0])
    mid = jax.tree.map(np.asarray, state)
    for b in data[1:]:
        state, _ = step(state, frozen, b)
    tol = 1e-5
    for k in range(2):
        m, p, st = multitask.slot_state(model, mid, frozen, k, NUM_LABELS[k], c)
        assert int(st["step"]) == 1
        lab = make_labels(m, p)
        tr, fr = split(p, lab)
        assert jax.tree.structure(st["trainable"]) == jax.tree.structure(tr)
        one = jax.jit(step_lib.make_train_step(m, opt_lib.from_config(c.optimizer, split(lab, lab)[0], 3)))
        for b in data[1:]:
            rows = b["adapter_ids"] == k
            if rows.any():
                st, _ = one(st, fr, {**{key: v for key, v in b.items() if key != "adapter_ids"},
                                     "example_mask": rows, "labels": np.where(rows, b["labels"], 0)})
        _, _, want = multitask.slot_state(model, state, frozen, k, NUM_LABELS[k], c)
        assert int(st["step"]) == int(want["step"]) == (3 if k == 0 else 2)
        assert jax.tree.structure(st) == jax.tree.structure(want)
        worst = 0.0
        for (kp, got), ref in zip(jax.tree_util.tree_flatten_with_path(st)[0], jax.tree.leaves(want)):
            if np.issubdtype(np.asarray(ref).dtype, np.integer) or jax.dtypes.issubdtype(ref.dtype, jax.dtypes.prng_key):
                np.testing.assert_array_equal(np.asarray(got), np.asarray(ref), err_msg=jax.tree_util.keystr(kp))
            else:
                worst = max(worst, float(np.abs(np.asarray(got) - np.asarray(ref)).max()))
        print(optimizer, k, worst)
        assert worst <= tol, (optimizer, k, worst)
