"""Serve one base model and many adapters over HTTP (OpenAI-compatible completions, vLLM-style adapters).

    python scripts/serve.py --model smollm2-135m --adapters adapters/ [--host 127.0.0.1 --port 8000]
        [--max-resident 16 --max-batch 8 --max-queue 256 --max-model-len 512 --bank "lora[r=16]"]
        [--host-cache-mb 1024 --served-model-name NAME --pooling mean --max-labels 8] [--no-warmup]

--model is an asset name, a Hugging Face-format directory or a .gguf file; --adapters a directory whose
subdirectories are saved adapters (aj.save_adapter), each served under its directory name as the request's
`model`. --bank fixes the adapters' common shape (default: the largest of --adapters); adapters loaded at
run time (POST /v1/load_adapter) must fit it. Encoders (BERT family) serve /v1/classify with the head each
adapter directory holds (head.safetensors, optional head_config.json {"labels": [...]}). docs/serving.md.
Before serving, every shape a request can need is compiled (each join or classify batch and prompt bucket up
to --max-model-len, the decode step): the first requests pay no compile; --no-warmup starts at once instead.
SIGTERM or Ctrl-C stops accepting, lets in-flight requests finish, then exits.
"""
import argparse
import logging
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    t0 = time.perf_counter()  # "ready N s after start" counts the imports, the model load and the warm-up
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapters", default=None, help="a directory of saved adapter directories")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-resident", type=int, default=16, help="bank slots: adapters resident at once")
    ap.add_argument("--max-batch", type=int, default=8, help="rows of the running batch")
    ap.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429")
    ap.add_argument("--max-model-len", type=int, default=512, help="prompt + completion tokens per request")
    ap.add_argument("--bank", default=None, help="the adapters' common shape, e.g. 'lora[r=16]'")
    ap.add_argument("--host-cache-mb", type=int, default=1024, help="host memory for adapters read from disk")
    ap.add_argument("--served-model-name", default=None, help="the base's name in requests (default: --model's)")
    ap.add_argument("--pooling", default="mean", help="encoders: the heads' pooling")
    ap.add_argument("--max-labels", type=int, default=8, help="encoders: the most labels a head may have")
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                    help="compile every shape before serving (default: on)")
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")

    from adapters_jax import xla_flags

    xla_flags.apply_for(args.model)
    import uvicorn

    import adapters_jax as aj
    from adapters_jax.errors import AdaptersJaxError
    from adapters_jax.serve.engine import Engine
    from adapters_jax.serve.http import make_app

    try:
        base = aj.load(args.model)
        name = args.served_model_name or Path(str(args.model)).stem
        engine = Engine(base, adapters_dir=args.adapters, bank=args.bank, max_resident=args.max_resident,
                        max_batch=args.max_batch, max_queue=args.max_queue, max_model_len=args.max_model_len,
                        host_bytes=args.host_cache_mb << 20, pooling=args.pooling, max_labels=args.max_labels,
                        name=name, warmup=args.warmup)
    except AdaptersJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    warm = (f", warm-up compiled {engine.warmed['programs']} programs in {engine.warmed['seconds']} s"
            if engine.warmed else "")
    print(f"serving {name!r} + {len(engine.registry)} adapters on http://{args.host}:{args.port} "
          f"({args.max_resident} bank slots, batch {args.max_batch}; ready {time.perf_counter() - t0:.1f} s after "
          f"start{warm})", flush=True)
    # uvicorn drains on SIGTERM, then re-raises it; exit 0 then (a clean shutdown), not -15
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(make_app(engine), host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
