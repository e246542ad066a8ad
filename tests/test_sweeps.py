"""Sweeps end to end on a tiny model: a two-point, one-seed sweep through the local executor (a rerun skips
finished points; a point that lost its last checkpoint resumes from the one before and ends where it had),
through a real Ray cluster on 127.0.0.1 (same rows), a config's `evaluate` rows, and the report page."""
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from adapters_jax.errors import ConfigError
from adapters_jax.sweeps import grid, report, runner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from conftest import tiny_word_tasks  # noqa: E402

CONFIG = '''"""A tiny two-point sweep (tests/test_sweeps.py)."""
from adapters_jax.sweeps import grid
from experiments.configs import base


def get_config():
    c = base.get_config()
    c.model, c.task, c.task_kwargs.split_column = {model!r}, {task!r}, "split"
    c.adapter, c.max_length, c.buckets, c.batch_size, c.eval_batch_size = "lora[r=2]", 16, (16,), 8, 8
    c.max_steps, c.log_every, c.progress = 4, 100, False
    c.checkpoint.every, c.checkpoint.keep, c.checkpoint.async_save = 2, 3, False
    return c


def sweep():
    return grid.product(grid.axis("adapter", ["lora[r=2]", "houlsby[bottleneck=4]"]), grid.axis("seed", [0]))


def evaluate(config, run_dir):
    from adapters_jax import paths
    from adapters_jax.sweeps.evaluate import evaluate_variants

    zero = lambda t: paths.unflat({{p: v * 0 if paths.parse(p).kind == "adapter" else v
                                    for p, v in paths.flat(t).items()}})
    out = evaluate_variants(config, run_dir, {{"none": lambda t: t, "zeroed": zero}})
    return [{{"variant": k, "factors": {{"removed": k}}, "metrics": m}} for k, m in out.items()]


def analyze(workdir, out_dir):
    done = sorted(p.name for p in workdir.iterdir() if (p / "report.json").exists())
    return ["## Across the runs", "", "runs analysed: " + "; ".join(done)]


REPORT = {{"title": "tiny", "x": "adapter", "xscale": "category", "paper": "none (a test)",
          "order": ["lora[r=2]", "houlsby[bottleneck=4]"]}}
'''

IDS = ["adapter=lora_r=2_,seed=0", "adapter=houlsby_bottleneck=4_,seed=0"]


@pytest.fixture(scope="module")
def sweep_config(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    model, (task,) = tiny_word_tasks(d, (("alpha", 2),))
    path = d / "tiny_sweep.py"
    path.write_text(CONFIG.format(model=str(model), task=task))
    return path


def test_grid_ids_overrides_and_refusals(sweep_config):
    module = grid.load_module(sweep_config)
    assert list(grid.points(module)) == IDS
    c = grid.config_for(module, {"adapter": "ia3", "seed": 3, "checkpoint.keep": 5})
    assert (c.adapter, c.seed, c.checkpoint.keep) == ("ia3", 3, 5)
    assert grid.product(grid.axis("a", [1, 2]), grid.axis("b", "xy")) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    assert grid.zip_axes(grid.axis("a", [1, 2]), grid.axis("b", "xy")) == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    with pytest.raises(ConfigError, match="no 'nope'"):
        grid.config_for(module, {"optimizer.nope": 1})
    with pytest.raises(ConfigError, match="equal length"):
        grid.zip_axes(grid.axis("a", [1, 2]), grid.axis("b", "x"))
    with pytest.raises(ConfigError, match="does not exist"):
        grid.load_module(sweep_config.parent / "missing.py")


def _script(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_bad_input_is_one_error_line(sweep_config, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(sweep_config.read_text().replace('grid.axis("seed", [0])', 'grid.axis("optimizer.nope", [0])'))
    r = _script("--config", bad, "--workdir", tmp_path / "w", "--results", tmp_path / "r.jsonl")
    assert r.returncode == 2 and r.stderr.startswith("error: sweep key 'optimizer.nope'"), r.stderr
    r = _script("--config", sweep_config, "--only", "nope", "--workdir", tmp_path / "w")
    assert r.returncode == 2 and "--only names points the sweep does not have: ['nope']" in r.stderr
    r = _script("--config", sweep_config, "--executor", "ray", "--ray-address", "127.0.0.1:1",
                "--workdir", tmp_path / "w", "--results", tmp_path / "r.jsonl")
    assert r.returncode == 2 and "error: no Ray cluster at 127.0.0.1:1" in r.stderr, r.stderr[-500:]
    assert not (tmp_path / "w").exists() and not (tmp_path / "r.jsonl").exists()


def _by_point(rows):
    return {(r["point"], r["variant"]): r for r in rows}


def test_local_sweep_skip_resume_ray_and_report(sweep_config, tmp_path):
    work, table = tmp_path / "runs", tmp_path / "results" / "results.jsonl"
    out = runner.run_sweep(sweep_config, work, table, max_parallel=2, log=lambda *a: None)
    assert out == {"points": 2, "skipped": 0, "ran": 2, "failed": {}}
    rows = runner.read_rows(table)
    assert len(rows) == 6  # per point: the run's row and the config's two evaluate rows
    by = _by_point(rows)
    for pid in IDS:
        main, none, zeroed = by[(pid, None)], by[(pid, "none")], by[(pid, "zeroed")]
        assert main["steps"] == 4 and main["seed"] == 0 and main["factors"]["seed"] == 0
        assert set(main["metrics"]) == {"test_accuracy", "val_accuracy"}  # at the best validation step
        # one evaluation at the end (step 4): the best is the final params, which `evaluate` restored
        assert none["metrics"]["test_accuracy"] == main["metrics"]["test_accuracy"]
        last_eval = [json.loads(x) for x in (work / pid / "metrics.jsonl").read_text().splitlines()][-1]
        assert last_eval["step"] == 4 and none["metrics"]["test_loss"] == last_eval["test_loss"]
        assert zeroed["metrics"]["test_loss"] != none["metrics"]["test_loss"]
        assert zeroed["factors"] == {**main["factors"], "removed": "zeroed"}
        assert main["commit"] and main["split_counts"]["test"] == 8
        assert 100 < main["peak_host_mb"] < 24_000 and main["peak_device_mb"] is None  # a CPU process
    # a rerun skips the finished points and leaves the table as it was
    before = table.read_text()
    assert runner.run_sweep(sweep_config, work, table, log=lambda *a: None)["skipped"] == 2
    assert table.read_text() == before

    # a point killed after its step-2 checkpoint: its rows gone from the table, the later state gone
    pid = IDS[1]
    table.write_text("".join(line + "\n" for line in before.splitlines() if json.loads(line)["point"] != pid))
    for f in ("rows.json", "report.json", "best.json"):
        (work / pid / f).unlink()
    shutil.rmtree(work / pid / "checkpoints" / "4")
    log = []
    assert runner.run_sweep(sweep_config, work, table, log=log.append)["ran"] == 1
    assert "resumed from step 2" in (work / pid / "log.txt").read_text()
    again = _by_point(runner.read_rows(table))
    assert again[(pid, None)]["metrics"] == by[(pid, None)]["metrics"]  # resumed bitwise
    assert again[(pid, "zeroed")]["metrics"] == by[(pid, "zeroed")]["metrics"]

    # the same sweep on a real Ray cluster (head node on 127.0.0.1): the same rows
    ray = str(Path(sys.executable).parent / "ray")
    port = 26379
    env_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    start = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                            "--num-cpus=2", "--object-store-memory=100000000", "--include-dashboard=false",
                            "--disable-usage-stats",
                            f"--temp-dir={env_dir}"], capture_output=True, text=True)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        t0 = time.time()
        out = runner.run_sweep(sweep_config, tmp_path / "ray_runs", tmp_path / "ray.jsonl", executor="ray",
                               max_parallel=2, ray_address=f"127.0.0.1:{port}", log=lambda *a: None)
        assert out["ran"] == 2 and not out["failed"], (out, time.time() - t0)
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True)
        shutil.rmtree(env_dir, ignore_errors=True)
    on_ray = _by_point(runner.read_rows(tmp_path / "ray.jsonl"))
    assert set(on_ray) == set(by)
    for k, r in on_ray.items():
        assert r["metrics"].keys() == by[k]["metrics"].keys()
        for m, v in r["metrics"].items():
            assert v == pytest.approx(by[k]["metrics"][m], abs=1e-5), (k, m)

    page = report.write_report(table.parent, sweep_config, workdir=work)
    text = page.read_text()
    # the config's analyze() ran over the run directories; its section stays when they are gone
    assert "runs analysed: " + "; ".join(sorted(IDS)) in text
    # REPORT "order" puts lora first, against the alphabetical default
    assert 0 <= text.index("| lora[r=2] |") < text.index("| houlsby[bottleneck=4] |")
    gone = report.write_report(table.parent, sweep_config, workdir=tmp_path / "gone").read_text()
    assert "runs analysed: " + "; ".join(sorted(IDS)) in gone
    assert (table.parent / "tiny_sweep.png").stat().st_size > 0 and (table.parent / "tiny_sweep.svg").exists()
    assert "| adapter | removed | trainable (%) | peak RSS MB | n | mean | sd | 95% CI |" in text
    assert "Paper: none (a test)" in text
    acc = by[(IDS[0], None)]["metrics"]["test_accuracy"] * 100
    share = f"{by[(IDS[0], None)]['trainable_params']:,} ({by[(IDS[0], None)]['trainable_share']:.2f})"
    peak = max(r["peak_host_mb"] for r in rows if r["point"] == IDS[0])
    assert f"| lora[r=2] |  | {share} | {peak:,.0f} | 1 | {acc:.2f} | — | ±— |" in text


def test_statistics():
    s = report.summarize([0.80, 0.82, 0.84])
    assert s["mean"] == pytest.approx(0.82) and s["sd"] == pytest.approx(0.02)
    assert s["ci95"] == pytest.approx(4.302653 * 0.02 / 3 ** 0.5, rel=1e-6)  # t(0.975, 2)
    points = [{"factors": {"k": "a"}, "values": {0: 0.8, 1: 0.9}},
              {"factors": {"k": "b"}, "values": {0: 0.7, 1: 0.85, 2: 0.1}}]
    report.paired(points, {"k": "a"})
    assert points[1]["diff"]["n"] == 2 and points[1]["diff"]["mean"] == pytest.approx(-0.075)
    with pytest.raises(ConfigError, match="matches 0 points"):
        report.paired(points, {"k": "c"})


ABLATIONS = sorted(p for p in (ROOT / "experiments" / "ablations").glob("[a-z]*.py") if "def get_config" in p.read_text())


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_every_ablation_config_expands(path):
    """Each ablation's points build a config (the keys exist; finalize gives a parseable adapter)."""
    from adapters_jax.configs import parse

    module = grid.load_module(path)
    assert module.__doc__ and f"scripts/sweep.py --config experiments/ablations/{path.name}" in module.__doc__
    pts = grid.points(module, str(path))
    assert len({o.get("seed") for o in pts.values()}) >= 3  # three seeds at least
    for overrides in pts.values():
        c = grid.config_for(module, overrides)
        assert c.adapter == "none" or parse(c.adapter)
