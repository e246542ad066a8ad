"""AdapterHub's composition blocks (Stack, Parallel, Fuse, Average, BatchSplit), the fusion layer's config, and
the checks run when a block is activated. What the blocks compute at a hook is modules/composition.py."""
from __future__ import annotations

from dataclasses import dataclass

from adapters_jax.configs import Bottleneck
from adapters_jax.errors import ConfigError


class Block:
    """AdapterHub's AdapterCompositionBlock: adapter names or blocks; hashable, so a linen attribute."""

    def __init__(self, *children):
        kind = type(self).__name__
        if not children:
            raise ConfigError(f"{kind} needs at least one adapter")
        for c in children:
            if not isinstance(c, (str, Block)):
                raise ConfigError(f"{kind}: {c!r} is neither an adapter name nor a composition block")
        self.children = tuple(children)

    def _extra(self) -> tuple:
        return ()

    def __eq__(self, other):
        return type(other) is type(self) and other.children == self.children and other._extra() == self._extra()

    def __hash__(self):
        return hash((type(self).__name__, self.children, self._extra()))

    def __repr__(self):  # AdapterHub's repr: Stack[a, b]
        return f"{type(self).__name__}[{', '.join(map(str, self.children))}]"

    def __iter__(self):
        return iter(self.children)

    def __len__(self):
        return len(self.children)

    def first(self) -> str:
        c = self.children[0]
        return c.first() if isinstance(c, Block) else c

    def last(self) -> str:
        c = self.children[-1]
        return c.last() if isinstance(c, Block) else c

    def flatten(self) -> tuple[str, ...]:
        """Every adapter name in the block, in order of first appearance."""
        out: list[str] = []
        for c in self.children:
            for n in (c.flatten() if isinstance(c, Block) else (c,)):
                if n not in out:
                    out.append(n)
        return tuple(out)

    def blocks(self):
        """This block and every block nested in it."""
        yield self
        for c in self.children:
            if isinstance(c, Block):
                yield from c.blocks()

    @property
    def parallel_channels(self) -> int:
        return max(c.parallel_channels if isinstance(c, Block) else 1 for c in self.children)


class Stack(Block):
    """Each child in turn at every hook, each reading what the one before wrote."""


class Parallel(Block):
    """Every example through each child: the batch is repeated K times, rows k*B..(k+1)*B through child k."""

    @property
    def parallel_channels(self) -> int:
        return len(self.children)


class Fuse(Block):
    """AdapterFusion (Pfeiffer et al. 2021): attention over the children's up-projections.

    Runs the fusion layer `name` (default AdapterHub's: the children's last adapters joined by
    commas), added with adapters_jax.composition.add_fusion.
    """

    def __init__(self, *children, name: str | None = None):
        super().__init__(*children)
        self._name = name

    def _extra(self):
        return (self._name,)

    @property
    def name(self) -> str:
        return self._name or ",".join(c if isinstance(c, str) else c.last() for c in self.children)

    @property
    def adapters(self) -> tuple[str, ...]:
        """The adapters whose up-projections are fused (a Stack child contributes its last)."""
        return tuple(c if isinstance(c, str) else c.last() for c in self.children)


class Average(Block):
    """The weighted mean of the children's outputs; weights default to 1/K and are normalised to sum 1."""

    def __init__(self, *children, weights=None, normalize_weights: bool = True):
        super().__init__(*children)
        k = len(self.children)
        if weights is None:
            weights = [1.0 / k] * k
        weights = [float(w) for w in weights]
        if len(weights) != k:
            raise ConfigError(f"Average over {k} adapters {list(self.children)} got {len(weights)} weights {weights}; "
                              "give one weight per child")
        if normalize_weights:
            total = sum(weights)
            if total == 0:
                raise ConfigError(f"Average weights {weights} sum to 0 and cannot be normalised")
            weights = [w / total for w in weights]
        self.weights = tuple(weights)

    def _extra(self):
        return self.weights


class BatchSplit(Block):
    """Consecutive examples to each child: the first batch_sizes[0] to the first child, and so on."""

    def __init__(self, *children, batch_sizes):
        super().__init__(*children)
        k = len(self.children)
        sizes = [batch_sizes] * k if isinstance(batch_sizes, int) else list(batch_sizes)
        if len(sizes) != k or any(not isinstance(s, int) or s < 0 for s in sizes):
            raise ConfigError(f"BatchSplit over {k} adapters needs {k} non-negative integer batch_sizes, "
                              f"got {batch_sizes!r}")
        self.batch_sizes = tuple(sizes)

    def _extra(self):
        return self.batch_sizes


# AdapterHub's ALLOWED_NESTINGS without Split and MultiTask (not built)
ALLOWED = {
    Stack: (str, Fuse, Parallel, BatchSplit, Average),
    Fuse: (str, Stack),
    Parallel: (str, Stack, BatchSplit, Average),
    BatchSplit: (str, Stack, BatchSplit, Average),
    Average: (str, Stack, BatchSplit),
}
SUPPORTED = "Stack, Parallel, Fuse, Average, BatchSplit"


@dataclass(frozen=True)
class Fusion:
    """An AdapterFusion layer's config (AdapterHub's AdapterFusionConfig) and the adapters it fuses.

    The defaults are AdapterHub's "dynamic" preset; FUSION_PRESETS["static"] drops the value matrix.
    """

    adapters: tuple[str, ...] = ()
    key: bool = True
    query: bool = True
    value: bool = True
    query_before_ln: bool = False
    regularization: bool = True
    residual_before: bool = False
    temperature: bool = False
    value_before_softmax: bool = True
    value_initialized: bool = True
    dropout_prob: float | None = None
    method = "fusion"


FUSION_PRESETS = {
    "dynamic": {},
    "static": dict(value=False, regularization=False, value_initialized=False),
}


# --- validation (at activation) ---

def placement(c: Bottleneck) -> tuple:
    """Where an adapter sits: the hooks it has, the layers it leaves out."""
    return (c.mh_adapter, c.output_adapter, tuple(sorted(c.leave_out)))


def _bottleneck_of(setup, name: str) -> Bottleneck:
    a = setup.get(name)  # raises naming the adapters that exist
    if len(a.methods) != 1 or not isinstance(a.methods[0], Bottleneck):
        kinds = "|".join(getattr(m, "method", type(m).__name__) for m in a.methods)
        raise ConfigError(f"adapter {name!r} is {kinds}: composition blocks ({SUPPORTED}) compose bottleneck "
                          "adapters only; activate plain names to apply LoRA/IA3/prefix/prompt adapters together")
    return a.methods[0]


def fusion_of(setup, name: str) -> Fusion:
    if name not in setup.names or not isinstance(setup.get(name).methods[0], Fusion):
        raise ConfigError(f"no fusion layer named {name!r}; add it with adapters_jax.composition.add_fusion "
                          f"(fusions here: {[a.name for a in setup.adapters if isinstance(a.methods[0], Fusion)]})")
    return setup.get(name).methods[0]


def _nesting(block, level: int = 0) -> None:
    """AdapterHub's validate_composition: allowed child types, and only Stacks or names below level 1."""
    if level > 1 and not isinstance(block, Stack):
        raise ConfigError(f"composition too deep: {block!r} at level {level} (only a Stack or names nest that deep)")
    if type(block) not in ALLOWED:
        raise ConfigError(f"{type(block).__name__} is not a composition block here; supported: {SUPPORTED} "
                          "(AdapterHub's Split and MultiTask are not built)")
    for c in block.children:
        if isinstance(c, Block):
            if not isinstance(c, ALLOWED[type(block)]):
                raise ConfigError(f"cannot nest {type(c).__name__} in {type(block).__name__} ({block!r}); "
                                  f"allowed: {', '.join(t.__name__ for t in ALLOWED[type(block)])}")
            _nesting(c, level + 1)


def check(setup, block: Block, family: str) -> tuple[str, ...]:
    """Refuse what cannot run (naming it); return the names the block makes active: adapters, then fusions."""
    if not isinstance(block, Block):
        raise ConfigError(f"{block!r} is not a composition block ({SUPPORTED})")
    if setup.bank is not None:
        raise ConfigError(f"this model has adapter bank {setup.bank.name!r}; composition blocks and a bank do not "
                          "run together (activate plain names beside the bank)")
    _nesting(block)
    cfgs = {n: _bottleneck_of(setup, n) for n in block.flatten()}
    where = {n: placement(c) for n, c in cfgs.items()}
    if len(set(where.values())) > 1 and any(not isinstance(b, Stack) for b in block.blocks()):
        # a Fuse/Parallel/Average/BatchSplit block reads its first and last adapter wherever the setup runs
        raise ConfigError(f"{block!r}: its adapters sit at different hooks or layers {where} (mh_adapter, "
                          "output_adapter, leave_out); only a plain Stack composes such adapters")
    fusions = []
    for b in block.blocks():
        if isinstance(b, Parallel) and family != "bert":
            raise ConfigError(f"{b!r}: Parallel repeats the batch at the model's input, built for encoders (BERT "
                              f"family) only, not {family}")
        if isinstance(b, Fuse):
            f = fusion_of(setup, b.name)
            if f.adapters != b.adapters:
                raise ConfigError(f"{b!r}: fusion layer {b.name!r} fuses {list(f.adapters)}, not {list(b.adapters)}")
            fusions.append(b.name)
    chans = {b.parallel_channels for b in block.blocks() if isinstance(b, Parallel)}
    if len(chans) > 1:
        raise ConfigError(f"{block!r}: Parallel blocks of different widths {sorted(chans)} cannot share one batch")
    return block.flatten() + tuple(dict.fromkeys(fusions))


def check_fusable(setup, names) -> None:
    """Adapters one fusion layer can fuse: bottlenecks at the same hooks, without ln_after."""
    cfgs = {n: _bottleneck_of(setup, n) for n in names}
    where = {n: placement(c) for n, c in cfgs.items()}
    if len(set(where.values())) > 1:
        raise ConfigError(f"adapters {list(names)} sit at different hooks or layers {where}; AdapterHub fuses "
                          "adapters that share mh_adapter/output_adapter")
    late = [n for n, c in cfgs.items() if c.ln_after]
    if late:
        raise ConfigError(f"adapters {late} have ln_after=true: their up-projection, which a fusion layer attends "
                          "over, is not separable from the LayerNorm here (not supported)")
