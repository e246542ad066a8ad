"""A subprocess for tests/test_parallel.py: trains tiny BERT (dropout on) under one strategy after another.

    python tests/parallel_worker.py SPEC.json

SPEC: {"devices": 8, "data": "tokens.npz", "out": DIR, "runs": [RUN, ...],
       "distributed": {"coordinator": "127.0.0.1:PORT", "num_processes": 2, "process_id": 0}  (optional)}
RUN:  {"name", "strategy": single|pmap|mesh, "mesh": [d, f, t], "shard_trainable", "opt": sgd|adamw,
       "steps": 5, "save_at": 3, "ckpt": DIR (save there at save_at), "restore": DIR (start from it),
       "drop_index": feed no batch["index"] (dropout keyed by batch row: the control)}
Each run writes OUT/NAME.npz (trainable after the last step, flat paths) and OUT/NAME.json (losses, and
for a save or restore the state at that step in OUT/NAME.state.npz); a mesh run writes the per-device
bytes of its frozen base and each frozen leaf's partition spec too. The device count must be set before
JAX is imported, hence a process.
"""
import json
import os
import sys
import time
from pathlib import Path

spec = json.loads(Path(sys.argv[1]).read_text())
# LLVM at -O0: compiling the tiny train step is most of each run (5.4 s -> 2.6 s); XLA's HLO passes, the SPMD
# partitioner and so every sharding, collective and reduction order under test are the same at any level.
os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={spec['devices']} "
                           "--xla_backend_optimization_level=0")
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

if "distributed" in spec:
    from adapters_jax.train import parallel

    d = spec["distributed"]
    parallel.initialize(d["coordinator"], d["num_processes"], d["process_id"])

import numpy as np  # noqa: E402

import adapters_jax as aj  # noqa: E402
from adapters_jax import checkpoint as ckpt_lib, paths  # noqa: E402
from adapters_jax.data.batching import Batches  # noqa: E402
from adapters_jax.models import load_hf_dir  # noqa: E402
from adapters_jax.partition import split  # noqa: E402
from adapters_jax.train import optimizer as opt_lib  # noqa: E402
from adapters_jax.train import parallel  # noqa: E402
from adapters_jax.train.step import make_train_step  # noqa: E402

FIX = Path(__file__).parent / "fixtures"
KEYS = ("input_ids", "attention_mask", "labels", "example_mask", "index")
out = Path(spec["out"])
out.mkdir(parents=True, exist_ok=True)
primary = jax.process_index() == 0

base = load_hf_dir(FIX / "adapters" / "tiny-bert", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
model, params = aj.add_adapters(base, "lora[r=4]|houlsby[bottleneck=8]",
                                head=aj.heads.Classification(2, dropout=0.1), rng=jax.random.PRNGKey(0))
labels = aj.labels(model, params)
trainable0, frozen0 = jax.device_get(split(params, labels))  # host copies: each run donates its own
trainable_labels, _ = split(labels, labels)
tokens = np.load(spec["data"])
ids = np.split(tokens["flat"], tokens["offsets"][1:-1])
optimizers = {
    "sgd": opt_lib.make(trainable_labels, lr=0.5, total_steps=5, warmup=0.0, kind="constant", clip_norm=None, sgd=True),
    "adamw": opt_lib.make(trainable_labels, lr=1e-2, total_steps=5, warmup=0.0),
}
_cache: dict = {}


def strategy_for(run):
    key = (run["strategy"], tuple(run.get("mesh", ())), run.get("shard_trainable", False), run["opt"])
    if key not in _cache:
        if run["strategy"] == "mesh":
            s = parallel.MeshStrategy(tuple(run["mesh"]), shard_trainable=run.get("shard_trainable", False),
                                      min_shard_bytes=0)
        else:
            s = {"single": parallel.Single, "pmap": parallel.Pmap}[run["strategy"]]()
        opt = optimizers[run["opt"]]
        template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), s.init_state(trainable0, opt, 0))
        frozen = s.put_frozen(frozen0)
        _cache[key] = (s, frozen, s.jit_train(make_train_step(model, opt, axis_name=s.axis_name)), template)
    return _cache[key]


def flat(tree) -> dict:
    return {k: np.asarray(v) for k, v in paths.flat(tree).items()}


def state_arrays(s, state) -> dict:
    g = parallel.gather(s.to_global(state))
    leaves = jax.tree_util.tree_leaves_with_path(g)
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def do(run):
    t0 = time.time()
    s, frozen, step_fn, template = strategy_for(run)
    state = s.init_state(trainable0, optimizers[run["opt"]], 0)  # each run its own: the step donates it
    batches = Batches(ids, tokens["labels"], 16, padding="buckets", buckets=(32,), seed=0, shuffle=True,
                      drop_last=True, process_index=jax.process_index(), process_count=jax.process_count())
    info = {"losses": {}}
    if "restore" in run:
        c = ckpt_lib.Checkpointer(run["restore"], {}, async_save=False)
        restored, position, _ = c.restore(s.restore_target(template))
        c.close()
        state = s.from_global(restored)
        batches.restore(position)
        if primary:
            np.savez(out / f"{run['name']}.state.npz", **state_arrays(s, state))
        else:
            state_arrays(s, state)
    step = int(s.scalars({"step": state["step"]})["step"])
    it = iter(batches)
    while step < run["steps"]:
        keys = [k for k in KEYS if not (run.get("drop_index") and k == "index")]  # control: keys by batch row
        state, m = step_fn(state, frozen, s.put_batch({k: v for k, v in next(it).items() if k in keys}))
        step += 1
        info["losses"][step] = s.scalars(m)["loss"]
        if run.get("save_at") == step:
            c = ckpt_lib.Checkpointer(run["ckpt"], {}, async_save=False, best_metric=None)
            c.save(s.to_global(state), batches.state())
            c.wait()
            c.close()
            arrays = state_arrays(s, state)
            if primary:
                np.savez(out / f"{run['name']}.state.npz", **arrays)
    trainable = parallel.gather(s.to_global(state)["trainable"])
    if s.name == "mesh":
        per = parallel.per_device_bytes(frozen)
        info["frozen_bytes"] = int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(frozen0)))
        info["frozen_bytes_per_device"] = sorted(per.values())
        info["devices"] = len(per)
        info["frozen_specs"] = {k: list(x.sharding.spec) + [None] * (x.ndim - len(x.sharding.spec))
                                for k, x in paths.flat(frozen).items()}  # mesh axis (or None) per dim
    info["seconds"] = time.time() - t0
    if primary:
        np.savez(out / f"{run['name']}.npz", **flat(trainable))
        (out / f"{run['name']}.json").write_text(json.dumps(info))


for run in spec["runs"]:
    do(run)
print("worker done", jax.process_index(), flush=True)
