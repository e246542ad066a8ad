"""Load generator for scripts/serve.py: N tenants with Zipf-like popularity, closed loop, loopback only.

    python bench/serve_load.py --url http://127.0.0.1:8000 --tenants 256 --adapter-prefix t --requests 200 \\
        --concurrency 16 --max-tokens 32 [--duration 300] [--zipf 1.1] [--classify] [--out bench/results/x.jsonl]

`--concurrency` clients each send a request, wait for its end, send the next (streaming completions, so the
time to first token is measured), until `--requests` are done or `--duration` seconds pass. Tenant k of N
(adapter `{prefix}{k}`) is drawn with probability ~ 1/(k+1)^zipf; --tenants 0 sends everything to the base.
`--warmup` requests go first and are not counted. Prints one JSON line (req/s, generated tokens/s, p50/p99
latency and TTFT, errors, the 1-minute load average at start and end) and appends it to --out with the command.
--churn DIR: meanwhile another client loads an adapter of DIR (POST /v1/load_adapter as hot-K), sends it one
request and unloads it, every --churn-every seconds; the script exits 1 if any load request or churn step
failed. --server-pid: the server's RSS (now and peak) is recorded. `make_adapters` writes N random LoRA
adapters of one base (--labels: with classification heads) for a server to register (--make-adapters DIR).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402  (run as a script: the repository root first)

TOPICS = ["the sea", "a city at night", "bread", "old maps", "rain", "a violin", "winter", "bees", "trains",
          "a quiet library", "mountains", "coffee", "the moon", "gardens", "clocks", "rivers"]


def make_adapters(model: str, out: Path, n: int, spec: str = "lora[r=8]", seed: int = 0, labels: int = 0) -> None:
    """n adapters of `spec` on `model` with random weights (one template saved, the rest its tensors redrawn);
    labels > 0: each with a classification head of that many labels (head.safetensors, for /v1/classify)."""
    from safetensors.numpy import load_file, save_file

    import adapters_jax as aj
    from adapters_jax import paths
    from adapters_jax.models import heads

    base = aj.load(model)
    m, p = aj.add_adapters(base, spec, name="a", head=heads.Classification(labels) if labels else None, init=False)
    first = aj.save_adapter(out / "t0", m, p, "a")
    tensors = load_file(str(first / "adapter.safetensors"))
    head = {k: np.asarray(v) for k, v in paths.flat(p).items() if k.startswith("head/")}
    rng = np.random.default_rng(seed)
    for k in range(n):
        d = out / f"t{k}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "adapter_config.json").write_text((first / "adapter_config.json").read_text())
        save_file({name: (0.02 * rng.standard_normal(v.shape)).astype(v.dtype) for name, v in tensors.items()},
                  str(d / "adapter.safetensors"))
        if head:
            save_file({name: (0.1 * rng.standard_normal(v.shape)).astype(v.dtype) for name, v in head.items()},
                      str(d / "head.safetensors"))


async def run(args) -> dict:
    import httpx

    host = urlparse(args.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"--url {args.url}: the load generator talks to loopback only")
    rng = np.random.default_rng(args.seed)
    weights = 1.0 / np.arange(1, args.tenants + 1) ** args.zipf if args.tenants else None
    total = args.requests + args.warmup
    tenants = (rng.choice(args.tenants, size=total, p=weights / weights.sum()) if args.tenants
               else np.full(total, -1))
    results, next_i = [], 0
    t_end = time.monotonic() + args.duration

    def body(i: int) -> tuple[str, dict]:
        model = args.base if tenants[i] < 0 else f"{args.adapter_prefix}{tenants[i]}"
        topic = TOPICS[i % len(TOPICS)]
        if args.classify:
            return "/v1/classify", {"model": model, "input": [f"A short review about {topic}, number {i}."]}
        return "/v1/completions", {"model": model, "prompt": f"Write one sentence about {topic}.",
                                   "max_tokens": args.max_tokens, "temperature": 0, "ignore_eos": True,
                                   "stream": True}

    async def one(client, i):
        path, b = body(i)
        t0 = time.perf_counter()
        ttft, tokens, status = None, 0, 0
        try:
            if args.classify:
                r = await client.post(args.url + path, json=b)
                status = r.status_code
            else:
                async with client.stream("POST", args.url + path, json=b) as r:
                    status = r.status_code
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            chunk = json.loads(line[6:])
                            n = sum(len(c.get("token_ids", [])) for c in chunk.get("choices", []))
                            if n and ttft is None:
                                ttft = time.perf_counter() - t0
                            tokens += n
        except httpx.HTTPError as e:
            status = f"{type(e).__name__}"
        return {"i": i, "status": status, "latency": time.perf_counter() - t0, "ttft": ttft, "tokens": tokens,
                "tenant": int(tenants[i])}

    async def client_loop(client):
        nonlocal next_i
        while next_i < total and time.monotonic() < t_end:
            i, next_i = next_i, next_i + 1
            results.append(await one(client, i))

    churn = {"loads": 0, "unloads": 0, "requests": 0, "failed": []}
    running = True

    async def churn_loop(client):
        """Load an adapter from --churn, send it a request, unload it; again, while the load runs."""
        k = 0
        sources = sorted(p for p in Path(args.churn).iterdir() if (p / "adapter_config.json").is_file())
        while running:
            name, src = f"hot-{k}", sources[k % len(sources)]
            steps = [("/v1/load_adapter", {"lora_name": name, "lora_path": str(src)}, "loads"),
                     ("/v1/completions" if not args.classify else "/v1/classify",
                      {"model": name, "prompt": "Hot.", "max_tokens": 4, "temperature": 0} if not args.classify
                      else {"model": name, "input": ["Hot."]}, "requests"),
                     ("/v1/unload_adapter", {"lora_name": name}, "unloads")]
            for path, b, what in steps:
                try:
                    r = await client.post(args.url + path, json=b)
                    ok = r.status_code == 200
                except httpx.HTTPError as e:
                    ok, r = False, e
                if ok:
                    churn[what] += 1
                else:
                    churn["failed"].append(f"{path} {name}: {getattr(r, 'status_code', r)}")
            k += 1
            await asyncio.sleep(args.churn_every)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=args.concurrency + 4)) as client:
        if args.warmup:  # compile the server's shapes, not counted
            await asyncio.gather(*[one(client, i) for i in range(args.warmup)])
        next_i = args.warmup
        t0 = time.perf_counter()
        churner = asyncio.create_task(churn_loop(client)) if args.churn else None
        await asyncio.gather(*[client_loop(client) for _ in range(args.concurrency)])
        wall = time.perf_counter() - t0
        running = False
        if churner is not None:
            await churner
        metrics = (await client.get(args.url + "/metrics")).text
    ok = [r for r in results if r["status"] == 200]
    lat = np.asarray([r["latency"] for r in ok]) if ok else np.zeros(1)
    ttft = np.asarray([r["ttft"] for r in ok if r["ttft"] is not None]) if ok else np.zeros(1)
    gauges = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
              if line and not line.startswith("#") and "{" not in line}
    return {"requests": len(results), "ok": len(ok), "errors": len(results) - len(ok), "wall_s": round(wall, 2),
            "req_per_s": round(len(ok) / wall, 3), "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 2),
            "latency_p50_s": round(float(np.percentile(lat, 50)), 3),
            "latency_p99_s": round(float(np.percentile(lat, 99)), 3),
            "ttft_p50_s": round(float(np.percentile(ttft, 50)), 3) if ttft.size else None,
            "ttft_p99_s": round(float(np.percentile(ttft, 99)), 3) if ttft.size else None,
            "distinct_tenants": len({r["tenant"] for r in ok}),
            **({"churn": {**churn, "failed": churn["failed"][:10], "n_failed": len(churn["failed"])}}
               if args.churn else {}),
            **({"server_rss_mb": _rss_mb(args.server_pid)} if args.server_pid else {}),
            "server": {k.replace("adapters_jax_", ""): v for k, v in gauges.items() if any(
                s in k for s in ("hits", "misses", "resident", "registered", "batch_fill", "evictions",
                                 "compiled", "compactions", "adapter_loads"))}}


def _rss_mb(pid: int) -> dict:
    """The server process's resident memory now and at its peak (VmRSS, VmHWM), in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--base", default="base", help="the base model's served name (for --tenants 0)")
    ap.add_argument("--tenants", type=int, default=1)
    ap.add_argument("--adapter-prefix", default="t")
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--duration", type=float, default=300.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--classify", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="")
    ap.add_argument("--churn", default=None, help="a directory of adapters: load, use and unload them during the run")
    ap.add_argument("--churn-every", type=float, default=0.5, help="seconds between churn cycles")
    ap.add_argument("--server-pid", type=int, default=None, help="record this process's RSS (same machine)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--make-adapters", default=None, help="write --tenants random adapters of --model to this DIR")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--spec", default="lora[r=8]")
    ap.add_argument("--labels", type=int, default=0, help="--make-adapters: a classification head of this many labels")
    args = ap.parse_args(argv)
    if args.make_adapters:
        make_adapters(args.model, Path(args.make_adapters), args.tenants, args.spec, labels=args.labels)
        return 0
    load_start = os.getloadavg()[0]
    row = {"label": args.label, "tenants": args.tenants, "zipf": args.zipf, "concurrency": args.concurrency,
           "max_tokens": None if args.classify else args.max_tokens, "kind": "classify" if args.classify else
           "completions", **asyncio.run(run(args))}
    row.update({"loadavg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
                "command": "python " + " ".join(sys.argv)})
    print(json.dumps(row))
    if args.out:
        common.append_rows(args.out, [row])
    failed = row["errors"] + row.get("churn", {}).get("n_failed", 0)
    if args.churn and failed:
        print(f"FAILED: {row['errors']} load requests and {row['churn']['n_failed']} churn steps failed",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
