"""The library's layers go one way (DESIGN.md), and the path grammar is written once.

The import graph is read from the source (every `import` statement, at module
level or inside a function, so a call-time import counts too):

    errors, paths                     leaves: import nothing from the library
    primitives                        <- configs <- modules/ <- models/
    adapters, partition, interop      <- train/, checkpoint, xla_flags
    data/                             stands apart: imports only errors

`python -m pytest tests/test_layers.py` is the check anyone can run.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "adapters_jax"

# Rank of each module (by dotted-name prefix): a module may import only modules of a lower or equal rank,
# and equal only within its own group (a package may import its own modules).
RANKS = [
    ("adapters_jax.errors", 0),
    ("adapters_jax.paths", 0),
    ("adapters_jax.primitives", 1),
    ("adapters_jax.configs", 2),
    ("adapters_jax.adapter_setup", 2.5),  # AdapterSetup and Bank, built from configs' method configs
    ("adapters_jax.modules", 3),
    ("adapters_jax.models", 4),
    # adapter directories and tensor names of PEFT/AdapterHub: below adapters.py, which reads and writes through them
    ("adapters_jax.formats", 4.5),
    ("adapters_jax.interop", 4.5),
    ("adapters_jax.adapters", 5),
    ("adapters_jax.partition", 6),
    ("adapters_jax.bank", 6),
    ("adapters_jax.merging", 6),
    ("adapters_jax.export", 6),  # merged models out (HF dir, GGUF): folds LoRA/IA3, asks paths and models/gguf for names
    ("adapters_jax.composition", 7),  # reads AdapterHub fusion tensors through interop.fill
    ("adapters_jax.checkpoint", 7),
    ("adapters_jax.decoding", 7),
    ("adapters_jax.xla_flags", 7),
    ("adapters_jax.train", 8),
    ("adapters_jax.serve", 8),  # the server: engine + HTTP over the bank, decoding and adapters
    ("adapters_jax.sweeps", 8.5),  # sweeps: one training process per point (train/), tables and plots
    ("adapters_jax", 9),  # the package's __init__: the public API
]
DATA = "adapters_jax.data"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path, source: str | None = None) -> set[str]:
    """Every adapters_jax module `path` imports, anywhere in the file (module level or call time)."""
    tree = ast.parse(path.read_text() if source is None else source)
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("adapters_jax")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("adapters_jax"):
                continue
            for a in node.names:  # `from adapters_jax import paths` imports the module adapters_jax.paths
                sub = f"{base}.{a.name}"
                out.add(sub if (PKG.parent / (sub.replace(".", "/") + ".py")).exists()
                        or (PKG.parent / sub.replace(".", "/")).is_dir() else base)
    return out


def rank(mod: str) -> tuple[str, int]:
    for prefix, r in RANKS:  # the package's own rank covers its __init__ only, not a module without a rank
        if mod == prefix or (mod.startswith(prefix + ".") and prefix != "adapters_jax"):
            return prefix, r
    raise AssertionError(f"{mod} has no rank in tests/test_layers.py: place it in a layer")


def library_files():
    return sorted(PKG.rglob("*.py"))


def graph() -> dict[str, set[str]]:
    return {module_name(f): imports(f) - {module_name(f)} for f in library_files()}


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in sorted(g.get(m, ())):
            if n not in g:
                continue
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])


def test_layers_go_one_way():
    bad = []
    for mod, deps in graph().items():
        if mod.startswith(DATA):  # data stands apart: itself and the error family only
            bad += [(mod, d) for d in deps if not (d.startswith(DATA) or d == "adapters_jax.errors")]
            continue
        group, r = rank(mod)
        for d in deps:
            if d.startswith(DATA):
                continue  # everything above data may read data
            dgroup, dr = rank(d)
            if dr > r or (dr == r and dgroup != group):
                bad.append((mod, d))
    assert not bad, "imports against the layering (module -> imported):\n" + "\n".join(f"  {a} -> {b}" for a, b in bad)


def test_the_checker_sees_call_time_imports():
    """The checker is not blind: an import inside a function counts, and an upward one is a violation."""
    f = PKG / "primitives.py"
    src = f.read_text() + "\n\ndef _late():\n    from adapters_jax.modules import hooks  # noqa\n"
    found = imports(f, src)
    assert "adapters_jax.modules.hooks" in found and "adapters_jax.modules.hooks" not in imports(f)
    assert rank("adapters_jax.modules.hooks")[1] > rank("adapters_jax.primitives")[1]


# Each rule of the path grammar is written in exactly one module.
ONCE = {
    "the q/k/v/FFN projection regexes": r"attention/self/query\|self_attn/q_proj|query\|key\||\[qkv\]_proj|q_proj\|",
    "the HF name rule (numbered segments joined)": r"isdigit\(\)",
    "the adapter group segments": r"\"attention_adapters\":|\"attention_adapters\",",
    "the layer-index grammar": r"layers\?_",
    "hand-written flatten helpers": r"\"/\"\.join\(k\)",
}


@pytest.mark.parametrize("what", sorted(ONCE))
def test_path_grammar_written_once(what):
    rx = re.compile(ONCE[what])
    where = sorted(str(f.relative_to(ROOT)) for f in library_files() if rx.search(f.read_text()))
    allowed = [] if what == "hand-written flatten helpers" else ["adapters_jax/paths.py"]
    assert where == allowed, f"{what} found in {where}; it belongs in {allowed or 'no module (use paths.flat)'}"
