"""Complete prompts with a base model and, optionally, a saved adapter; prints one JSON line per prompt.

    python scripts/generate.py --model smollm2-135m --prompt "The capital of France is" [--prompt ...]
        [--adapter DIR] [--max_new_tokens 32] [--temperature 0] [--top_p 1] [--top_k 0] [--seed 0]
        [--stop STRING ...] [--ignore_eos] [--prompt_ids 1,2,3]

--model is an asset name, a Hugging Face-format directory or a .gguf file; --adapter a directory written
by `aj.save_adapter` (refused if it was trained on another base). Each line holds the prompt, the text,
the new token ids and the finish reason ("stop" or "length"). Bad input is one `error:` line, exit 2.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", default=None, help="a saved adapter directory (aj.save_adapter)")
    ap.add_argument("--prompt", action="append", default=[], help="a text prompt (repeat for a batch)")
    ap.add_argument("--prompt_ids", action="append", default=[], help="a prompt as comma-separated token ids")
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top_p", type=float, default=1.0)
    ap.add_argument("--top_k", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stop", action="append", default=None, help="a stop string (repeatable)")
    ap.add_argument("--ignore_eos", action="store_true", help="do not stop at the end-of-sequence token")
    args = ap.parse_args(argv)

    from adapters_jax import xla_flags

    if hasattr(xla_flags, "apply_for"):
        xla_flags.apply_for(args.model)
    import adapters_jax as aj
    from adapters_jax.errors import AdaptersJaxError

    try:
        prompts = list(args.prompt)
        try:
            prompts += [[int(x) for x in p.split(",") if x.strip()] for p in args.prompt_ids]
        except ValueError as e:
            raise aj.errors.ConfigError(f"--prompt_ids must be comma-separated integers ({e})") from None
        if not prompts:
            raise aj.errors.ConfigError("give at least one --prompt or --prompt_ids")
        base = aj.load(args.model)
        model, params = base.model, base.params
        if args.adapter:
            model, params = aj.load_adapter(base, args.adapter)
        outs = aj.generate(model, params, prompts, args.max_new_tokens, temperature=args.temperature,
                           top_p=args.top_p, top_k=args.top_k, seed=args.seed, stop=args.stop,
                           tokenizer=base.tokenizer, ignore_eos=args.ignore_eos)
    except AdaptersJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p, o in zip(prompts, outs):
        print(json.dumps({"prompt": p, "text": o.text, "ids": o.ids, "finish_reason": o.finish_reason}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
