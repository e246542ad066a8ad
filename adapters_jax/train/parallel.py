"""Where the train state, the frozen base and the batches live: one device, `pmap`, or a `mesh`.

    initialize(coordinator, num_processes, process_id)   # multi-host only, before anything touches JAX
    s = make(config)                                     # config.strategy, config.mesh
    state = s.init_state(trainable, optimizer, seed)     # placed (mesh: created directly sharded)
    frozen = s.put_frozen(frozen)
    step = s.jit_train(make_train_step(model, optimizer, axis_name=s.axis_name))
    state, m = step(state, frozen, s.put_batch(local_batch))   # local_batch: this host's Batches slice
    checkpointer.save(s.to_global(state), ...)           # a topology-free view: global arrays, no device axis
    state = s.from_global(checkpointer.restore(s.restore_target(state))[0])

"single"  one device (the first local one).
"pmap"    data parallelism over the local devices (and every host's): state and base replicated with a
          leading device axis, each device a slice of the batch, loss and grads summed over the axis.
"mesh"    jax.jit over a Mesh with axes (data, fsdp, tensor): the batch over data x fsdp; each array
          sharded by `spec_for`: tensor-parallel rules for the big projections, then FSDP on the largest
          dim divisible by the fsdp size. The frozen base always, the trainable state when
          mesh.shard_trainable (else replicated).

What a checkpoint holds is the same under every strategy (global arrays without a device axis), and a
restore reads it into the target strategy's shardings, so a run saved on 8 devices resumes on 1 or on a
mesh, and the reverse.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

from adapters_jax import paths
from adapters_jax.train.step import init_state as _init_state
from adapters_jax.errors import ParallelError  # noqa: F401  (re-exported)

STRATEGIES = ("single", "pmap", "mesh")
MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Tensor parallelism (Megatron): column-parallel in-projections (output dim over "tensor"), row-parallel
# out-projections (input dim over "tensor"), so each block needs one all-reduce. Roles: adapters_jax/paths.py.
_COLUMN = paths.roles_regex(paths.COLUMN_ROLES)
_ROW = paths.roles_regex(paths.ROW_ROLES)
TENSOR_RULES = (
    (_COLUMN + r"/kernel$", (None, "tensor")),
    (_COLUMN + r"/bias$", ("tensor",)),
    (_ROW + r"/kernel$", ("tensor", None)),
    (paths.roles_regex(["embed"]) + r"/embedding$", ("tensor", None)),
    (paths.roles_regex(["lm_head"]) + r"/kernel$", (None, "tensor")),
)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join the multi-controller runtime. On TPU pods (and SLURM/Open MPI) every argument may be None:
    JAX finds them. CPU processes exchange collectives through gloo."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


class Single:
    """Everything on one device: what `make train` has always done."""

    name = "single"
    axis_name = None

    def __init__(self, device=None):
        self.device = device or jax.local_devices()[0]
        self.sharding = SingleDeviceSharding(self.device)
        if jax.process_count() > 1:
            raise ParallelError(f"strategy 'single' runs in one process, but there are {jax.process_count()}; "
                                "use strategy 'mesh' (or 'pmap') for multi-host training")

    @property
    def batch_divisor(self) -> int:
        """The per-host batch must be a multiple of this."""
        return 1

    def init_state(self, trainable, optimizer, seed: int) -> dict:
        return jax.device_put(_init_state(trainable, optimizer, seed), self.sharding)

    def put_frozen(self, frozen):
        return jax.device_put(frozen, self.sharding)

    def put_batch(self, batch: dict):
        return jax.device_put(dict(batch), self.sharding)

    def batch_spec(self, local_spec: dict) -> dict:
        return local_spec

    def jit_train(self, train_step: Callable) -> Callable:
        return jax.jit(train_step, donate_argnums=(0,))

    def jit_eval(self, eval_step: Callable) -> Callable:
        return jax.jit(eval_step)

    def scalars(self, metrics: dict) -> dict:
        return {k: float(v) for k, v in metrics.items()}

    def to_global(self, state):
        return state

    def from_global(self, state):
        return state

    def restore_target(self, state):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=self.sharding), state)


class Pmap(Single):
    """jax.pmap data parallelism; on several hosts the pmapped axis spans every host's devices."""

    name = "pmap"
    axis_name = "batch"

    def __init__(self):
        self.devices = jax.local_devices()
        self.n = len(self.devices)
        # what pmap takes and returns: a leading axis of local devices (device_put_replicated's layout)
        self.sharding = NamedSharding(Mesh(np.array(self.devices), ("devices",)), P("devices"))
        self.replicated = NamedSharding(Mesh(np.array(jax.devices()), ("all",)), P())

    @property
    def batch_divisor(self) -> int:
        return self.n

    def replicate(self, tree):
        def rep(x):
            x = np.asarray(x) if not isinstance(x, jax.Array) else x
            shards = [jax.device_put(x[None], d) for d in self.devices]
            return jax.make_array_from_single_device_arrays((self.n, *np.shape(x)), self.sharding, shards)

        return jax.tree.map(rep, tree)

    def init_state(self, trainable, optimizer, seed: int) -> dict:
        return self.replicate(_init_state(trainable, optimizer, seed))

    def put_frozen(self, frozen):
        return self.replicate(frozen)

    def put_batch(self, batch: dict):
        def split(x):
            x = np.asarray(x)
            if x.shape[0] % self.n:
                raise ParallelError(f"a batch of {x.shape[0]} rows per host does not split over {self.n} devices")
            return jax.device_put(x.reshape(self.n, x.shape[0] // self.n, *x.shape[1:]), self.sharding)

        return {k: split(v) for k, v in batch.items()}

    def batch_spec(self, local_spec: dict) -> dict:
        return {k: jax.ShapeDtypeStruct((self.n, s.shape[0] // self.n, *s.shape[1:]), s.dtype)
                for k, s in local_spec.items()}

    def jit_train(self, train_step: Callable) -> Callable:
        return jax.pmap(train_step, axis_name=self.axis_name, donate_argnums=(0,))

    def jit_eval(self, eval_step: Callable) -> Callable:
        def summed(trainable, frozen, batch):
            return jax.lax.psum(eval_step(trainable, frozen, batch), self.axis_name)

        return jax.pmap(summed, axis_name=self.axis_name)

    def scalars(self, metrics: dict) -> dict:
        return {k: float(np.asarray(v.addressable_shards[0].data)[0]) for k, v in metrics.items()}

    def unreplicate(self, tree):
        return jax.tree.map(lambda x: x.addressable_shards[0].data[0], tree)

    def to_global(self, state):
        """One global array per leaf, replicated over every device of every host, without the device axis."""
        def glob(x):
            shards = [s.data[0] for s in x.addressable_shards]
            return jax.make_array_from_single_device_arrays(x.shape[1:], self.replicated, shards)

        return jax.tree.map(glob, state)

    def from_global(self, state):
        def local(x):
            by_device = {s.device: s.data for s in x.addressable_shards}
            shards = [by_device[d][None] if d in by_device else jax.device_put(np.asarray(x)[None], d)
                      for d in self.devices]
            return jax.make_array_from_single_device_arrays((self.n, *x.shape), self.sharding, shards)

        return jax.tree.map(local, state)

    def restore_target(self, state):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=self.replicated), state)


def mesh_shape(shape: Sequence[int], n_devices: int) -> tuple[int, ...]:
    """(data, fsdp, tensor) sizes; one -1 takes the devices the others leave."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ParallelError(f"mesh shape {shape}: give 3 sizes (data, fsdp, tensor), at most one of them -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if n_devices % known:
            raise ParallelError(f"mesh shape {shape}: {n_devices} devices do not divide by {known}")
        shape = tuple(n_devices // known if s == -1 else s for s in shape)
    if int(np.prod(shape)) != n_devices:
        raise ParallelError(f"mesh shape {shape} holds {int(np.prod(shape))} devices, but there are {n_devices}; "
                            "set one size to -1 to take the rest")
    return shape


class MeshStrategy(Single):
    """jax.jit over a (data, fsdp, tensor) Mesh with named shardings; the step donates the state."""

    name = "mesh"
    axis_name = None

    def __init__(self, shape=(-1, 1, 1), *, shard_trainable: bool = False, min_shard_bytes: int = 2**20,
                 rules: Sequence = TENSOR_RULES, devices=None):
        devices = list(devices or jax.devices())
        self.shape = mesh_shape(shape, len(devices))
        self.mesh = jax.make_mesh(self.shape, MESH_AXES, devices=devices,
                                  axis_types=(jax.sharding.AxisType.Auto,) * 3)
        self.sizes = dict(zip(MESH_AXES, self.shape))
        self.shard_trainable, self.min_shard_bytes = bool(shard_trainable), int(min_shard_bytes)
        self.rules = [(re.compile(rx), tuple(spec)) for rx, spec in rules]
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P(BATCH_AXES))
        self.state_shardings = self.frozen_shardings = None

    @property
    def batch_divisor(self) -> int:
        n = self.sizes["data"] * self.sizes["fsdp"]
        if n % jax.process_count():
            raise ParallelError(f"data x fsdp = {n} must be a multiple of the {jax.process_count()} processes")
        return n // jax.process_count()

    # ------------------------------------------------------------ shardings

    def spec_for(self, path: str, shape: tuple, itemsize: int) -> P:
        """Tensor-parallel rule (first match) if its dims divide, then FSDP on the largest free dim that divides."""
        spec: list = [None] * len(shape)
        t = self.sizes["tensor"]
        if t > 1:
            for rx, rule in self.rules:
                if rx.search(path) and len(rule) == len(shape):
                    if all(a is None or shape[i] % t == 0 for i, a in enumerate(rule)):
                        spec = list(rule)
                    break
        f = self.sizes["fsdp"]
        if f > 1 and int(np.prod(shape)) * itemsize >= self.min_shard_bytes:
            free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % f == 0]
            if free:
                spec[max(free, key=lambda i: (shape[i], -i))] = "fsdp"
        return P(*spec)

    def shardings(self, tree, prefix: str = ""):
        def one(key_path, x):
            if not np.shape(x):
                return self.replicated
            path = prefix + jax.tree_util.keystr(key_path, simple=True, separator=paths.SEP)
            return NamedSharding(self.mesh, self.spec_for(path, tuple(x.shape), np.dtype(x.dtype).itemsize))

        return jax.tree_util.tree_map_with_path(one, tree)

    def _state_shardings(self, abstract_state: dict) -> dict:
        out = {k: jax.tree.map(lambda _: self.replicated, v) for k, v in abstract_state.items()}
        if self.shard_trainable:
            out["trainable"] = self.shardings(abstract_state["trainable"])
            out["opt_state"] = self.shardings(abstract_state["opt_state"])
        return out

    # ------------------------------------------------------------ placement

    @staticmethod
    def put(tree, shardings):
        """Host-global values (the same on every host) onto global shardings."""
        if jax.process_count() == 1:
            return jax.device_put(tree, shardings)

        def one(x, s):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

        return jax.tree.map(one, tree, shardings)

    def init_state(self, trainable, optimizer, seed: int) -> dict:
        init = partial(_init_state, optimizer=optimizer, seed=seed)
        self.state_shardings = self._state_shardings(jax.eval_shape(init, _abstract(trainable)))
        trainable = self.put(trainable, self.state_shardings["trainable"])
        return jax.jit(init, out_shardings=self.state_shardings)(trainable)

    def put_frozen(self, frozen):
        self.frozen_shardings = self.shardings(frozen)
        return self.put(frozen, self.frozen_shardings)

    def put_batch(self, batch: dict):
        n = jax.process_count()
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v),
                                                          (np.shape(v)[0] * n, *np.shape(v)[1:]))
                for k, v in batch.items()}

    def batch_spec(self, local_spec: dict) -> dict:
        n = jax.process_count()
        return {k: jax.ShapeDtypeStruct((s.shape[0] * n, *s.shape[1:]), s.dtype, sharding=self.batch_sharding)
                for k, s in local_spec.items()}

    def jit_train(self, train_step: Callable) -> Callable:
        if self.state_shardings is None or self.frozen_shardings is None:
            raise ParallelError("place the state (init_state) and the base (put_frozen) before jit_train")
        return jax.jit(train_step, in_shardings=(self.state_shardings, self.frozen_shardings, self.batch_sharding),
                       out_shardings=(self.state_shardings, self.replicated), donate_argnums=(0,))

    def jit_eval(self, eval_step: Callable) -> Callable:
        return jax.jit(eval_step, in_shardings=(self.state_shardings["trainable"], self.frozen_shardings,
                                                self.batch_sharding), out_shardings=self.replicated)

    def scalars(self, metrics: dict) -> dict:
        return {k: float(np.asarray(v)) for k, v in metrics.items()}

    def restore_target(self, state):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                            self.state_shardings)


def make(config) -> Single:
    """The strategy a config asks for (config.strategy, config.mesh)."""
    name = config.get("strategy", "single")
    if name == "single":
        return Single()
    if name == "pmap":
        return Pmap()
    if name == "mesh":
        m = config.mesh
        return MeshStrategy(tuple(m.shape), shard_trainable=m.shard_trainable, min_shard_bytes=m.min_shard_bytes)
    raise ParallelError(f"strategy {name!r}; choose one of {STRATEGIES}")


def gather(tree):
    """Host numpy copies of (possibly multi-host, sharded) global arrays: every host gets the full values."""
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def per_device_bytes(tree) -> dict:
    """Bytes each device holds of `tree`, read from the arrays' shardings (device -> bytes)."""
    out: dict = {}
    for x in jax.tree.leaves(tree):
        nbytes = int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
        for d in x.sharding.device_set:
            out[d] = out.get(d, 0) + nbytes
    return out


def should_stop(step: int, local_request: bool) -> bool:
    """Stop (and save) here? Multi-host: at the step all hosts agree on after a preemption notice (SIGTERM
    to any host), so every host saves the same step; one host: when this process was asked to."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return bool(multihost_utils.reached_preemption_sync_point(step))
    return local_request
