"""What each benchmark method means, on both sides (no jax, no torch: both workers import it), and how a
parent runs a worker.

Every method is the same work for us and for its peer: the same adapter shape
(bottleneck 64 with ReLU for Houlsby/Pfeiffer, LoRA r=8 alpha=8 on query and
value, IA3 on keys/values/FFN), AdamW (lr 1e-3, weight decay 0.01) behind
global-norm clipping at 1.0, float32, dropout as the model config has it.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BOTTLENECK = 64

# method -> our adapter config string (None: no adapter; "full" trains the base too, "head" only the head)
JAX_SPECS = {
    "full": None,
    "houlsby": f"houlsby[bottleneck={BOTTLENECK},non_linearity=relu]",
    "pfeiffer": f"pfeiffer[bottleneck={BOTTLENECK},non_linearity=relu]",
    "parallel": "parallel",
    "lora": "lora[r=8,alpha=8,attn_matrices=[q,v]]",
    "ia3": "ia3",
    "prefix_tuning": "prefix_tuning",
    "prompt_tuning": "prompt_tuning",
    "head": None,
}
# method -> the peer library that implements the same work
PEERS = {"full": "pytorch", "houlsby": "adapterhub", "pfeiffer": "adapterhub", "lora": "peft", "ia3": "peft"}

MODELS = {"minilm-l6": "classification", "bert-base-random": "classification", "smollm2-135m": "lm"}
# bench models that are no asset: the asset whose model family (and so XLA flag choice) they share
FLAGS_STAND_IN = {"bert-base-random": "minilm-l6"}


def flags_model(model: str) -> str:
    """What to hand adapters_jax.xla_flags.apply_for for a bench model name."""
    return FLAGS_STAND_IN.get(model, model)

def timed(fn, warmup: int = 1, steps: int = 1, sync=lambda out: out):
    """Call fn() `warmup` times, then `steps` times timed; `sync` waits for an output (jax.block_until_ready for
    asynchronous dispatch). Returns (seconds of each warm-up call, seconds of each timed call, the last output)."""
    def once():
        t0 = time.perf_counter()
        out = sync(fn())
        return time.perf_counter() - t0, out

    out = None
    warm = []
    for _ in range(warmup):
        s, out = once()
        warm.append(s)
    times = []
    for _ in range(steps):
        s, out = once()
        times.append(s)
    return warm, times, out


RESULT_TAG = "BENCH_RESULT "


def append_rows(path: str | Path, rows: list[dict]) -> None:
    """Append result rows to a JSONL table (its folder made first): every benchmark's one way to record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def emit(record: dict) -> None:
    """A worker's one result line on stdout (the parent picks it out of any other output)."""
    sys.stdout.write(RESULT_TAG + json.dumps(record) + "\n")
    sys.stdout.flush()


def run_worker(python: str, script: str, cfg: dict, timeout: float, env: dict | None = None) -> dict:
    """One worker process (`script` under the repository root, `env` its environment if given); returns its
    result record, or an error record naming what failed."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run([python, str(ROOT / script), json.dumps(cfg)], capture_output=True, text=True,
                           timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in p.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            rec = json.loads(line[len(RESULT_TAG):])
            rec["process_s"] = time.perf_counter() - t0
            return rec
    tail = (p.stderr or p.stdout).strip().splitlines()[-6:]
    return {"error": f"{script} exited {p.returncode} without a result: " + " | ".join(tail)}
