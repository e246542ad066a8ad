"""scripts/bench.py and its workers: one tiny configuration writes its JSON line (no timing assertions), the
round summary's two ratios, and the gradient bytes the JAX worker measures."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("impl", "method", "step_s_median", "step_s_min", "step_s_max", "tokens_per_s", "compile_s",
          "trainable_bytes", "opt_state_bytes", "grad_bytes", "param_bytes", "peak_rss_bytes", "checkpoint_bytes",
          "model_flops", "achieved_flops_per_s", "peak_share", "xla_temp_bytes")


def test_bench_writes_jsonl(tmp_path, asset_path):
    asset_path("minilm-l6")
    out = tmp_path / "b.jsonl"
    p = subprocess.run([sys.executable, str(ROOT / "scripts/bench.py"), "--model", "minilm-l6", "--batch", "2",
                        "--seq", "8", "--methods", "houlsby", "--warmup", "1", "--steps", "1", "--rounds", "1", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    configs = [r for r in rows if r["kind"] == "config"]
    assert [r["method"] for r in configs] == ["houlsby"]
    row = configs[0]
    for f in FIELDS:
        assert f in row, f
    assert row["impl"] == "jax"
    assert abs(row["opt_state_bytes"] / row["trainable_bytes"] - 2.0) < 0.01
    assert row["grad_bytes"] == row["trainable_bytes"] < row["param_bytes"]
    assert "| houlsby |" in p.stdout
    per_round = [r for r in rows if r["kind"] == "config_round"]
    assert per_round == []  # one round, one worker process: no per-round rows (how rounds combine: the next test)
    assert "rounds" not in row and "step_s_round_medians" not in row  # a single round's row is the worker's own


def test_rounds_summary_and_paired_ratios():
    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "scripts/bench.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    summarize, annotate = script.summarize, script.annotate

    def row(impl, rnd, step):
        return {"impl": impl, "method": "lora", "model": "m", "batch": 4, "seq": 8, "round": rnd,
                "step_s_median": step, "step_s_min": step - 0.1, "step_s_max": step + 0.1, "tokens_per_s": 32 / step,
                "grad_bytes": 1, "opt_state_bytes": 2, "trainable_bytes": 1, "peak_rss_bytes": 1, "model_flops": 64.0}

    rows = [row("jax", 0, 2.0), row("peft", 0, 2.2), row("jax", 1, 1.0), row("peft", 1, 1.0),
            row("jax", 2, 1.5), row("peft", 2, 3.0)]
    summary = summarize(rows)
    annotate(summary, peak=None)
    ours, peer = summary
    assert (ours["impl"], peer["impl"]) == ("jax", "peft")
    assert ours["step_s_round_medians"] == [2.0, 1.0, 1.5] and ours["step_s_median"] == 1.5
    assert (ours["step_s_min"], ours["step_s_max"]) == (0.9, 2.1)
    assert peer["step_s_median"] == 2.2 and ours["tokens_per_s"] == 32 / 1.5
    assert ours["jax_over_peer_rounds"] == [2.2 / 2.0, 1.0, 2.0]
    assert ours["jax_over_peer_round_median"] == 2.2 / 2.0  # median of the paired ratios
    assert abs(ours["jax_over_peer"] - 2.2 / 1.5) < 1e-12  # ratio of the medians
    assert peer["jax_over_peer_round_median"] == ours["jax_over_peer_round_median"]
    assert "| 1.47 | 1.10 |" in script.table(summary)
    assert ours["achieved_flops_per_s"] == 64.0 / 1.5


def test_gradient_bytes_are_what_the_step_differentiates(asset_path):
    """The JAX worker's grad_bytes: the gradient the train step hands its optimizer. With an adapter that is the
    trainable leaves only (no gradient for the frozen base); with full fine-tuning, every param."""
    asset_path("minilm-l6")
    from bench.jax_worker import train_setup, tree_bytes

    cfg = {"model": "minilm-l6", "batch": 2, "seq": 8}
    adapter = train_setup({**cfg, "method": "houlsby"})
    grad, trainable, params = adapter.gradient_bytes(), tree_bytes(adapter.trainable), tree_bytes(adapter.params)
    assert grad == trainable
    assert grad < params / 10
    full = train_setup({**cfg, "method": "full"})
    assert full.gradient_bytes() == tree_bytes(full.params)


def test_adapterdrop_speed_writes_a_row_per_mode_layer_count_and_round(tmp_path):
    """bench/adapterdrop_speed.py on the tiny RoBERTa (2 layers): n = 0, 1, 2 for train and forward, 2 rounds
    (no timing asserted; the rows and the table's speed-up of n = 0 against itself)."""
    out = tmp_path / "ad.jsonl"
    p = subprocess.run([sys.executable, str(ROOT / "bench/adapterdrop_speed.py"), "--model",
                        str(ROOT / "tests/fixtures/tiny-roberta"), "--spec", "houlsby[bottleneck=4]", "--batch", "2",
                        "--seq", "8", "--rounds", "2", "--warmup", "1", "--steps", "1", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["mode"], r["dropped_layers"], r["round"]) for r in rows) == sorted(
        (m, n, r) for m in ("train", "forward") for n in range(3) for r in range(2))
    assert all(r["seconds"] > 0 for r in rows)
    assert "| train speed-up | 1.00 |" in p.stdout
