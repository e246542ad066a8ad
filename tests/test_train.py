"""Training: no work for frozen weights, crash safety (SIGKILL during a save, SIGTERM, NaN), checkpoint contents,
bad input (every refusal of scripts/train.py is one `error:` line).

The end-to-end runs train MiniLM-L6 (real weights) on a small local CSV with its own
split column, through scripts/train.py, so they also show that a user's file
trains the same way as a built-in task. The crash tests kill the process from
outside; nothing in the production loop knows about them.

Over 400 lines: the crash, resume and refusal tests share the subprocess runner,
the CSV fixture and the reference run; split apart they would each rebuild them.
"""
import csv
import hashlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

import adapters_jax as aj
from adapters_jax import checkpoint as ckpt_lib
from adapters_jax.models import load_hf_dir
from adapters_jax.partition import split
from adapters_jax.train import loop
from adapters_jax.train import optimizer as opt_lib
from adapters_jax.train.step import init_state, make_train_step
from conftest import tiny_word_tasks

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(ROOT))
from experiments.configs import base as base_config  # noqa: E402


def tiny_batch(b=3, t=5, vocab=128, seed=0):
    g = np.random.default_rng(seed)
    return {"input_ids": jnp.asarray(g.integers(3, vocab, (b, t)), jnp.int32), "attention_mask": jnp.ones((b, t), jnp.int32),
            "labels": jnp.asarray(g.integers(0, 2, (b,)), jnp.int32), "example_mask": jnp.ones((b,), bool)}


def tiny_setup(spec, full=False):
    base = load_hf_dir(FIX / "tiny-roberta")
    model, params = aj.add_adapters(base, spec, head=aj.heads.Classification(2))
    labels = aj.labels(model, params, extra=[(".*", "base")] if full else ())
    trainable, frozen = split(params, labels)
    tl, _ = split(labels, labels)
    opt = opt_lib.make(tl, lr=1e-2, total_steps=10, warmup=0.0)
    return model, opt, init_state(trainable, opt, 0), frozen


def test_model_overrides_reach_the_model_not_the_fingerprint():
    """config.model_overrides sets model config fields at load (here: dropout on a base whose config has none);
    training-mode outputs change accordingly, the base fingerprint does not."""
    outs, prints = [], []
    for overrides in ({}, {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}):
        c = base_config.get_config()
        c.model, c.adapter, c.head.dropout = str(FIX / "tiny-roberta"), "houlsby[bottleneck=8]", 0.0
        c.model_overrides = overrides
        base, _, model, params, _ = loop.build(c)
        assert model.config.hidden_dropout_prob == overrides.get("hidden_dropout_prob", 0.0)
        ids = tiny_batch()["input_ids"]
        run = lambda **kw: model.apply({"params": params}, ids, **kw)
        outs.append(float(jnp.abs(run(deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
                                  - run(deterministic=True)).max()))
        prints.append(base.fingerprint)
    assert outs[0] == 0.0 and outs[1] > 1e-3
    assert prints[0] == prints[1]


def test_run_reads_as_a_short_story_without_fault_injection():
    """loop.run is its stages in order, and the crash tests kill the process from outside: the production loop
    and the experiment config hold no fault injection."""
    body = inspect.getsource(loop.run).splitlines()
    assert len(body) <= 25, f"loop.run is {len(body)} lines"
    stages = ["prepare(", "resume_or_refuse(", "compile_steps(", "train(", "make_report(", "write_json("]
    assert sorted(stages, key=lambda s: next(i for i, line in enumerate(body) if s in line)) == stages
    assert "fault" not in base_config.get_config()
    assert not re.search(r"os\.kill|SIGKILL|\bfault\b", inspect.getsource(loop))


def dot_output_shapes(hlo: str) -> set:
    shapes = set()
    for m in re.finditer(r"= f32\[([\d,]*)\]\{[^}]*\} dot\(", hlo):
        shapes.add(tuple(int(x) for x in m.group(1).split(",") if x))
    return shapes


def test_no_weight_gradient_for_frozen_kernels():
    # tiny-roberta: hidden 32, FFN 64 -> frozen kernels [32,32], [32,64], [64,32]; batch 3x5 tokens
    frozen_kernel_shapes = {(32, 32), (32, 64), (64, 32)}
    for spec, full in (("houlsby[bottleneck=8]", False), (None, True)):
        model, opt, state, frozen = tiny_setup(spec, full)
        hlo = jax.jit(make_train_step(model, opt)).lower(state, frozen, tiny_batch()).compile().as_text()
        found = dot_output_shapes(hlo) & frozen_kernel_shapes
        if full:  # the control: full fine-tuning computes exactly those weight gradients
            assert found == frozen_kernel_shapes
        else:
            assert not found, f"a dot produces a frozen kernel's shape: {found}"
    # and the optimizer holds state for trainable leaves only
    model, opt, state, frozen = tiny_setup("houlsby[bottleneck=8]")
    n_train = sum(x.size for x in jax.tree.leaves(state["trainable"]))
    n_opt = sum(x.size for x in jax.tree.leaves(state["opt_state"]) if x.ndim > 0)
    assert n_opt == 2 * n_train  # AdamW: mu and nu


def test_frozen_bitwise_unchanged_trainable_moves():
    model, opt, state, frozen = tiny_setup("lora[r=4]|houlsby[bottleneck=8]")
    frozen0 = jax.tree.map(np.array, frozen)
    train0 = jax.tree.map(np.array, state["trainable"])
    step = jax.jit(make_train_step(model, opt))
    for i in range(3):
        state, m = step(state, frozen, tiny_batch(seed=i))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(frozen0), jax.tree.leaves(frozen)))
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(train0), jax.tree.leaves(state["trainable"]))]
    assert all(moved)


def test_optimizer_groups_and_no_decay():
    labels = {"a": {"kernel": "adapter", "bias": "adapter"}, "head": {"kernel": "head"}}
    params = {"a": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}, "head": {"kernel": jnp.ones((2, 2))}}
    tx = opt_lib.make(labels, lr=0.0, total_steps=10, warmup=0.0, weight_decay=0.5, clip_norm=None,
                      group_lr={"head": 0.0})
    zeros = jax.tree.map(jnp.zeros_like, params)
    upd, _ = tx.update(zeros, tx.init(params), params)
    # lr 0 everywhere: no update at all; with lr>0 only matrices decay
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(upd))
    tx = opt_lib.make(labels, lr=1.0, total_steps=10, warmup=0.0, weight_decay=0.5, clip_norm=None, kind="constant")
    upd, _ = tx.update(zeros, tx.init(params), params)
    assert float(upd["a"]["bias"][0]) == 0.0 and float(upd["a"]["kernel"][0, 0]) == -0.5
    with pytest.raises(ValueError, match=r"group_lr names \['nope'\]"):
        opt_lib.make(labels, lr=1.0, total_steps=10, group_lr={"nope": 1.0})


# --- end-to-end through scripts/train.py on a local CSV with a split column ---

@pytest.fixture(scope="module")
def csv_task(tmp_path_factory):
    """96 train / 32 validation / 32 test rows of real rt_polarity text, split by a column."""
    from adapters_jax.data import tasks

    rt = tasks.load("rt_polarity")
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "sentiment", "part"])
        for split_name, n in (("train", 96), ("validation", 32), ("test", 32)):
            d = rt.splits[split_name]
            for i in range(n):
                w.writerow([d[i]["text"], rt.label_names[d[i]["label"]], split_name])
    return path


def small_config(csv_path, **over):
    c = base_config.get_config()
    c.task = str(csv_path)
    c.task_kwargs.text_column, c.task_kwargs.label_column, c.task_kwargs.split_column = "review", "sentiment", "part"
    c.max_length, c.buckets, c.batch_size, c.eval_batch_size = 64, (64,), 16, 32
    c.max_steps, c.checkpoint.every, c.eval_every, c.progress, c.log_every = 10, 3, 1000, False, 1
    for k, v in over.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


def tiny_config(tiny_task, **over):
    """small_config on tiny-roberta with a word-rule CSV task (conftest.tiny_word_tasks): for tests of the
    loop's control flow (signals, NaN), where MiniLM's size adds only time."""
    model, (task,) = tiny_task
    c = small_config(task, **over)
    c.model, c.max_length, c.buckets, c.batch_size, c.eval_batch_size = str(model), 16, (16,), 8, 8
    c.task_kwargs.text_column, c.task_kwargs.label_column, c.task_kwargs.split_column = "text", "label", "split"
    c.adapter = "houlsby[bottleneck=8]"
    return c


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    return tiny_word_tasks(tmp_path_factory.mktemp("tiny"), (("words", 2),))


def cli_args(config) -> list[str]:
    """--config.key=value flags that reproduce `config` from the base file (what small_config and tiny_config
    set)."""
    flat = {"model": config.model, "adapter": config.adapter, "task": config.task, "max_length": config.max_length,
            "batch_size": config.batch_size, "eval_batch_size": config.eval_batch_size, "max_steps": config.max_steps,
            "checkpoint.every": config.checkpoint.every, "eval_every": config.eval_every, "progress": False,
            "log_every": 1, "buckets": f"({config.buckets[0]},)",
            **{f"task_kwargs.{k}": config.task_kwargs[k] for k in ("text_column", "label_column", "split_column")}}
    return [f"--config.{k}={v}" for k, v in flat.items()]


def train_cmd(workdir, config, *extra) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(ROOT / "experiments/configs/base.py"),
            "--workdir", str(workdir), *cli_args(config), *extra]


def train_cli(workdir, config, *extra, check=True, timeout=600):
    p = subprocess.run(train_cmd(workdir, config, *extra), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"train.py failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def final_params(workdir, config):
    return flatten_dict(loop.final_trainable(workdir, config))


@pytest.fixture(scope="module")
def uninterrupted(csv_task, tmp_path_factory):
    cfg = small_config(csv_task)
    wd = tmp_path_factory.mktemp("runs") / "straight"
    p = train_cli(wd, cfg)
    assert "test accuracy" in p.stdout
    return cfg, wd, final_params(wd, cfg)


def test_report_and_metrics(uninterrupted):
    cfg, wd, _ = uninterrupted
    report = json.loads((wd / "report.json").read_text())
    for key in ("task", "adapter", "seed", "trainable_params", "trainable_share", "val_accuracy", "test_accuracy",
                "wall_s", "train_s", "compile_s", "tokens_per_s", "split_rule", "split_counts", "xla_flags"):
        assert key in report
    assert report["split_counts"] == {"train": 96, "validation": 32, "test": 32}
    assert "split column" in report["split_rule"]
    # scripts/train.py chose the XLA flags for MiniLM's family and the report says which and why
    assert report["xla_flags"]["model"] == "minilm-l6" and report["xla_flags"]["family"] == "encoder"
    assert report["xla_flags"]["reason"]
    assert report["versions"]["jax"] == jax.__version__ and set(report["versions"]) >= {"jaxlib", "flax", "numpy"}
    assert report["machine"]["cores"] == os.cpu_count() and report["machine"]["arch"]
    assert json.loads((wd / "best.json").read_text())["step"] == report["best_step"] == 10
    assert report["steps"] == 10 and report["trainable_params"] == 595_200 + 770
    assert 0 <= report["test_accuracy"] <= 1
    lines = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["kind"] == "train"] == list(range(1, 11))
    assert list((wd / "tb").iterdir())


def test_checkpoint_holds_exactly_the_trainable_leaves(uninterrupted):
    cfg, wd, final = uninterrupted
    steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 10 and len(steps) <= 3  # keep 2 latest (+ the best)
    meta = json.loads((wd / "checkpoints" / "10" / "meta" / "metadata").read_text())
    assert meta["adapter"] == cfg.adapter and meta["base_fingerprint"]["architecture"] == "bert"
    assert meta["label_names"] == ["fresh", "rotten"] or meta["label_names"] == ["rotten", "fresh"]
    keys = {"/".join(k) for k in final}
    assert all("/adapters/default/" in k or k.startswith("head/") for k in keys)
    assert len(keys) == 6 * 2 * 4 + 2  # 2 adapters x 4 leaves per layer, + head kernel and bias
    # no base tensor on disk: the checkpoint is the size of the adapter (+ optimizer state), not the model
    size = sum(f.stat().st_size for f in (wd / "checkpoints" / "10").rglob("*") if f.is_file())
    assert size < 4 * 3 * (595_970 * 4)


# Orbax (0.11-0.12) writes step N into N.orbax-checkpoint-tmp[-<timestamp>] and renames it to N when complete.
ORBAX_TMP = ".orbax-checkpoint-tmp"


def saves_in_flight(ckpts: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(ckpts) if ORBAX_TMP in e.name)
    except FileNotFoundError:
        return []


def complete_steps(ckpts: Path) -> set[int]:
    return {int(p.name) for p in ckpts.iterdir() if p.name.isdigit()} if ckpts.is_dir() else set()


def kill_during_a_save(proc: subprocess.Popen, ckpts: Path, timeout: float = 600) -> list[str]:
    """SIGKILL `proc` while an asynchronous save is in flight, after at least one save completed.

    The moment a save's temporary directory appears the process is stopped (SIGSTOP; waitpid confirms it),
    so nothing can finish the save while the directory is looked at again; if it is still there the process
    is killed, else it continues and the next save is tried. Returns the temporary directories at kill time.
    """
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if not (saves_in_flight(ckpts) and complete_steps(ckpts)):
            time.sleep(0.001)
            continue
        proc.send_signal(signal.SIGSTOP)
        _, status = os.waitpid(proc.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        if (caught := saves_in_flight(ckpts)):
            proc.kill()
            return caught
        proc.send_signal(signal.SIGCONT)
    return []


def test_sigkill_during_an_async_save_then_resume_is_bitwise_equal(uninterrupted, csv_task, tmp_path):
    cfg, straight_wd, final = uninterrupted
    wd = tmp_path / "killed"
    ckpts = wd / "checkpoints"
    killed = small_config(csv_task, **{"checkpoint.every": 1})  # a save after every step: many to land in
    proc = subprocess.Popen(train_cmd(wd, killed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        caught = kill_during_a_save(proc, ckpts)
    finally:
        if proc.poll() is None and not caught:
            proc.kill()
        out, err = proc.communicate(timeout=60)
    assert caught, f"no save was caught in flight before the run ended (rc {proc.returncode}):\n{err[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not (wd / "report.json").exists()
    in_flight = int(caught[0].split(".")[0])
    assert all((ckpts / d).is_dir() for d in caught), "the killed save's temporary directory is gone"
    assert in_flight not in complete_steps(ckpts), "the save in flight was published anyway"
    # a torn best.json, as a non-atomic write killed half-way leaves one: the resume must not depend on it
    (wd / "best.json").write_text('{"val_accuracy": 0.')

    p = train_cli(wd, cfg, "--resume")
    assert int(re.search(r"resumed from step (\d+)", p.stdout).group(1)) < in_flight
    resumed = final_params(wd, cfg)
    assert resumed.keys() == final.keys()
    for k in final:
        np.testing.assert_array_equal(resumed[k], final[k], err_msg="/".join(k))
    report, straight = (json.loads((d / "report.json").read_text()) for d in (wd, straight_wd))
    assert [report[k] for k in ("val_accuracy", "test_accuracy", "best_step")] == \
        [straight[k] for k in ("val_accuracy", "test_accuracy", "best_step")]
    assert json.loads((wd / "best.json").read_text())["step"] == 10


def test_write_json_is_atomic(tmp_path, monkeypatch):
    """A write that dies before its rename leaves the old file whole (best.json and report.json use it)."""
    f = tmp_path / "best.json"
    ckpt_lib.write_json(f, {"step": 1})

    def crash(src, dst):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt_lib.write_json(f, {"step": 2, "padding": "x" * 100_000})
    assert json.loads(f.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["best.json"]


def test_sigterm_saves_and_exits_cleanly(tiny_task, tmp_path):
    cfg = tiny_config(tiny_task, max_steps=100_000, **{"checkpoint.every": 0})
    wd = tmp_path / "term"
    proc = subprocess.Popen(train_cmd(wd, cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    metrics = wd / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    m = re.search(r"SIGTERM: saved step (\d+)", out)
    assert m, out[-2000:]
    assert (wd / "checkpoints" / m.group(1) / "state").is_dir()
    assert 3 <= int(m.group(1)) < 100_000


def dir_digest(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(d.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(d)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_task, tmp_path):
    cfg = tiny_config(tiny_task, **{"optimizer.lr": 1e30, "optimizer.clip_norm": 0.0, "optimizer.warmup": 0.0,
                                    "checkpoint.every": 1, "checkpoint.async_save": False})
    with pytest.raises(loop.TrainingError, match=r"loss is (nan|inf) at step (\d+); stopping. The last good checkpoint "
                                                 r"\(step (\d+)\) is kept"):
        loop.run(cfg, tmp_path / "nan")
    ckpts = tmp_path / "nan" / "checkpoints"
    good = complete_steps(ckpts)
    assert good, "no checkpoint was kept"
    digest = {s: dir_digest(ckpts / str(s)) for s in good}
    # resuming refuses to go on silently past the NaN: it trains again from the good step and stops again
    with pytest.raises(loop.TrainingError):
        loop.run(cfg, tmp_path / "nan", resume=True)
    # every good checkpoint is still there, byte for byte, and none was added or deleted
    assert {s: dir_digest(ckpts / str(s)) for s in complete_steps(ckpts)} == digest


def test_resume_errors_leave_checkpoints_untouched(uninterrupted, tmp_path):
    cfg, wd, _ = uninterrupted
    with pytest.raises(ckpt_lib.CheckpointError, match="no complete checkpoint"):
        loop.run(cfg, tmp_path / "empty", resume=True)
    before = dir_digest(wd / "checkpoints")
    other = small_config(cfg.task, adapter="lora[r=4]")
    with pytest.raises(ckpt_lib.CheckpointError, match=r"written with adapter=.*houlsby.*but this run has adapter=\"lora"):
        loop.run(other, wd, resume=True)
    with pytest.raises(loop.TrainingError, match="already holds checkpoints .* pass --resume"):
        loop.run(cfg, wd)
    assert dir_digest(wd / "checkpoints") == before
    # a corrupt checkpoint: clear error, files left as they are
    corrupt = tmp_path / "corrupt"
    import shutil

    shutil.copytree(wd / "checkpoints", corrupt / "checkpoints")
    latest = max(int(p.name) for p in (corrupt / "checkpoints").iterdir() if p.name.isdigit())
    for f in (corrupt / "checkpoints" / str(latest) / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\0" * 16)
    before = dir_digest(corrupt / "checkpoints")
    with pytest.raises(ckpt_lib.CheckpointError, match=f"checkpoint .*{latest}"):
        loop.run(cfg, corrupt, resume=True)
    assert dir_digest(corrupt / "checkpoints") == before


# --- every refusal reaches the user as one `error:` line naming the file or the cause, no traceback ---

def one_error_line(p: subprocess.CompletedProcess) -> str:
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode != 0 and "Traceback" not in p.stderr and len(errors) == 1, \
        f"rc {p.returncode}, stderr:\n{p.stderr[-3000:]}"
    return errors[0]


def train_py(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize("case", ["model dir", "gguf", "asset", "data file", "adapter config"])
def test_refusals_are_one_error_line(case, csv_task, tmp_path):
    tiny = str(FIX / "tiny-roberta")
    (tmp_path / "no_config").mkdir()
    (tmp_path / "model.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 4)  # a GGUF magic, then garbage
    (tmp_path / "stars.csv").write_text("text,stars\ngood film,5\nbad film,1\n")
    args, named = {
        "model dir": ([f"--config.model={tmp_path / 'no_config'}"], str(tmp_path / "no_config")),
        "gguf": ([f"--config.model={tmp_path / 'model.gguf'}"], str(tmp_path / "model.gguf")),
        "asset": (["--config.model=minilm-l7"], "minilm-l7"),
        "data file": ([f"--config.model={tiny}", f"--config.task={tmp_path / 'stars.csv'}"],
                      str(tmp_path / "stars.csv")),
        "adapter config": ([f"--config.model={tiny}", f"--config.task={csv_task}", "--config.adapter=houlsby[bottlenek=8]",
                            "--config.task_kwargs.text_column=review", "--config.task_kwargs.label_column=sentiment",
                            "--config.task_kwargs.split_column=part"], "bottlenek"),
    }[case]
    line = one_error_line(train_py("--config", str(ROOT / "experiments/configs/base.py"),
                                   "--workdir", str(tmp_path / "wd"), *args))
    assert named in line, line


def test_flag_and_config_file_errors_are_one_line(tmp_path):
    base = str(ROOT / "experiments/configs/base.py")
    assert "lerning_rate" in one_error_line(train_py("--config", base, "--config.lerning_rate=1"))
    line = one_error_line(train_py("--config", base, "--config.optimizer.lrr=1"))
    assert "lrr" in line and 'Did you mean "lr"' in line
    assert "max_steps=abc" in one_error_line(train_py("--config", base, "--config.max_steps=abc"))
    assert "nope.py" in one_error_line(train_py("--config", str(tmp_path / "nope.py")))
