"""docs/paths.md's tables against the code, so the page cannot drift from the one path grammar.

Every table row's `ours` path and its PEFT / AdapterHub names are read as templates (i a layer
index, NAME and X the adapter's name, LOC a bottleneck location, PROJ a projection, {a,b} a
choice, ... any prefix). For each method, adapters added to tiny BERT / tiny Llama must create
only leaves some row names (and every row must name a leaf they create); every PEFT / AdapterHub
name in a row must be one that interop.to_peft / interop.to_adapterhub writes for those leaves
(whose names interop.from_peft / from_adapterhub read back), and for PEFT every written name must
be in the table.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

import adapters_jax as aj
from adapters_jax import interop, paths
from adapters_jax.models import load_hf_dir

DOC = Path(__file__).resolve().parents[1] / "docs" / "paths.md"
BASES = Path(__file__).parent / "fixtures" / "adapters"
# what each table documents: the adapters that create every leaf it lists (tiny BERT; Llama's table: tiny Llama)
SPECS = {
    "bottleneck": ["double_seq_bn[ln_before=true,ln_after=true,scaling=learned]"],
    "prefix": ["prefix_tuning[prefix_length=2,bottleneck_size=4]", "prefix_tuning[prefix_length=2,flat=true]"],
    "lora": ["lora[r=2,target=(attention/(self/(query|key|value)|output/dense)|intermediate/dense|output/dense)$]"],
    "ia3": [r"ia3[target=(attention/self/(key|value)|intermediate/dense)$,feedforward=layer_\d+/output/dense$]",
            r"ia3[target=(attention/self/(key|value)|intermediate/dense)$]"],  # AdapterHub's placement
    "prompt": ["prompt_tuning[prompt_length=2]"],
}
LLAMA = {"LoRA": ["lora[r=2,target=(q|k|v|o|gate|up|down)_proj$]"], "IA3": ["ia3", "ia3[target=(k|v)_proj$]"],
         "bottleneck": ["double_seq_bn"], "prefix": ["prefix_tuning[prefix_length=2,bottleneck_size=4]"]}


def _tables() -> list[tuple[str, list[str], list[list[str]]]]:
    """(section heading, header cells, rows of cells) of every markdown table."""
    out, section, lines = [], "", DOC.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#"):
            section = line.lstrip("# ")
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            cells = lambda s: [c.strip() for c in s.strip().strip("|").split("|")]  # noqa: E731
            rows, j = [], i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append(cells(lines[j]))
                j += 1
            out.append((section, cells(line), rows))
    return out


def _rx(template: str, torch: bool) -> re.Pattern:
    """A doc template as a regex over real names (our paths, or torch's dotted names)."""
    sep = r"\." if torch else "/"
    t = re.sub(r"\{([^}]*)\}", lambda m: "\0(" + "|".join(m.group(1).split(",")) + ")\0", template)
    parts = re.split(r"(\0[^\0]*\0|\.\.\.|\*|\bNAME\b|\bX\b|\bLOC\b|\bPROJ\b|(?<=[_.])i(?=[./]))", t)
    out = []
    for p in parts:
        if not p:
            continue
        if p.startswith("\0"):
            out.append(p.strip("\0"))
        elif p in ("...", "*"):
            out.append(".*")
        elif p in ("NAME", "X"):
            out.append("t")
        elif p == "LOC":
            out.append(f"(attention{sep}output|output)")
        elif p == "PROJ":
            out.append(".+")
        elif p == "i":
            out.append(r"\d+")
        else:
            out.append(re.escape(p))
    return re.compile("".join(out) + "$")


def _spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


@functools.cache
def _base(name: str):
    return load_hf_dir(BASES / name)


def _written(base_name: str, spec: str):
    model, params = aj.add_adapters(_base(base_name), spec, name="t", init=False)  # the leaves, not their values
    leaves = {k for k in paths.flat(params) if paths.adapter_of(k) == "t"}
    peft = set()
    try:
        peft = set(interop.to_peft(model, params, "t"))
    except interop.InteropError:
        pass
    try:
        ah = set(interop.to_adapterhub(model, params, "t"))
    except interop.InteropError:
        ah = set()
    return leaves, peft, ah


def _union(base_name: str, specs: list[str]):
    out = [set(), set(), set()]
    for spec in specs:
        out = [a | b for a, b in zip(out, _written(base_name, spec))]
    return out


def _check(label, ours_rx, peer_rx, leaves, peft, ah, full_peft=True):
    for leaf in leaves:
        assert any(r.search(leaf) for r in ours_rx), f"{label}: leaf {leaf} is in no row of docs/paths.md"
    for r in ours_rx:
        assert any(r.search(leaf) for leaf in leaves), f"{label}: row {r.pattern} names no leaf the code creates"
    for lib, r in peer_rx:
        names = peft if lib == "peft" else ah
        assert any(r.search(n) for n in names), f"{label}: {lib} name {r.pattern} is not what interop writes"
    if full_peft:
        for n in peft:
            assert any(r.search(n) for lib, r in peer_rx if lib == "peft"), f"{label}: PEFT name {n} not in the table"


BERT_TABLES = [(s, h, rows) for s, h, rows in _tables() if h[0] == "ours"]


@pytest.mark.parametrize("section,header,rows", BERT_TABLES, ids=[s[:20] for s, _, _ in BERT_TABLES])
def test_bert_tables(section, header, rows):
    kind = next(k for k in ("Bottleneck", "Prefix", "LoRA", "IA3", "Prompt") if k in section).lower()
    col = {h: i for i, h in enumerate(header)}
    peer_cols = [(("peft" if h.startswith("PEFT") else "adapterhub"), i) for h, i in col.items()
                 if h.startswith(("PEFT", "AdapterHub"))]
    ours_rx, peer_rx = [], []
    for row in rows:
        ours = _spans(row[col["ours"]])[0]
        ours_rx.append(_rx(ours, torch=False))
        for lib, i in peer_cols:
            names = [s for s in _spans(row[i]) if "." in s or s.isidentifier()][:1]
            peer_rx += [(lib, _rx(n, torch=True)) for n in names]
    _check(section, ours_rx, peer_rx, *_union("tiny-bert", SPECS[kind]))


def test_llama_table():
    (section, header, rows), = [t for t in _tables() if t[1][0] == "method"]
    col = {h.split()[0]: i for i, h in enumerate(header)}
    assert {r[0] for r in rows} == set(LLAMA), "the Llama table's methods changed: update LLAMA here"
    for row in rows:
        ours_rx = [_rx(s, torch=False) for s in _spans(row[col["ours"]])]
        peer_rx = [(lib, _rx(s, torch=True)) for lib, c in (("peft", "PEFT"), ("adapterhub", "AdapterHub"))
                   for s in _spans(row[col[c]].split(" (")[0]) if "." in s]  # a parenthesis: what is also read
        _check(f"Llama {row[0]}", ours_rx, peer_rx, *_union("tiny-llama", LLAMA[row[0]]), full_peft=False)
