"""Batching on a real task: buckets, resume across epochs, host slices, eval masks, refusals."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from adapters_jax.data import tokenize
from adapters_jax.data.batching import Batches, eval_batches
from adapters_jax.errors import DataError

BUCKETS = (32, 64, 128)


@pytest.fixture(scope="module")
def rt(real_task, minilm_tokenizer):
    return tokenize.encode_task(real_task("rt_polarity"), minilm_tokenizer, max_length=128)


def _same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_buckets_shapes_and_dtypes(rt):
    train = rt["train"]
    it = Batches(train.ids, train.labels, 256, buckets=BUCKETS, seed=3)
    widths = set()
    for batch in itertools.islice(it, 10):
        b, T = batch["input_ids"].shape
        widths.add(T)
        assert b == 256 and T in BUCKETS
        assert batch["input_ids"].dtype == np.int32 and batch["attention_mask"].dtype == np.int32
        assert batch["labels"].shape == (256,) and batch["labels"].dtype == np.int32
        assert batch["example_mask"].dtype == bool and batch["example_mask"].all()
        lengths = batch["attention_mask"].sum(1)
        assert lengths.max() > ([0] + [w for w in BUCKETS if w < T])[-1]  # the smallest bucket that fits
        i = batch["index"]
        np.testing.assert_array_equal(lengths, train.lengths[i])
        np.testing.assert_array_equal(batch["labels"], train.labels[i])
        np.testing.assert_array_equal(batch["input_ids"][0, : lengths[0]], train.ids[i[0]])
    assert widths <= set(BUCKETS)


def test_shuffle_is_a_function_of_seed_and_epoch(rt):
    train = rt["train"]
    first = lambda seed, epoch: Batches(train.ids, train.labels, 64, seed=seed)._plan(epoch)[0]
    assert first(0, 0) == first(0, 0)
    assert first(0, 0) != first(0, 1) and first(0, 0) != first(1, 0)
    epoch = Batches(train.ids, train.labels, 64, seed=0, repeat=False)
    seen = np.concatenate([b["index"] for b in epoch])
    assert len(seen) == len(np.unique(seen)) == (len(train) // 64) * 64  # drop_last: each at most once


def test_restore_yields_the_same_batches_across_an_epoch_boundary(rt):
    train = rt["train"]
    make = lambda: Batches(train.ids, train.labels, 512, buckets=BUCKETS, seed=7)
    steps = make().steps_per_epoch()
    assert steps == len(train) // 512 == 19
    straight = list(itertools.islice(make(), 2 * steps + 3))

    first = make()
    head = list(itertools.islice(first, steps - 4))  # stop 4 steps before the epoch ends
    saved = json.loads(json.dumps(first.state()))  # what a checkpoint holds
    assert saved == {"seed": 7, "epoch": 0, "step": steps - 4}
    resumed = make()
    resumed.restore(saved)
    tail = list(itertools.islice(resumed, len(straight) - len(head)))
    assert resumed.state()["epoch"] == 2
    for a, b in zip(head + tail, straight, strict=True):
        _same(a, b)
    # A state saved exactly at the boundary resumes too.
    at_end = make()
    at_end.restore({"seed": 7, "epoch": 0, "step": steps})
    _same(next(iter(at_end)), straight[steps])
    with pytest.raises(DataError, match="step=99 outside epoch 0's 19 steps"):
        make().restore({"seed": 7, "epoch": 0, "step": 99})


@pytest.mark.parametrize("padding", ["buckets", "longest", "max"])
def test_hosts_get_disjoint_slices_of_the_global_batch(rt, padding):
    train, n, B = rt["train"], 4, 128
    kw = dict(padding=padding, buckets=BUCKETS, seed=5, max_length=128)
    single = Batches(train.ids, train.labels, B, **kw)
    hosts = [Batches(train.ids, train.labels, B, process_index=i, process_count=n, **kw) for i in range(n)]
    steps = single.steps_per_epoch() + 2  # into the second epoch
    for step, (whole, *parts) in enumerate(itertools.islice(zip(single, *hosts), steps)):
        shapes = {p["input_ids"].shape for p in parts}
        assert shapes == {(B // n, whole["input_ids"].shape[1])}, f"step {step}: {shapes}"
        idx = [p["index"][p["example_mask"]] for p in parts]
        flat = np.concatenate(idx)
        assert len(flat) == len(np.unique(flat))  # disjoint
        for k in whole:
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k], err_msg=k)
    assert {h.state()["epoch"] for h in hosts} == {1}


@pytest.mark.parametrize("hosts", [1, 4])
def test_eval_with_ragged_last_batch_counts_each_example_once(rt, hosts):
    val = rt["validation"]
    assert len(val) % 64 != 0
    counted, correct = np.zeros(len(val), int), 0
    for i in range(hosts):
        shapes = set()
        for batch in eval_batches(val.ids, val.labels, 64, buckets=BUCKETS, process_index=i, process_count=hosts):
            shapes.add(batch["input_ids"].shape[0])
            m = batch["example_mask"]
            np.add.at(counted, batch["index"][m], 1)
            correct += int((batch["labels"][m] == val.labels[batch["index"][m]]).sum())
            pad = ~m
            assert (batch["attention_mask"][pad].sum(1) == 1).all()  # padding rows attend to one position
        assert shapes == {64 // hosts}
    assert (counted == 1).all() and correct == len(val)


def test_max_padding_has_one_shape(rt):
    train = rt["train"]
    fixed = Batches(train.ids, train.labels, 64, padding="max", max_length=128, repeat=False)
    assert {b["input_ids"].shape for b in fixed} == {(64, 128)}


def test_packing_is_refused(rt):
    """No model reads segment ids, so padding="pack" (which emitted them) is gone, and says so."""
    train = rt["train"]
    with pytest.raises(DataError, match=r"padding='pack'; choose one of \('buckets', 'max', 'longest'\) "
                                        r"\(no packing: no model reads segment ids\)"):
        Batches(train.ids, train.labels, 16, padding="pack", max_length=128)
    with pytest.raises(TypeError, match="max_segments"):
        Batches(train.ids, train.labels, 16, max_segments=8)


def test_bad_batching_input(rt):
    train = rt["train"]
    with pytest.raises(DataError, match="longest sequence has 78 tokens but the largest bucket is 64"):
        Batches(train.ids, train.labels, 32, buckets=(32, 64))
    with pytest.raises(DataError, match="batch_size=30 must be a positive multiple of process_count=4"):
        Batches(train.ids, train.labels, 30, process_count=4)
    with pytest.raises(DataError, match="empty split"):
        Batches([], [], 8)
    with pytest.raises(DataError, match="3 token sequences but 2 labels"):
        Batches(train.ids[:3], train.labels[:2], 2)
    with pytest.raises(DataError, match="make no full batch"):
        Batches(train.ids[:3], train.labels[:3], 8)
    with pytest.raises(DataError, match="lacks \\['step'\\]"):
        Batches(train.ids, train.labels, 8).restore({"seed": 0, "epoch": 0})
    with pytest.raises(DataError, match="seed, epoch and step must be integers"):
        Batches(train.ids, train.labels, 8).restore({"seed": 0, "epoch": 0, "step": None})
