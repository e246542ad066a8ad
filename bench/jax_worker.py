"""One JAX configuration (or the matmul peak probe) in its own process; prints one result line.

    python bench/jax_worker.py '{"model": "minilm-l6", "method": "houlsby", "batch": 32, "seq": 128, ...}'
    python bench/jax_worker.py '{"probe": "matmul", "model": "minilm-l6"}'

Before JAX computes anything the worker sets the library's XLA:CPU flags for the model
(`xla_flags.apply_for`) and records the choice in its result (`xla_flags_choice`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from adapters_jax import xla_flags  # noqa: E402
from bench.common import JAX_SPECS, MODELS, emit, flags_model  # noqa: E402


def apply_xla_flags(model: str) -> dict:
    """The library's XLA:CPU flag choice for `model`, set before this process's first JAX computation."""
    return xla_flags.apply_for(flags_model(model))


def tree_bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


def matmul_peak(dtype: str, reps: int = 12) -> dict:
    """Best FLOP/s of a plain [4096, 384] x [384, 1536] matmul (this model's FFN shape) and of a 2048^3 one."""
    out = {}
    for m, k, n in ((4096, 384, 1536), (2048, 2048, 2048)):
        a = jnp.ones((m, k), dtype)
        b = jnp.ones((k, n), dtype)
        f = jax.jit(lambda a, b: a @ b)
        f(a, b).block_until_ready()
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            f(a, b).block_until_ready()
            best = min(best, time.perf_counter() - t0)
        out[f"{m}x{k}x{n}"] = 2.0 * m * k * n / best
    return out


def rss_high_water() -> int | None:
    """This process's peak RSS so far (VmHWM, Linux), to tell load, compile and step peaks apart."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def build(cfg):
    import adapters_jax as aj

    dtype = jnp.dtype(cfg.get("dtype", "float32"))
    name = cfg["model"]
    if name == "bert-base-random":  # BERT-base shape, random weights: speed does not depend on values
        from adapters_jax.models import bert

        conf = bert.Config()
        model = bert.Model(conf, dtype=dtype)
        params = model.init(jax.random.PRNGKey(0), bert.dummy_inputs(conf))["params"]
        base = (model, params)
    else:
        base = aj.load(name, dtype=dtype)
    task = MODELS[name]
    method = cfg["method"]
    head = aj.heads.Classification(2) if task == "classification" else None
    model, params = aj.add_adapters(base, JAX_SPECS[method], head=head)
    extra = [(".*", "base")] if method == "full" else []
    labels = aj.labels(model, params, extra=extra)
    return model, params, labels, task


def batch_for(cfg, model, task):
    rng = np.random.default_rng(0)
    b, t = cfg["batch"], cfg["seq"]
    vocab = model.config.vocab_size
    batch = {"input_ids": jnp.asarray(rng.integers(1000, vocab - 1, (b, t)), jnp.int32),
             "attention_mask": jnp.ones((b, t), jnp.int32)}
    if task == "classification":
        batch["labels"] = jnp.asarray(rng.integers(0, 2, (b,)), jnp.int32)
        batch["example_mask"] = jnp.ones((b,), bool)
    return batch


def checkpoint_bytes(state) -> int:
    """Bytes on disk of the train state (trainable params, optimizer state, step, rng) saved with Orbax."""
    from adapters_jax.checkpoint import Checkpointer

    tmp = tempfile.mkdtemp(prefix="bench_ckpt_")
    try:
        ck = Checkpointer(tmp, {"bench": True}, keep=1, best_metric=None, async_save=False)
        ck.save(state, {"position": 0})
        ck.wait()
        ck.close()
        return sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclasses.dataclass
class Setup:
    """One configuration ready to step: `step` is the jitted train step, made by make_step(optimizer)."""

    model: object
    params: dict
    labels: dict
    trainable: dict
    frozen: dict
    state: dict
    batch: dict
    optimizer: optax.GradientTransformation
    make_step: object
    step: object

    def gradient_bytes(self) -> int:
        """Bytes of the gradient pytree the train step hands to its optimizer. The step is traced (jax.eval_shape:
        nothing is computed) with an optimizer whose update records the gradients it is given."""
        seen = []

        def update(grads, opt_state, params=None):
            seen.append(tree_bytes(grads))
            return self.optimizer.update(grads, opt_state, params)

        probe = optax.GradientTransformation(self.optimizer.init, update)
        jax.eval_shape(self.make_step(probe), self.state, self.frozen, self.batch)
        return seen[0]


def train_setup(cfg) -> Setup:
    """One configuration: AdamW lr 1e-3 (weight decay 0.01, clip 1.0, 10% warm-up), the jitted step donating
    the state's buffers."""
    from adapters_jax.partition import split
    from adapters_jax.train import optimizer as opt_lib
    from adapters_jax.train.step import init_state, make_train_step

    model, params, labels, task = build(cfg)
    trainable, frozen = split(params, labels)
    opt = opt_lib.make(split(labels, labels)[0], lr=1e-3, total_steps=1000, warmup=0.1, weight_decay=0.01,
                       clip_norm=1.0)
    make_step = lambda o: make_train_step(model, o, "classification" if task == "classification" else "lm")
    return Setup(model, params, labels, trainable, frozen, init_state(trainable, opt, 0), batch_for(cfg, model, task),
                 opt, make_step, jax.jit(make_step(opt), donate_argnums=(0,)))


def run(cfg) -> dict:
    from adapters_jax.models import release_host_memory
    from adapters_jax.partition import param_report

    t_load = time.perf_counter()
    setup = train_setup(cfg)
    model, params, state, frozen, batch = setup.model, setup.params, setup.state, setup.frozen, setup.batch
    report = param_report(params, setup.labels)
    load_s = time.perf_counter() - t_load
    rss_load = rss_high_water()
    rec = {
        "param_bytes": tree_bytes(params), "trainable_params": report.trainable, "total_params": report.total,
        "trainable_bytes": tree_bytes(setup.trainable), "frozen_bytes": tree_bytes(frozen),
        "grad_bytes": setup.gradient_bytes(),
        "grad_bytes_source": "the gradient pytree the train step passes to its optimizer (jax.eval_shape trace)",
        "opt_state_bytes": tree_bytes(state["opt_state"]),
    }
    t0 = time.perf_counter()
    lowered = setup.step.lower(state, frozen, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    release_host_memory()  # as the training loop does after compiling its shapes
    rss_compile = rss_high_water()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    times = []
    for i in range(cfg["warmup"] + cfg["steps"]):
        t0 = time.perf_counter()
        state, metrics = compiled(state, frozen, batch)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t0)
    loss = float(metrics["loss"])
    measured = times[cfg["warmup"]:]
    med = statistics.median(measured)
    flops = float(cost.get("flops", 0.0)) if cost else None
    rec.update({
        "step_s_median": med, "step_s_min": min(measured), "step_s_max": max(measured), "step_s_all": measured,
        "first_step_s": times[0], "compile_s": compile_s, "load_s": load_s,
        "tokens_per_s": cfg["batch"] * cfg["seq"] / med,
        "model_flops": flops, "flops_source": "xla cost_analysis of the compiled train step",
        "achieved_flops_per_s": flops / med if flops else None,
        "xla_bytes_accessed": float(cost.get("bytes accessed", 0.0)) if cost else None,
        "xla_argument_bytes": mem.argument_size_in_bytes if mem else None,
        "xla_output_bytes": mem.output_size_in_bytes if mem else None,
        "xla_alias_bytes": mem.alias_size_in_bytes if mem else None,
        "xla_temp_bytes": mem.temp_size_in_bytes if mem else None,
        "loss_after": loss,
        "checkpoint_bytes": checkpoint_bytes(state),
        "device": str(jax.devices()[0].device_kind), "platform": jax.devices()[0].platform,
        "model_config": dataclasses.asdict(model.config),
        "jax_version": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "xla_flags_choice": xla_flags.current(),
    })
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        rec["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    rec["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # high-water marks after loading (model, adapters, optimizer state) and after compiling, before any step
    rec["peak_rss_after_load_bytes"], rec["peak_rss_after_compile_bytes"] = rss_load, rss_compile
    return rec


def main():
    cfg = json.loads(sys.argv[1])
    apply_xla_flags(cfg.get("model", "minilm-l6"))
    if cfg.get("probe") == "matmul":
        emit({"impl": "jax", "probe": "matmul", "flops_per_s": matmul_peak(cfg.get("dtype", "float32")),
              "platform": jax.devices()[0].platform, "model": cfg.get("model"), "xla_flags_choice": xla_flags.current()})
        return
    rec = {"impl": "jax", "method": cfg["method"], "model": cfg["model"], "batch": cfg["batch"], "seq": cfg["seq"],
           "dtype": cfg.get("dtype", "float32"), "adapter_spec": JAX_SPECS[cfg["method"]]}
    rec.update(run(cfg))
    emit(rec)


if __name__ == "__main__":
    main()
