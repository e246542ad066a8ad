"""Reference fixture for tests/test_composition.py: AdapterHub 1.3's composition blocks on MiniLM-L6.

Run once with the peers env (torch, transformers 4.57, adapters 1.3; never a dependency of
the library or its tests), then commit what it writes:

    .venv-peers/bin/python scripts/make_fixtures_composition.py [--minilm DIR]

DIR is the minilm-l6 asset directory (default: adapters_jax's asset cache, where
`python scripts/assets.py fetch minilm-l6` puts it). Writes tests/fixtures/adapterhub_composition.npz:

  input_ids, attention_mask   a padded batch of 3 sentences
  w/<torch name>              every adapter and fusion tensor under AdapterHub's names (float16, exact)
  out/<case>                  AdapterHub's last hidden state with that setup active ([K*B, T, D] for Parallel)
  out/base                    the bare model's
  meta                        json: adapter configs (AdapterHub's and ours), fusions, each case's block
                              (AdapterHub's repr), the average_adapter call, versions

Four bottleneck adapters: a (seq_bn), b (seq_bn, another size and residual_before_ln=False, so a
block that prepares the state with its first adapter's options differs from one that uses each
child's), c and d (double_seq_bn: both hooks). Adapter params are N(0, 0.1); the two fusion layers
(dynamic: query, key, value) get sparse random matrices (0.5% non-zero; value around the identity)
and random biases, so the fixture stays small. All values are rounded to float16 before the
reference runs, so the float16 copy stored here is exact.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, BertModel

import adapters
from adapters.composition import Average, BatchSplit, Fuse, Parallel, Stack

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "adapterhub_composition.npz"
SENTENCES = ["The movie was a delight.", "A tedious, overlong mess.", "Fine."]

# (name, AdapterHub config, our config string)
ADAPTERS = [
    ("a", "seq_bn[reduction_factor=64]", "seq_bn[reduction_factor=64]"),
    ("b", "seq_bn[reduction_factor=32,residual_before_ln=False]",
     "seq_bn[reduction_factor=32,residual_before_ln=false]"),
    ("c", "double_seq_bn[reduction_factor=64]", "double_seq_bn[reduction_factor=64]"),
    ("d", "double_seq_bn[reduction_factor=64]", "double_seq_bn[reduction_factor=64]"),
]
FUSIONS = [("a", "b"), ("c", "d")]
CASES = {
    "stack": Stack("c", "a", "b"),
    "parallel": Parallel("a", "b"),
    "parallel_cd": Parallel("c", "d"),
    "parallel_nested": Parallel(Stack("c", "d"), "d"),
    "fuse": Fuse("a", "b"),
    "fuse_cd": Fuse("c", "d"),
    "average": Average("a", "b", weights=[0.7, 0.3]),
    "average_cd": Average("c", "d"),
    "stack_average": Stack("c", Average("d", "c")),
    "batch_split": BatchSplit("a", "b", batch_sizes=[1, 2]),
    "batch_split_cd": BatchSplit("c", "d", batch_sizes=[2, 1]),
}
AVERAGE_ADAPTER = dict(name="cd_avg", adapters=["c", "d"], weights=[2.0, 1.0])  # normalised to 2/3, 1/3


def fp16_exact(t: torch.Tensor) -> torch.Tensor:
    return t.half().float()


def sparse(shape, gen, scale, density=0.005):
    keep = torch.rand(shape, generator=gen) < density
    return torch.where(keep, torch.randn(shape, generator=gen) * scale, 0.0)  # +0.0 only: compresses


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm", default=None)
    args = ap.parse_args()
    if args.minilm is None:
        cache = Path(os.environ.get("ADAPTERS_JAX_CACHE", Path.home() / ".cache" / "adapters_jax"))
        args.minilm = str(cache / "assets" / "minilm-l6")
    tok = AutoTokenizer.from_pretrained(args.minilm)
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)

    torch.manual_seed(0)
    model = BertModel.from_pretrained(args.minilm).eval()
    adapters.init(model)
    for name, peer, _ in ADAPTERS:
        model.add_adapter(name, config=peer)
    for names in FUSIONS:
        model.add_adapter_fusion(Fuse(*names))  # AdapterHub's default config: "dynamic"
    model.eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".adapters." in n:
                p.copy_(fp16_exact(torch.randn(p.shape, generator=gen) * 0.1))
            elif ".adapter_fusion_layer." in n and n.endswith("bias"):
                p.copy_(fp16_exact(torch.randn(p.shape, generator=gen) * 0.1))
            elif ".adapter_fusion_layer." in n and ".value." in n:
                p.copy_(fp16_exact(torch.eye(p.shape[0]) + sparse(p.shape, gen, 0.1)))
            elif ".adapter_fusion_layer." in n:
                p.copy_(fp16_exact(sparse(p.shape, gen, 0.5)))
    model.average_adapter(AVERAGE_ADAPTER["name"], AVERAGE_ADAPTER["adapters"], weights=AVERAGE_ADAPTER["weights"])

    def hidden(setup):
        model.set_active_adapters(setup)
        with torch.no_grad():
            return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()

    outs = {"base": hidden(None)}
    for case, block in CASES.items():
        outs[case] = hidden(block)
    outs["average_adapter"] = hidden(AVERAGE_ADAPTER["name"])
    keep = mask.astype(bool)
    for case, h in outs.items():
        if case != "base":
            effect = np.abs(h[: len(ids)] - outs["base"])[keep].max()
            assert effect > 1e-2, f"{case}: the setup barely changes the output ({effect:.1e})"
    assert np.abs(outs["fuse"] - outs["average"])[keep].max() > 1e-2, "fusion weights barely matter"

    tensors = {n: p for n, p in model.named_parameters()
               if (".adapters." in n or ".adapter_fusion_layer." in n) and f".{AVERAGE_ADAPTER['name']}." not in n}
    meta = dict(
        adapters={n: {"peer": peer, "ours": ours} for n, peer, ours in ADAPTERS},
        fusions={",".join(f): list(f) for f in FUSIONS},
        cases={case: repr(block) for case, block in CASES.items()},
        average_adapter=AVERAGE_ADAPTER,
        versions={"adapters": adapters.__version__, "transformers": transformers.__version__,
                  "torch": torch.__version__},
    )
    arrays = {f"w/{k}": v.detach().numpy().astype(np.float16) for k, v in tensors.items()}
    arrays.update({f"out/{k}": v.astype(np.float32) for k, v in outs.items()})
    np.savez_compressed(OUT, input_ids=ids, attention_mask=mask, meta=np.array(json.dumps(meta)), **arrays)
    print(f"{OUT.name}: {OUT.stat().st_size / 1024:.0f} KB, {len(tensors)} tensors, {len(outs)} outputs")


if __name__ == "__main__":
    main()
