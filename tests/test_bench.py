"""Smoke test of scripts/bench.py: one tiny configuration writes its JSON line (no timing assertions)."""
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
                        "--seq", "8", "--methods", "houlsby", "--warmup", "1", "--steps", "1", "--out", str(out)],
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
    assert "| houlsby |" in p.stdout
