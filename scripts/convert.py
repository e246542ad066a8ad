"""Convert adapters between adapters_jax, PEFT and AdapterHub directories, or write a merged model.

    python scripts/convert.py adapter --base minilm-l6 --from DIR --to DIR --format peft|adapterhub|ours
        [--name NAME] [--no-head]
    python scripts/convert.py merged --base smollm2-135m [--adapter DIR] --to DIR --format hf|gguf
        [--dtype float32|float16|bfloat16] [--drop-head]

--base is an asset name, a Hugging Face-format directory or a .gguf file: the model the adapter
belongs to (PEFT and AdapterHub directories are read against it, ours is refused on another base).
--from / --adapter may be any of the three adapter formats (docs/interop.md). `adapter` writes the
adapter (and its classification head, unless --no-head) in --format; `merged` folds the adapter's
LoRA/IA3 into the base and writes an HF directory or a GGUF file (adapters_jax.export.export_merged).
Each prints one JSON line saying what was written; bad input is one `error:` line, exit 2, and
nothing is left at --to.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("adapter", help="an adapter directory in another format")
    a.add_argument("--base", required=True)
    a.add_argument("--from", dest="src", required=True, help="an adapter directory: ours, PEFT's or AdapterHub's")
    a.add_argument("--to", required=True)
    a.add_argument("--format", required=True, choices=["ours", "peft", "adapterhub"])
    a.add_argument("--name", default=None, help="the adapter's name (default: the one saved)")
    a.add_argument("--no-head", action="store_true", help="leave a saved classification head out")
    m = sub.add_parser("merged", help="the base with the adapter folded in, as an HF directory or a GGUF file")
    m.add_argument("--base", required=True)
    m.add_argument("--adapter", default=None, help="an adapter directory in any of the three formats")
    m.add_argument("--to", required=True)
    m.add_argument("--format", required=True, choices=["hf", "gguf"])
    m.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    m.add_argument("--drop-head", action="store_true", help="write the base without a head HF has no equal of")
    args = ap.parse_args(argv)

    import adapters_jax as aj
    from adapters_jax import formats
    from adapters_jax.errors import AdaptersJaxError

    try:
        base = aj.load(args.base)
        model, params = base.model, base.params
        src = args.src if args.command == "adapter" else args.adapter
        name, src_format = None, None
        if src:
            src_format, _ = formats.detect(src)
            model, params = aj.load_adapter(base, src, name=getattr(args, "name", None))
            name = model.adapters.active[-1]
        if args.command == "adapter":
            out = aj.save_adapter(args.to, model, params, name, base_fingerprint=base.fingerprint,
                                  format=args.format, with_head=not args.no_head)
            report = {"from": str(src), "from_format": src_format, "to": str(out), "format": args.format,
                      "name": name, "spec": model.adapters.get(name).spec}
        else:
            from adapters_jax.export import export_merged  # imported here: only `merged` needs it

            out = export_merged(model, params, args.to, format=args.format, dtype=args.dtype,
                                tokenizer=base.tokenizer, drop_head=args.drop_head)
            report = {"adapter": src, "adapter_format": src_format, "to": str(out), "format": args.format,
                      "dtype": args.dtype, "folded": name}
    except AdaptersJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
