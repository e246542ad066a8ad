"""Reference fixture for tests/test_merging.py: PEFT 0.21's add_weighted_adapter on a tiny BERT.

Run once with the peers env (torch 2.13, transformers 4.57, peft 0.21; never a
dependency of the library or its tests), then commit what it writes:

    .venv-peers/bin/python scripts/make_fixtures_merge.py

Base: tests/fixtures/adapters/tiny-bert (written by make_fixtures_adapters.py),
so the test loads the very same module layout. Three LoRA adapters on query,
value and intermediate.dense (32->64, so a transposition error shows):
t1 (r=4, alpha=8), t2 (r=4, alpha=16, rsLoRA: scaling 8), t3 (r=2, alpha=4); and
two IA3 adapters i1, i2 (PEFT warns about adapter names inside its prefix "lora_", hence
no "a"). Every adapter tensor is re-randomised (N(0, 0.3); IA3 around 1) and rounded to
float16, so the stored inputs are exact.

Writes tests/fixtures/peft_merge.npz:
  w/<adapter>/<PEFT saved name>     the inputs, as get_peft_model_state_dict names them (torch layout)
  case/<case>/<module>/lora_A|lora_B  PEFT's merged tensors (torch layout: A [r, in], B [out, r]);
                                    IA3 cases: case/<case>/<module>/ia3_l
  case/<case>/<module>/delta        the merged adapter's get_delta_weight [out, in] (svd types only, where
                                    A and B are defined only up to the SVD's signs)
  meta                              json: versions, the adapters' PEFT and our configs, each case's arguments
DARE masks come from torch's RNG: the density-1.0 cases are deterministic (PEFT
prunes nothing); the density-0.5 cases are stored for a structural comparison.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import peft
import torch
import transformers
from transformers import BertModel

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "tests" / "fixtures" / "adapters" / "tiny-bert"
OUT = ROOT / "tests" / "fixtures" / "peft_merge.npz"
TARGETS = ["query", "value", "intermediate.dense"]
OURS_TARGET = "target=(attention/self/(query|value)|intermediate/dense)$"
LORAS = {  # name: (PEFT LoraConfig kwargs, our config string)
    "t1": (dict(r=4, lora_alpha=8), f"lora[r=4,alpha=8,{OURS_TARGET}]"),
    "t2": (dict(r=4, lora_alpha=16, use_rslora=True), f"lora[r=4,alpha=16,use_rslora=true,{OURS_TARGET}]"),
    "t3": (dict(r=2, lora_alpha=4), f"lora[r=2,alpha=4,{OURS_TARGET}]"),
}
FFN_OUT = r".*layer\.\d+\.output\.dense$"
IA3S = ("i1", "i2")
IA3_PEER = dict(target_modules=r".*\.(key|value)$|" + FFN_OUT, feedforward_modules=FFN_OUT)
IA3_OURS = "ia3"

AB, ABC = (["t1", "t2"], [0.7, -0.4]), (["t1", "t2", "t3"], [0.5, -0.3, 0.8])
# (case, adapters, weights, add_weighted_adapter kwargs, deterministic)
CASES = [
    ("linear", *AB, dict(combination_type="linear"), True),
    ("ties", *AB, dict(combination_type="ties", density=0.5), True),
    ("ties_frequency", *AB, dict(combination_type="ties", density=0.6, majority_sign_method="frequency"), True),
    ("magnitude_prune", *AB, dict(combination_type="magnitude_prune", density=0.5), True),
    ("dare_linear_d1", *AB, dict(combination_type="dare_linear", density=1.0), True),
    ("dare_ties_d1", *AB, dict(combination_type="dare_ties", density=1.0), True),
    ("cat", *ABC, dict(combination_type="cat"), True),
    ("svd", *ABC, dict(combination_type="svd"), True),
    ("svd_rank3_clamp", *ABC, dict(combination_type="svd", svd_rank=3, svd_clamp=0.9), True),
    ("ties_svd", *ABC, dict(combination_type="ties_svd", density=0.5), True),
    ("magnitude_prune_svd", *ABC, dict(combination_type="magnitude_prune_svd", density=0.5), True),
    ("dare_linear_svd_d1", *ABC, dict(combination_type="dare_linear_svd", density=1.0), True),
    ("dare_ties_svd_d1", *ABC, dict(combination_type="dare_ties_svd", density=1.0, majority_sign_method="frequency"),
     True),
    ("single_svd", ["t3"], [1.5], dict(combination_type="svd"), True),  # one adapter: PEFT merges it "linear"
    ("dare_linear_d05", *AB, dict(combination_type="dare_linear", density=0.5), False),
    ("dare_ties_d05", *AB, dict(combination_type="dare_ties", density=0.5), False),
]
IA3_CASES = [("ia3_linear", ["i1", "i2"], [0.6, 0.9])]


def fp16_exact(t: torch.Tensor) -> torch.Tensor:
    return t.half().float()


def randomise(pm, names, gen: torch.Generator, around_one: bool) -> None:
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if any(f".{a}." in n or n.endswith(f".{a}") for a in names):
                noise = torch.randn(p.shape, generator=gen) * 0.3
                p.copy_(fp16_exact(1.0 + noise if around_one else noise))


def dotted(module_name: str) -> str:
    return module_name.removeprefix("base_model.model.")


def peft_model(cfgs: dict, layer_type, seed: int, around_one: bool, out: dict):
    """One PeftModel on MiniLM-L6 holding every adapter of `cfgs` (name -> PEFT config), randomised from `seed`;
    their saved tensors go into out["w/<name>/..."]. Returns the model and its adapter layers by dotted name."""
    pm = None
    for name, cfg in cfgs.items():
        if pm is None:
            pm = peft.get_peft_model(BertModel.from_pretrained(BASE), cfg, adapter_name=name)
        else:
            pm.add_adapter(name, cfg)
    randomise(pm, list(cfgs), torch.Generator().manual_seed(seed), around_one=around_one)
    for name in cfgs:
        for k, v in peft.get_peft_model_state_dict(pm, adapter_name=name).items():
            out[f"w/{name}/{k}"] = v.numpy()
    return pm, {dotted(n): m for n, m in pm.named_modules() if isinstance(m, layer_type)}


def main():
    torch.manual_seed(0)
    out: dict[str, np.ndarray] = {}
    cases_meta = []

    lora_cfgs = {name: peft.LoraConfig(target_modules=TARGETS, lora_dropout=0.0, **kw) for name, (kw, _) in LORAS.items()}
    pm, lora_layers = peft_model(lora_cfgs, peft.tuners.lora.LoraLayer, 0, False, out)
    assert len(lora_layers) == 6, sorted(lora_layers)

    for case, names, weights, kw, deterministic in CASES:
        new = f"m_{case}"
        torch.manual_seed(1)  # DARE's masks at density < 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "density 1.0 >= 1, no pruning"
            pm.add_weighted_adapter(names, weights, new, **kw)
        for mod, layer in lora_layers.items():
            out[f"case/{case}/{mod}/lora_A"] = layer.lora_A[new].weight.detach().numpy().copy()
            out[f"case/{case}/{mod}/lora_B"] = layer.lora_B[new].weight.detach().numpy().copy()
            if kw["combination_type"].endswith("svd"):
                out[f"case/{case}/{mod}/delta"] = layer.get_delta_weight(new).detach().numpy().copy()
        cfg = pm.peft_config[new]
        cases_meta.append(dict(case=case, method="lora", adapters=names, weights=weights, kwargs=kw,
                               deterministic=deterministic, peft_new_r=cfg.r, peft_new_alpha=cfg.lora_alpha))
        pm.delete_adapter(new)

    ia3, ia3_layers = peft_model({name: peft.IA3Config(**IA3_PEER) for name in IA3S}, peft.tuners.ia3.IA3Layer, 1,
                                 True, out)
    for case, names, weights in IA3_CASES:
        new = f"m_{case}"
        ia3.add_weighted_adapter(names, weights, new)
        for mod, layer in ia3_layers.items():
            out[f"case/{case}/{mod}/ia3_l"] = layer.ia3_l[new].detach().numpy().copy()
        cases_meta.append(dict(case=case, method="ia3", adapters=names, weights=weights, kwargs={},
                               deterministic=True))

    meta = dict(versions=dict(peft=peft.__version__, torch=torch.__version__, transformers=transformers.__version__),
                base="adapters/tiny-bert",
                adapters={**{n: dict(peft={"target_modules": TARGETS, **kw}, ours=ours)
                             for n, (kw, ours) in LORAS.items()},
                          **{n: dict(peft=IA3_PEER, ours=IA3_OURS) for n in IA3S}},
                cases=cases_meta)
    np.savez_compressed(OUT, meta=np.array(json.dumps(meta)), **{k: v.astype(np.float32) for k, v in out.items()})
    print(f"{OUT.relative_to(ROOT)}: {OUT.stat().st_size / 1024:.0f} KB, {len(out)} arrays, {len(cases_meta)} cases")


if __name__ == "__main__":
    main()
