"""Training cost of every method against full fine-tuning and against the PyTorch peers, in one run.

    python scripts/bench.py --model minilm-l6 --batch 32 --seq 128 \
        --methods full,houlsby,pfeiffer,parallel,lora,ia3,prefix_tuning,prompt_tuning,head \
        --peers --out bench/results/minilm-l6.jsonl

    # noisy machine: 3 rounds of the interleaved pairs; the table shows each row's median over the rounds, and
    # our tokens/s over the peer's two ways: the ratio of the two medians, and the median of the rounds' ratios
    python scripts/bench.py --model minilm-l6 --methods full,houlsby,lora --peers --rounds 3

    # scaling: one axis at a time (comma lists; every batch x seq pair runs)
    python scripts/bench.py --model minilm-l6 --batch 32 --seq 32,64,128,256 --methods full,houlsby,lora

    # the tables of an earlier run, recomputed from its JSONL (runs nothing)
    python scripts/bench.py --table bench/results/minilm-l6_b32_t128_rounds3.jsonl

Each configuration runs in its own process (bench/jax_worker.py with this
interpreter, bench/peers.py with the peers' --peers-python), so peak RSS is per
configuration. Peers run right after our run of the same method (interleaved, so
a slow drift in the machine's load touches both alike); a peer refuses to run if
it would train a different number of parameters than ours. The matmul peak is measured in the same run, before and
after the configurations, by XLA and (with --peers) by PyTorch; each row's share
of the peak is its achieved FLOP/s over the best of those. Writes one JSON line
per configuration (and per probe) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import JAX_SPECS, MODELS, PEERS, append_rows, run_worker  # noqa: E402


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def fmt_mib(x) -> str:
    return "-" if x is None else f"{x / 2**20:,.1f}" if x >= 2**20 / 10 else f"{x / 2**20:.3f}"


def table(rows: list[dict]) -> str:
    head = ("| model | B | T | impl | method | step s (min-max) | tokens/s | vs full | jax/peer, ratio of medians "
            "| jax/peer, median of round ratios | compile s "
            "| trainable MiB | grad+opt MiB | ckpt MiB | peak RSS MiB | GFLOP/step | GFLOP/s | % peak |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            out.append(f"| {r.get('model')} | {r.get('batch')} | {r.get('seq')} | {r.get('impl')} | {r.get('method')} "
                       f"| error: {r['error'][:80]} |" + " |" * 13)
            continue
        gf = r.get("model_flops")
        out.append(
            f"| {r['model']} | {r['batch']} | {r['seq']} | {r['impl']} | {r['method']} "
            f"| {r['step_s_median']:.3f} ({r['step_s_min']:.2f}-{r['step_s_max']:.2f}) | {r['tokens_per_s']:,.0f} "
            f"| {r.get('step_vs_full', float('nan')):.2f} | {r.get('jax_over_peer', float('nan')):.2f} "
            f"| {r.get('jax_over_peer_round_median', float('nan')):.2f} "
            f"| {'-' if r.get('compile_s') is None else format(r['compile_s'], '.1f')} "
            f"| {fmt_mib(r['trainable_bytes'])} | {fmt_mib(r['grad_bytes'] + r['opt_state_bytes'])} "
            f"| {fmt_mib(r.get('checkpoint_bytes'))} | {fmt_mib(r['peak_rss_bytes'])} "
            f"| {'-' if not gf else format(gf / 1e9, '.0f')} "
            f"| {'-' if not gf else format(r['achieved_flops_per_s'] / 1e9, '.0f')} "
            f"| {'-' if r.get('peak_share') is None else format(100 * r['peak_share'], '.0f')} |")
    return "\n".join(out).replace(" nan ", " - ")


def summarize(rows: list[dict]) -> list[dict]:
    """One row per (impl, method, batch, seq) over the rounds: step time median of the rounds' medians, min and
    max over all rounds' steps; other fields from the first round. A JAX row with a peer also gets
    `jax_over_peer_rounds` (our tokens/s over the peer's within each round, the pair having run back to back)
    and their median, `jax_over_peer_round_median`; `annotate` adds `jax_over_peer`, the ratio of the two
    rows' median tokens/s."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["impl"], r["method"], r["model"], r["batch"], r["seq"]), []).append(r)
    out = []
    for (impl, method, *_), rs in groups.items():
        good = [r for r in rs if "error" not in r]
        if not good:
            out.append(rs[0])
            continue
        row = dict(good[0])
        row.pop("round", None)
        if len(rs) > 1:
            row["rounds"] = len(rs)
            row["round_errors"] = len(rs) - len(good)
            row["step_s_round_medians"] = [r["step_s_median"] for r in good]
            row["step_s_median"] = statistics.median(row["step_s_round_medians"])
            row["step_s_min"] = min(r["step_s_min"] for r in good)
            row["step_s_max"] = max(r["step_s_max"] for r in good)
            row["tokens_per_s"] = row["batch"] * row["seq"] / row["step_s_median"]
            if row.get("model_flops"):
                row["achieved_flops_per_s"] = row["model_flops"] / row["step_s_median"]
        out.append(row)
    by_round = {(r["impl"], r["method"], r["model"], r["batch"], r["seq"], r.get("round")): r
                for r in rows if "error" not in r}
    rounds = sorted({r.get("round") for r in rows}, key=lambda x: -1 if x is None else x)
    for row in out:
        if row["impl"] == "jax" and "error" not in row and row["method"] in PEERS:
            ratios = []
            for rnd in rounds:
                ours = by_round.get(("jax", row["method"], row["model"], row["batch"], row["seq"], rnd))
                peer = by_round.get((PEERS[row["method"]], row["method"], row["model"], row["batch"], row["seq"], rnd))
                if ours and peer:
                    ratios.append(ours["tokens_per_s"] / peer["tokens_per_s"])
            if ratios:
                row["jax_over_peer_rounds"] = ratios
                row["jax_over_peer_round_median"] = statistics.median(ratios)
    return out


def annotate(rows: list[dict], peak: float | None) -> None:
    """Ratios inside one run: step time over our full fine-tuning's, our tokens/s over the peer's."""
    ok = [r for r in rows if "error" not in r]
    key = lambda r: (r["model"], r["batch"], r["seq"])
    jax_rows = {key(r) + (r["method"],): r for r in ok if r["impl"] == "jax"}
    for r in ok:
        full = jax_rows.get(key(r) + ("full",)) if r["impl"] == "jax" else None
        if full is not None:
            r["step_vs_full"] = r["step_s_median"] / full["step_s_median"]
            r["grad_opt_vs_full"] = (r["grad_bytes"] + r["opt_state_bytes"]) / (full["grad_bytes"] + full["opt_state_bytes"])
            r["peak_rss_vs_full"] = r["peak_rss_bytes"] / full["peak_rss_bytes"]
        r["opt_state_over_trainable"] = r["opt_state_bytes"] / max(r["trainable_bytes"], 1)
        if peak and r.get("achieved_flops_per_s"):
            r["matmul_peak_flops_per_s"] = peak
            r["peak_share"] = r["achieved_flops_per_s"] / peak
        if r["impl"] != "jax":
            ours = jax_rows.get(key(r) + (r["method"],))
            if ours is not None:
                ratio = ours["tokens_per_s"] / r["tokens_per_s"]
                r["jax_over_peer"] = ratio
                ours["jax_over_peer"] = ratio
                ours["peer"] = r["impl"]
                ours["peer_trainable_params"] = r.get("trainable_params")
                if "jax_over_peer_round_median" in ours:
                    r["jax_over_peer_round_median"] = ours["jax_over_peer_round_median"]


def print_summary(summary: list[dict]) -> None:
    print(table(summary))
    for r in summary:
        if r.get("jax_over_peer_rounds") and len(r["jax_over_peer_rounds"]) > 1:
            print(f"{r['method']}: jax/peer per round " + ", ".join(f"{x:.2f}" for x in r["jax_over_peer_rounds"])
                  + f" (median {r['jax_over_peer_round_median']:.2f}; ratio of the medians {r['jax_over_peer']:.2f})")


def tables_from_jsonl(path: str) -> None:
    """Recompute and print the tables of every run in a JSONL this script wrote: from its per-round rows
    (`config_round`) where it has them, else from its `config` rows; the matmul peak from its `run` line."""
    runs: list[tuple[dict, list[dict], list[dict]]] = []
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if r["kind"] == "run":
            runs.append((r, [], []))
        elif r["kind"] in ("config", "config_round") and runs:
            runs[-1][1 if r["kind"] == "config" else 2].append(r)
    for info, configs, per_round in runs:
        summary = summarize([{k: v for k, v in r.items() if k != "kind"} for r in (per_round or configs)])
        annotate(summary, info.get("matmul_peak_flops_per_s"))
        print(f"\n{info['command']}\n({info.get('started')} - {info.get('finished')}, load avg "
              f"{info.get('load_avg_start')} -> {info.get('load_avg_end')})\n")
        print_summary(summary)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", metavar="JSONL", help="print the tables of a JSONL written earlier, run nothing")
    ap.add_argument("--model", default="minilm-l6", choices=sorted(MODELS))
    ap.add_argument("--batch", default="32", help="batch size, or a comma list (every batch x seq pair runs)")
    ap.add_argument("--seq", default="128", help="sequence length, or a comma list")
    ap.add_argument("--methods", default="full,houlsby,pfeiffer,parallel,lora,ia3,prefix_tuning,prompt_tuning,head")
    ap.add_argument("--peers", action="store_true", help="also run the PyTorch peers, interleaved with ours")
    ap.add_argument("--peers-python", default=str(ROOT / ".venv-peers/bin/python"))
    ap.add_argument("--dtype", default="float32", help="compute dtype: float32, or bfloat16 on GPU/TPU")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps after compile")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median, min, max)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat every configuration (ours then the peer's, back to back) this many times")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    ap.add_argument("--out", help="JSONL file to write (appends)")
    args = ap.parse_args(argv)
    if args.table:
        tables_from_jsonl(args.table)
        return 0

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in JAX_SPECS]
    if bad:
        ap.error(f"unknown methods {bad}; choose from {sorted(JAX_SPECS)}")
    if args.peers and not Path(args.peers_python).exists():
        ap.error(f"--peers needs the peers' interpreter at {args.peers_python} (see --peers-python)")
    batches = [int(x) for x in args.batch.split(",")]
    seqs = [int(x) for x in args.seq.split(",")]
    points = [(b, t) for b in batches for t in seqs]
    command = "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    run_info = {"command": command, "host": platform.node(), "cpu_count": os.cpu_count(),
                "machine": platform.processor() or platform.machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "load_avg_start": load_avg()}
    model_dir = None
    if args.peers and args.model == "minilm-l6":
        from adapters_jax.data import assets
        model_dir = str(assets.model_path("minilm-l6"))

    rows, probes = [], []

    def probe(when):
        cfg = {"probe": "matmul", "dtype": args.dtype, "model": args.model}
        probes.append({**run_worker(sys.executable, "bench/jax_worker.py", cfg, 600), "when": when})
        if args.peers:
            probes.append({**run_worker(args.peers_python, "bench/peers.py", cfg, 600), "when": when})

    probe("start")
    model_config = ours = None
    common = {"model": args.model, "dtype": args.dtype, "warmup": args.warmup, "steps": args.steps}
    for b, t, rnd, m in [(b, t, rnd, m) for b, t in points for rnd in range(args.rounds) for m in methods]:
        cfg = {**common, "method": m, "batch": b, "seq": t}
        for impl in ["jax"] + ([PEERS[m]] if args.peers and m in PEERS else []):
            if impl == "jax":
                ours = rec = run_worker(sys.executable, "bench/jax_worker.py", cfg, args.timeout)
                model_config = rec.get("model_config", model_config)
            elif model_config is None or "error" in ours:
                rec = {"error": "no model config or param count (our run of this configuration failed first)"}
            else:
                pcfg = {**cfg, "model_config": model_config, "model_dir": model_dir,
                        "jax_trainable_params": ours["trainable_params"]}
                rec = run_worker(args.peers_python, "bench/peers.py", pcfg, args.timeout)
            rec = {"impl": impl, "method": m, "model": args.model, "batch": b, "seq": t, **rec,
                   "load_avg": load_avg(), "round": rnd}
            rec.pop("model_config", None)
            rows.append(rec)
            status = rec.get("error") or f"{rec['step_s_median']:.3f} s/step"
            print(f"[{time.strftime('%H:%M:%S')}] {args.model} B={b} T={t} round {rnd} {impl:10s} {m:14s} {status} "
                  f"(load {rec['load_avg'][0]})", file=sys.stderr, flush=True)
    probe("end")

    peaks = [v for p in probes if "flops_per_s" in p for v in p["flops_per_s"].values()]
    peak = max(peaks) if peaks else None
    summary = summarize(rows)
    annotate(summary, peak)
    run_info.update({"load_avg_end": load_avg(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "matmul_peak_flops_per_s": peak, "model_config": model_config})
    if args.out:
        append_rows(args.out, [{"kind": "run", **run_info}, *({"kind": "probe", **p} for p in probes),
                               *({"kind": "config", **r} for r in summary),
                               *({"kind": "config_round", **r} for r in (rows if args.rounds > 1 else []))])
    print(f"\n{command}\nload avg {run_info['load_avg_start']} -> {run_info['load_avg_end']}; matmul peak "
          f"{'-' if peak is None else format(peak / 1e9, '.0f')} GFLOP/s "
          f"({', '.join(p['impl'] + ' ' + ' '.join(f'{k} {v / 1e9:.0f}' for k, v in p['flops_per_s'].items()) for p in probes if 'flops_per_s' in p)})\n")
    print_summary(summary)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
