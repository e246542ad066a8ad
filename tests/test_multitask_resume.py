"""Multi-task checkpoints: a run killed after a checkpoint and resumed ends bitwise where an uninterrupted run ends
(the state and the sampler's position), each task's output continues alone in train/loop.py, and SIGTERM saves
and exits cleanly."""
import json
import re
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import load_file

from adapters_jax.train import loop, multitask

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.configs import base as base_config  # noqa: E402
from conftest import tiny_word_tasks  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_word_tasks(tmp_path_factory.mktemp("tiny"), (("alpha", 2), ("beta", 3)))


def config(tiny):
    model, files = tiny
    c = base_config.get_config()
    c.model, c.tasks, c.task_kwargs.split_column = str(model), files, "split"
    c.adapter, c.max_length, c.buckets, c.batch_size, c.eval_batch_size = "lora[r=2]", 16, \
        (16,), 8, 8
    c.max_steps, c.log_every, c.multitask.sampling = 6, 100, "uniform"
    c.checkpoint.every, c.checkpoint.keep = 2, 3
    return c  # AdamW, head dropout 0.1 (the rng must continue too)


def state_leaves(workdir, step):
    restored = ocp.StandardCheckpointer().restore(Path(workdir).resolve() / "checkpoints" / str(step) / "state")
    return [np.asarray(x) for x in jax.tree.leaves(restored)]


def test_kill_after_a_checkpoint_and_resume_ends_bitwise_where_an_uninterrupted_run_ends(tiny, tmp_path, capsys):
    c = config(tiny)
    straight = multitask.run(c, tmp_path / "straight")
    assert sorted(int(p.name) for p in (tmp_path / "straight" / "checkpoints").iterdir()) == [2, 4, 6]
    # killed after step 5: what is on disk is the checkpoints of steps 2 and 4 (a save in flight is never published)
    killed = tmp_path / "killed"
    for s in ("2", "4"):
        shutil.copytree(tmp_path / "straight" / "checkpoints" / s, killed / "checkpoints" / s)
    with pytest.raises(multitask.TrainingError, match="already holds checkpoints .* pass --resume"):
        multitask.run(c, killed)
    capsys.readouterr()
    resumed = multitask.run(c, killed, resume=True)
    assert "resumed from step 4" in capsys.readouterr().out
    a, b = state_leaves(tmp_path / "straight", 6), state_leaves(killed, 6)
    assert len(a) == len(b) > 10
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert {k: v for k, v in resumed.items() if "accuracy" in k} == {k: v for k, v in straight.items()
                                                                   if "accuracy" in k}
    for task in ("alpha", "beta"):
        for f in ("adapter.safetensors", "head.safetensors"):
            want, got = (load_file(str(d / "adapters" / task / f)) for d in (tmp_path / "straight", killed))
            assert want.keys() == got.keys()
            for k in want:
                np.testing.assert_array_equal(got[k], want[k], err_msg=k)

    # each task's output is a train/loop.py run directory: --resume continues that adapter alone
    out = tmp_path / "straight" / "adapters" / "beta"
    step = int(next((out / "checkpoints").iterdir()).name)
    assert 0 < step <= 6  # beta's own step count (uniform sampling: rows of beta in most batches)
    one = c.copy_and_resolve_references()
    one.tasks, one.task, one.max_steps, one.eval_every, one.progress = [], tiny[1][1], step + 1, 100, False
    capsys.readouterr()
    rep = loop.run(one, out, resume=True)
    assert f"resumed from step {step}" in capsys.readouterr().out
    assert rep["steps"] == step + 1 and rep["completed"]
    assert (out / "checkpoints" / str(step + 1)).is_dir()


class _Enc:
    def __init__(self, n):
        self.ids, self.labels = [[5 + i % 7] * (1 + i % 3) for i in range(n)], [0] * n

    def __len__(self):
        return len(self.ids)


def test_mixed_batches_depend_on_the_position_and_a_restored_sampler_continues_them():
    """Step s's batch is a function of (seed, s, each task stream's position), not of s alone: a resume needs the
    position (checkpointed with the state), and a sampler restored from it draws the same batches."""
    def mixed():
        return multitask.Mixed([_Enc(7), _Enc(11)], 5, np.asarray([0.5, 0.5]), [4], 0, seed=3)

    a = mixed()
    for s in range(4):
        a.batch(s)
    position = a.state(4)
    b = mixed()
    b.restore(position, 4)
    fresh = mixed()
    for s in range(4, 9):
        x, y, z = a.batch(s), b.batch(s), fresh.batch(s)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert not np.array_equal(x["index"], z["index"])  # without the position the streams are elsewhere
    with pytest.raises(multitask.DataError, match="does not fit this run"):
        mixed().restore(position, 5)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny, tmp_path):
    """A preempted multi-task run (SIGTERM) saves at the next step boundary, writes an incomplete report
    and exits 0; --resume continues from that checkpoint (the bitwise resume: the test above)."""
    import signal
    import subprocess

    model, files = tiny
    wd = tmp_path / "term"
    code = f"""
import sys
sys.path[:0] = [{str(ROOT)!r}]
from experiments.configs import base
from adapters_jax.train import multitask
c = base.get_config()
c.model, c.tasks, c.task_kwargs.split_column = {str(model)!r}, {list(files)!r}, "split"
c.adapter, c.max_length, c.buckets, c.batch_size, c.eval_batch_size = "lora[r=2]", 16, (16,), 8, 8
c.max_steps, c.log_every, c.multitask.sampling, c.checkpoint.every = 100_000, 1, "uniform", 0
multitask.run(c, {str(wd)!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    for line in proc.stdout:  # a few steps in, then the signal
        if line.startswith("step 3/"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    step = int(re.search(r"SIGTERM: saved step (\d+), exiting", out).group(1))
    assert 3 <= step < 100_000 and ocp.path.step.checkpoint_steps(wd / "checkpoints") == [step]
    report = json.loads((wd / "report.json").read_text())
    assert report["steps"] == step and report["completed"] is False
    assert not (wd / "adapters").exists()  # the per-task adapters come with the finished run
