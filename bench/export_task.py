"""Write a built-in task's splits (texts and labels, as the library splits them) to one JSON file for
bench/peer_quality.py, whose interpreter has no jax. Run with the library's interpreter:

    python bench/export_task.py rt_polarity --model minilm-l6 --max-length 64 --out bench/tmp/rt_polarity.json

Besides the texts it records the task's content fingerprint (`Task.fingerprint`, which the peer script
recomputes from the texts) and, per split, the sha256 of the token ids our training run feeds the model
(`tokenize.encode_texts` with the model's tokenizer at --max-length), so the peer script can show that its
own tokenization of the same texts gives the same ids.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters_jax.data import assets, tasks, tokenize  # noqa: E402


def ids_sha256(ids) -> str:
    """sha256 over the token ids of a split, one row after another (the peer script computes the same)."""
    h = hashlib.sha256()
    for row in ids:
        h.update((",".join(str(int(t)) for t in row) + "\n").encode())
    return h.hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("task", choices=tasks.names())
    ap.add_argument("--model", default="minilm-l6", help="asset whose tokenizer fixes the ids' checksums")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    task = tasks.load_builtin(args.task)
    model_dir = assets.model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    splits = {}
    for split in tasks.SPLITS:
        d = task[split]
        texts, labels = list(d["text"]), [int(x) for x in d["label"]]
        splits[split] = {"text": texts, "label": labels,
                         "ids_sha256": ids_sha256(tokenize.encode_texts(texts, tokenizer, args.max_length))}
    out = {"task": task.name, "source": task.source, "label_names": list(task.label_names),
           "fingerprint": task.fingerprint, "model": args.model, "model_dir": str(model_dir),
           "max_length": args.max_length, "splits": splits}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out))
    print(f"{args.out}: " + ", ".join(f"{s} {len(splits[s]['label'])}" for s in tasks.SPLITS)
          + f"; fingerprint {task.fingerprint[:12]}")


if __name__ == "__main__":
    main()
