"""Training numerics: a committed loss curve on a tiny model, and training that learns on real data.

test_golden_loss_curve: 20 steps of tests/fixtures/tiny-roberta with a LoRA and a Houlsby adapter,
fixed seed, AdamW, dropout off, fixed synthetic batches, must give the loss curve committed in
tests/fixtures/golden_losses.json to 1e-5. `golden_run` below is its generator; regenerate (after a
change that is meant to move the numbers, and say why in the commit) with

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden.py -k golden_loss

test_training_learns: the default recipe (experiments/configs/rt_houlsby.py) through loop.run on the
first 200 rt_polarity training examples, without a validation split: the mean training loss of the
third pass over them is LEARNS_MARGIN below the first pass's (the measurement is stated there).
"""
import csv
import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adapters_jax as aj
from adapters_jax.models import load_hf_dir
from adapters_jax.partition import split
from adapters_jax.train import loop
from adapters_jax.train import optimizer as opt_lib
from adapters_jax.train.step import init_state, make_train_step

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures"
GOLDEN = FIX / "golden_losses.json"
sys.path.insert(0, str(ROOT))
from experiments.configs import rt_houlsby  # noqa: E402

RECIPE = {
    "model": "tests/fixtures/tiny-roberta", "adapter": "lora[r=4]|houlsby[bottleneck=8]", "head": "mean pooling, linear",
    "seed": 0, "steps": 20, "batches": "4 fixed batches of 8 x 12 tokens (ids 3-127, lengths 4-12, random labels), "
    "cycled; numpy default_rng(0)", "optimizer": "AdamW lr 1e-2, warm-up 10% then linear decay over 20 steps, "
    "weight decay 0.01, clip 1.0", "dropout": "none (the fixture's config has 0; head dropout 0)",
}


def golden_batches(n=4, b=8, t=12, vocab=128):
    g = np.random.default_rng(0)
    out = []
    for _ in range(n):
        lengths = g.integers(4, t + 1, b)
        mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
        ids = np.where(mask == 1, g.integers(3, vocab, (b, t)), 1).astype(np.int32)  # 1: the fixture's pad id
        out.append({"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask),
                    "labels": jnp.asarray(g.integers(0, 2, b), jnp.int32), "example_mask": jnp.ones((b,), bool),
                    "index": jnp.arange(b, dtype=jnp.int32)})
    return out


def golden_run() -> list[float]:
    """The loss at each of RECIPE's 20 steps (the generator of tests/fixtures/golden_losses.json)."""
    base = load_hf_dir(ROOT / RECIPE["model"])
    model, params = aj.add_adapters(base, RECIPE["adapter"], head=aj.heads.Classification(2, dropout=0.0),
                                    rng=jax.random.PRNGKey(RECIPE["seed"]))
    labels = aj.labels(model, params)
    trainable, frozen = split(params, labels)
    trainable_labels, _ = split(labels, labels)
    opt = opt_lib.make(trainable_labels, lr=1e-2, total_steps=RECIPE["steps"], warmup=0.1, kind="linear",
                       weight_decay=0.01, clip_norm=1.0)
    state = init_state(trainable, opt, RECIPE["seed"])
    step = jax.jit(make_train_step(model, opt))
    batches = golden_batches()
    losses = []
    for i in range(RECIPE["steps"]):
        state, m = step(state, frozen, batches[i % len(batches)])
        losses.append(float(m["loss"]))
    return losses


def test_golden_loss_curve():
    losses = golden_run()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps({"generator": "tests/test_golden.py::golden_run", "recipe": RECIPE,
                                      "jax": jax.__version__, "losses": losses}, indent=1) + "\n")
        pytest.skip(f"regenerated {GOLDEN.relative_to(ROOT)}")
    golden = json.loads(GOLDEN.read_text())
    assert golden["recipe"] == RECIPE, "the recipe changed: regenerate the golden curve (see the module docstring)"
    np.testing.assert_allclose(losses, golden["losses"], rtol=0, atol=1e-5)
    first, last = golden["losses"][:4], golden["losses"][-4:]  # each batch's first and last visit
    assert all(b < a - 0.03 for a, b in zip(first, last)), "the golden curve does not train"


# The mean training loss over the first pass through the 200 examples against the third (12 steps of 16
# each). Measured at seed 0 (XLA defaults): 0.687, 0.599, 0.423 for the three passes, a fall of 0.26;
# the test asks for LEARNS_MARGIN, a bit over half of it.
LEARNS_STEPS = 36
LEARNS_MARGIN = 0.15


def test_training_learns(tmp_path, real_task, asset_path):
    asset_path("minilm-l6")
    rt = real_task("rt_polarity")
    data = tmp_path / "rt200.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "split"])
        for split_name, n in (("train", 200), ("test", 64)):
            d = rt.splits[split_name]
            for i in range(n):
                w.writerow([d[i]["text"], rt.label_names[d[i]["label"]], split_name])
    c = rt_houlsby.get_config()
    c.task, c.task_kwargs.split_column, c.task_kwargs.validation = str(data), "split", "none"
    c.max_length, c.buckets, c.batch_size, c.eval_batch_size = 48, (48,), 16, 64
    c.max_steps, c.eval_every, c.log_every, c.progress = LEARNS_STEPS, LEARNS_STEPS, 1, False

    report = loop.run(c, tmp_path / "run")
    assert report["split_counts"] == {"train": 200, "test": 64} and "validation='none'" in report["split_rule"]
    assert report["val_accuracy"] is None and report["best_step"] == LEARNS_STEPS  # no validation: the last eval
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in logged if x["kind"] == "train"]
    per_pass = [float(np.mean(losses[i:i + 12])) for i in range(0, LEARNS_STEPS, 12)]
    print("mean training loss per pass over the 200 examples:", [round(x, 4) for x in per_pass])
    assert per_pass[-1] < per_pass[0] - LEARNS_MARGIN, per_pass
