"""Sweep grids declared in a config file, as big_vision does: the points and their names.

An experiment config may define, beside `get_config()`:

    def sweep():                      # the grid: a list of {dotted config key: value}
        return grid.product(grid.axis("ablation.init_std", [1e-7, 1e-4, 1e-2]), grid.axis("seed", [0, 1, 2]))

    def finalize(config):             # optional: derive settings from the swept factors (e.g. the adapter string)
        ...
        return config

    def evaluate(config, workdir):    # optional: extra evaluations of the trained run (rows; see runner.py)
        ...

    REPORT = {...}                    # optional: how scripts/report.py tables and plots it (see report.py)

A point's overrides are applied to `get_config()` key by key (a dotted key reaches into sub-configs), then
`finalize` runs. A point's id is its overrides written out (`init_std=0.0001,seed=1`), so a grid that grows
keeps the ids (and the finished runs) of the points it already had.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import re
import sys
from pathlib import Path
from types import ModuleType

from adapters_jax.errors import ConfigError


def axis(key: str, values) -> list[dict]:
    """One factor: a point per value."""
    values = list(values)
    if not values:
        raise ConfigError(f"sweep axis {key!r} has no values")
    return [{key: v} for v in values]


def product(*axes: list[dict]) -> list[dict]:
    """Every combination of the axes (the last one varies fastest)."""
    return [{k: v for p in combo for k, v in p.items()} for combo in itertools.product(*axes)]


def zip_axes(*axes: list[dict]) -> list[dict]:
    """Axes of equal length side by side: the i-th point of each, merged."""
    if len({len(a) for a in axes}) > 1:
        raise ConfigError(f"zip_axes needs axes of equal length, got {[len(a) for a in axes]}")
    return [{k: v for p in combo for k, v in p.items()} for combo in zip(*axes)]


def load_module(path: str | Path) -> ModuleType:
    """The config file as a module (experiments/ on the path, so configs may import each other)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    root = Path(__file__).resolve().parents[2]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location(f"_sweep_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config()")
    return module


def _text(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def point_id(overrides: dict) -> str:
    """`key=value,...` over the overrides (the last part of each dotted key), safe as a directory name."""
    parts = [f"{k.rsplit('.', 1)[-1]}={_text(v)}" for k, v in overrides.items()]
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", ",".join(parts)) or "default"


def points(module: ModuleType, where: str = "the config") -> dict[str, dict]:
    """id -> overrides for the module's sweep() (one point with no overrides when it has none)."""
    grid = module.sweep() if hasattr(module, "sweep") else [{}]
    out: dict[str, dict] = {}
    for p in grid:
        if not isinstance(p, dict):
            raise ConfigError(f"{where}: sweep() must return a list of dicts of config overrides, got {p!r}")
        pid = point_id(p)
        if pid in out:
            raise ConfigError(f"{where}: sweep() has the point {pid} twice")
        out[pid] = p
    return out


def set_value(config, key: str, value) -> None:
    """config[key] = value for a dotted key that already exists (a tuple field gets a tuple)."""
    node, parts = config, key.split(".")
    for part in parts[:-1]:
        if part not in node:
            raise ConfigError(f"sweep key {key!r}: the config has no {part!r}")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"sweep key {key!r}: the config has no {parts[-1]!r} (add it in get_config())")
    try:
        node[parts[-1]] = tuple(value) if isinstance(node[parts[-1]], tuple) else value
    except TypeError as e:  # ml_collections keeps a field's type
        raise ConfigError(f"sweep key {key!r}: {e}") from e


def config_for(module: ModuleType, overrides: dict):
    """get_config() with the overrides applied (each key must already exist), then finalize()."""
    config = module.get_config()
    for key, value in overrides.items():
        set_value(config, key, value)
    return module.finalize(config) if hasattr(module, "finalize") else config
