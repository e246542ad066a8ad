"""Statistics of a task: what you train on.

    python scripts/data.py rt_polarity                       # counts per split and label, token lengths (minilm-l6)
    python scripts/data.py bbc_news --tokenizer smollm2-135m --max-length 512
    python scripts/data.py reviews.csv --text-column review --label-column stars --split-column split
    python scripts/data.py reviews.csv --split-column split --validation none   # train + test only: no validation
    python scripts/data.py rt_polarity --tokenizer none      # words only, no tokenizer

The first lines say which split rule made the splits (docs/assets.md). Token
lengths are counted before truncation; "cut" is the share of examples longer
than --max-length.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters_jax.data import assets, tasks, tokenize  # noqa: E402
from adapters_jax.errors import AdaptersJaxError, CheckpointError  # noqa: E402

PCTS = (50, 90, 95, 99)


def load_tokenizer(name_or_path: str):
    if name_or_path in assets.ASSETS and assets.get(name_or_path).main is None:
        name_or_path = str(assets.fetch(name_or_path))
    elif name_or_path in assets.ASSETS:  # a GGUF: its tokenizer comes with the model loader
        from adapters_jax.models import load

        return load(name_or_path).tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except OSError as e:  # not a directory with a tokenizer, and not on a reachable hub
        raise CheckpointError(f"{name_or_path}: cannot load a tokenizer from it ({e})") from None


def stats(task: tasks.Task, tokenizer=None, max_length: int = 128) -> str:
    lines = [f"{task.name}: {task.num_labels} labels {list(task.label_names)}  ({task.source})",
             f"splits: {task.split_rule}"]
    head = f"{'split':11} {'n':>7}  " + "  ".join(f"{n[:10]:>10}" for n in task.label_names)
    lines.append(head)
    for split in task.splits:
        labels = np.asarray(task[split]["label"])
        counts = np.bincount(labels, minlength=task.num_labels)
        cells = "  ".join(f"{c:>6} {c / len(labels):3.0%}" for c in counts)
        lines.append(f"{split:11} {len(labels):>7}  {cells}")
    unit = "tokens" if tokenizer is not None else "words"
    lines.append(f"\n{unit} per example")
    lines.append(f"{'split':11}" + "".join(f"{'p' + str(p):>6}" for p in PCTS) + f"{'max':>7}{'mean':>7}" +
                 (f"{'cut@' + str(max_length):>9}" if tokenizer is not None else ""))
    for split in task.splits:
        texts = task[split]["text"]
        if tokenizer is not None:
            n = np.array([len(x) for x in tokenize.encode_texts(texts, tokenizer, 10**9)])
        else:
            n = np.array([len(t.split()) for t in texts])
        pct = "".join(f"{int(np.percentile(n, p)):>6}" for p in PCTS)
        cut = f"{np.mean(n > max_length):>9.1%}" if tokenizer is not None else ""
        lines.append(f"{split:11}{pct}{n.max():>7}{n.mean():>7.1f}{cut}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help=f"built-in task ({', '.join(tasks.names())}), a local file, or a hub data set")
    p.add_argument("--tokenizer", default="minilm-l6", help="model asset, tokenizer dir, or 'none'")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--split-column", default=None)
    p.add_argument("--label-names", default=None, help="comma-separated")
    p.add_argument("--validation", default="from_train", choices=tasks.VALIDATION,
                   help="a file with train and test only: carve validation out of train, or have none")
    a = p.parse_args(argv)
    kw = {}
    if a.name not in tasks.BUILTIN:
        kw = dict(text_column=a.text_column, label_column=a.label_column, validation=a.validation,
                  label_names=a.label_names and a.label_names.split(","))
        if Path(a.name).exists():
            kw["split_column"] = a.split_column
    try:
        task = tasks.load(a.name, **kw)
        tok = None if a.tokenizer == "none" else load_tokenizer(a.tokenizer)
    except AdaptersJaxError as e:  # data, asset, or a model whose tokenizer cannot be read
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(stats(task, tok, a.max_length))
    return 0


if __name__ == "__main__":
    sys.exit(main())
