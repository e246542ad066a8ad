"""The serving engine: one frozen base, many adapters through one bank, requests of all of them batched together.

    engine = Engine(aj.load("smollm2-135m"), adapters_dir="adapters/", max_resident=128, max_batch=16)
    req = engine.submit(Request("generate", "tenant-7", prompt_ids, Sampling(max_tokens=32)))
    for kind, payload in req.events(): ...                  # ("token", ...), then ("done", ...) or ("error", ...)

One engine thread owns the model: between steps it takes finished adapter reads
(done on a loader thread, so a disk read never stalls the running batch), writes
adapters into bank slots (LRU among slots no running request uses; an in-place
update, nothing recompiles), admits waiting requests into free rows, and runs one
step. Decoders: continuous batching (decoder.py); encoders: classification with
a head per adapter, a batch per step (classify.py). The waiting queue is bounded
(QueueFull). The model and its bank are built by setup.py, the compiled steps are
kernels.py's, and `warm()` compiles all of them before serving (warmup=True).
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from pathlib import Path

import jax.numpy as jnp

from adapters_jax import paths
from adapters_jax.configs import AdapterConfigError
from adapters_jax.decoding import prompt_bucket
from adapters_jax.errors import AdaptersJaxError, ConfigError
from adapters_jax.modules.hooks import prompt_length
from adapters_jax.serve import classify, residency, setup
from adapters_jax.serve.decoder import RunningBatch
from adapters_jax.serve.kernels import Kernels
from adapters_jax.serve.metrics import Metrics
from adapters_jax.serve.request import QueueFull, Request, Sampling, UnknownAdapter  # noqa: F401 (the engine's API)

log = logging.getLogger("adapters_jax.serve")


class Engine:
    def __init__(self, base, adapters_dir=None, bank: str | None = None, max_resident: int = 16, max_batch: int = 8,
                 max_queue: int = 256, max_model_len: int | None = None, host_bytes: int = 1 << 30,
                 pooling: str = "mean", max_labels: int = 8, name: str = "base", warmup: bool = False):
        self.base, self.name, self.max_batch, self.max_queue = base, name, max_batch, max_queue
        self.tokenizer, config = base.tokenizer, base.config
        self.decoder = hasattr(config, "num_key_value_heads")
        if self.decoder and getattr(config, "sliding_window", None):
            raise ConfigError("the serving engine moves cache slots (continuous batching); sliding-window models "
                              f"(sliding_window={config.sliding_window}) are not supported")
        self.registry: dict[str, Path] = {}
        found = setup.scan(Path(adapters_dir)) if adapters_dir else {}
        methods = setup.bank_methods(bank, found, config.hidden_size)
        self.model, self.params, self.template = setup.build(base, methods, max_resident, found, self.decoder, pooling,
                                                             max_labels)
        self.bank_paths = sorted(self.template.leaves) + sorted(self.template.head_leaves)
        for name_, path in found.items():
            try:
                residency.read_config(path, base.fingerprint, self.template, name_)
                self.registry[name_] = path
            except AdapterConfigError as e:
                log.warning("not serving %s: %s", path, e)
        self.kernels = Kernels(self.model)
        self.slots = residency.SlotTable(max_resident)
        self.host = residency.HostCache(host_bytes)
        self.context = config.max_position_embeddings if self.decoder else config.max_position_embeddings
        self.max_model_len = min(max_model_len or self.context, self.context)
        if self.decoder:
            eos = getattr(self.tokenizer, "eos_token_id", None)
            eos = config.eos_token_id if eos is None else eos
            n_soft = prompt_length(self.model)
            slots = max(64, 1 << (2 * (prompt_bucket(self.max_model_len) + n_soft) - 1).bit_length())
            self.batch = RunningBatch(self.kernels, config, max_batch, slots, n_soft, eos, self.tokenizer,
                                      self.model.dtype)
        self.labels_of: dict[int, list] = {}  # bank slot -> its head's labels (encoders)
        self.waiting: list[Request] = []
        self.loading: dict[str, concurrent.futures.Future] = {}
        self.metrics = Metrics()
        self.warmed = self.warm() if warmup else None
        self._cv = threading.Condition()
        self._stop = False
        self._loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="adapter-loader")
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    def warm(self) -> dict:
        """Compile, before serving, every program requests can need: each join (or classify) shape for prompts up
        to max_model_len, the decode step, compaction and the slot write. Returns {"programs", "seconds"}."""
        t0 = time.perf_counter()
        shapes = {**self.template.leaves, **self.template.head_leaves}
        self._write_slot(0, {p: jnp.zeros(*shapes[p]) for p in self.bank_paths})  # zeros, as before: slot 0 is free
        if self.decoder:
            self.batch.warm(self.params, self.max_model_len - 1)
        else:
            classify.warm(self.kernels, self.params, self.max_batch, self.max_model_len)
        return {"programs": self.compiled(), "seconds": round(time.perf_counter() - t0, 2)}

    # --- the API the HTTP layer uses (any thread) ---

    def submit(self, req: Request) -> Request:
        if req.adapter is not None and req.adapter not in self.registry:
            raise UnknownAdapter(f"The model `{req.adapter}` does not exist (served: {self.name!r} and "
                                 f"{len(self.registry)} adapters)")
        with self._cv:
            if self._stop:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) >= self.max_queue:
                self.metrics.inc("rejected_total")
                raise QueueFull(f"the queue is full ({self.max_queue} waiting requests); retry later")
            req.t_submit = time.perf_counter()
            self.waiting.append(req)
            self._cv.notify()
        return req

    def cancel(self, req: Request) -> None:
        req.cancelled = True
        with self._cv:
            self._cv.notify()

    def load_adapter(self, name: str, path) -> residency.HostAdapter:
        """Register and read adapter `path` as `name` now (refused with the cause; nothing changes then)."""
        if not name or name == self.name:
            raise AdapterConfigError(f"adapter name {name!r} is empty or the base model's name")
        if name in self.registry:
            raise AdapterConfigError(f"an adapter named {name!r} is already loaded; unload it first")
        a = residency.read(path, name, self.base, self.template)
        deadline = time.monotonic() + 30
        while self._stale(name):  # unloaded, but its old weights are still in a slot: wait for them to go
            if time.monotonic() > deadline:
                raise AdapterConfigError(f"adapter {name!r} was unloaded but requests still use it; load it again "
                                         "when they have finished")
            self._wake()
            time.sleep(0.02)
        with self._cv:
            if name in self.registry:
                raise AdapterConfigError(f"an adapter named {name!r} is already loaded; unload it first")
            self.host.put(a)
            self.registry[name] = Path(path)
        return a

    def _stale(self, name: str) -> bool:
        return self.slots.slot_of(name) is not None or name in self.host.entries or name in self.loading

    def unload_adapter(self, name: str) -> None:
        """Forget `name`: new requests get 404, requests already accepted finish with it."""
        with self._cv:
            if name not in self.registry:
                raise UnknownAdapter(f"The model `{name}` does not exist")
            del self.registry[name]
            self._cv.notify()

    def compiled(self) -> int:
        return self.kernels.compiled()

    def stop(self, drain: bool = True, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cv:
            self._stop = True
            self._cv.notify()
        while drain and self._busy() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1)
        self._loader.shutdown(wait=False, cancel_futures=True)

    def _busy(self) -> bool:
        return bool(self.waiting) or (self.decoder and bool(self.batch.live))

    # --- the engine thread ---

    def _run(self):
        while True:
            with self._cv:
                while not getattr(self, "_closed", False) and not self._has_work():
                    self._cv.wait(timeout=0.5)
                    self._gc_unloaded()  # also when idle, so an unloaded name can be loaded again
                if getattr(self, "_closed", False):
                    break
            try:
                self._iteration()
            except Exception as e:  # a bug: fail what is running, keep serving
                log.exception("engine step failed")
                self._fail_all(f"internal error: {type(e).__name__}: {e}")

    def _has_work(self) -> bool:
        return bool(self.waiting) or (self.decoder and bool(self.batch.live)) or \
            any(f.done() for f in self.loading.values())

    def _iteration(self):
        self._finish_loads()
        if self.decoder:
            self._drop_cancelled()
            self._admit_decoder()
            if self.batch.live:
                t0 = time.perf_counter()
                n_live = len(self.batch.live)
                out = self.batch.step(self.params)
                self.metrics.step(n_live, self.max_batch, time.perf_counter() - t0)
                self._emit(out)
        else:
            self._classify_step()
        self._gc_unloaded()

    def _finish_loads(self):
        for name, fut in list(self.loading.items()):
            if not fut.done():
                continue
            del self.loading[name]
            try:
                a = fut.result()
                if str(self.registry.get(name, a.path)) == a.path:  # not loaded again from elsewhere meanwhile
                    self.host.put(a)
                self.metrics.inc("adapter_loads_total")
            except Exception as e:
                self.metrics.inc("adapter_load_failures_total")
                msg = str(e) if isinstance(e, AdaptersJaxError) else f"{type(e).__name__}: {e}"
                log.warning("adapter %s cannot be served: %s", name, msg)
                with self._cv:
                    self.registry.pop(name, None)
                    failed = [r for r in self.waiting if r.adapter == name]
                    self.waiting = [r for r in self.waiting if r.adapter != name]
                for r in failed:
                    self._finish(r, "error", {"status": 500, "message": f"adapter {name!r} cannot be served: {msg}"})

    def _slot_for(self, req: Request) -> int | None:
        """req's bank slot (-1: the base), writing its adapter into a slot if it is in host memory; None: not yet."""
        if req.adapter is None:
            return -1
        s = self.slots.slot_of(req.adapter)
        if not req.hit_counted:
            req.hit_counted = True
            self.metrics.inc("adapter_hits_total" if s is not None else "adapter_misses_total")
        if s is not None:
            return s
        a = self.host.get(req.adapter)
        if a is None:
            if req.adapter not in self.loading and req.adapter in self.registry:
                self.loading[req.adapter] = self._loader.submit(
                    residency.read, self.registry[req.adapter], req.adapter, self.base, self.template)
                self.loading[req.adapter].add_done_callback(lambda _: self._wake())
            return None
        s = self.slots.victim()
        if s is None:
            return None
        self._write_slot(s, {p: jnp.asarray(a.tensors[p]) for p in self.bank_paths})
        self.slots.assign(s, req.adapter)
        self.labels_of[s] = a.labels
        return s

    def _wake(self):
        with self._cv:
            self._cv.notify()

    def _write_slot(self, slot: int, values: dict) -> None:
        """Bank slot `slot` (and its head) set to `values`, in place (one compiled update, whatever the adapter)."""
        flat = paths.flat(self.params)
        flat.update(self.kernels.write({p: flat[p] for p in self.bank_paths}, jnp.int32(slot), values))
        self.params = paths.unflat(flat)

    def _admit_decoder(self):
        joining = []
        with self._cv:
            queue_ = list(self.waiting)
        for req in queue_:
            if req.cancelled:
                self._remove_waiting(req)
                self._finish(req, "done", None)
                continue
            if len(joining) >= self.batch.free_rows():
                break
            slot = self._slot_for(req)
            if slot is None:
                continue
            group = [r for r, _ in joining] + [req]
            if not self.batch.fits(group):
                if not (self.batch.fits(group, compacted=True) and self.batch.compact() and self.batch.fits(group)):
                    break
            self.slots.take(slot)
            joining.append((req, slot))
            self._remove_waiting(req)
        if joining:
            t0 = time.perf_counter()
            out = self.batch.join(self.params, joining)
            self.metrics.observe("prefill_seconds", time.perf_counter() - t0)
            self._emit(out)

    def _remove_waiting(self, req):
        with self._cv:
            if req in self.waiting:
                self.waiting.remove(req)

    def _emit(self, out):
        now = time.perf_counter()
        for i, token in out:
            row = self.batch.rows[i]
            req = row.req
            if req.t_first is None:
                req.t_first = now
                self.metrics.observe("ttft_seconds", now - req.t_submit)
            n_before = len(row.ids)
            delta, reason = self.batch.push(i, token)
            if len(row.ids) > n_before:  # not the end-of-sequence token
                self.metrics.inc("generation_tokens_total")
                req.on_event("token", {"text": delta, "token_id": token})
            elif delta:
                req.on_event("token", {"text": delta, "token_id": None})
            if reason is not None:
                self.batch.drop(i)
                self.slots.release(row.slot)
                self.metrics.inc("prompt_tokens_total", len(req.prompt))
                self._finish(req, "done", {"finish_reason": reason, "token_ids": list(row.ids),
                                           "text": self._text(row), "prompt_tokens": len(req.prompt)})

    def _text(self, row) -> str:
        if row.req.final_text is not None:
            return row.req.final_text
        return self.tokenizer.decode(row.ids) if self.tokenizer is not None else ""

    def _finish(self, req: Request, kind: str, payload):
        if kind == "done" and payload is None:
            self.metrics.inc("requests_cancelled_total")
            return
        self.metrics.inc("requests_total" if kind != "error" else "requests_failed_total")
        if kind != "error":
            self.metrics.observe("latency_seconds", time.perf_counter() - req.t_submit)
        req.on_event(kind, payload)

    def _drop_cancelled(self):
        for i in self.batch.live:
            row = self.batch.rows[i]
            if row.req.cancelled:
                self.batch.drop(i)
                self.slots.release(row.slot)
                self.metrics.inc("requests_cancelled_total")

    def _gc_unloaded(self):
        """Adapters unloaded while requests used them leave once no request does."""
        with self._cv:  # decided under the lock: load_adapter registers a name and its host entry together
            pending = {r.adapter for r in self.waiting}
            for s, name in enumerate(self.slots.names):
                if name is not None and name not in self.registry and self.slots.users[s] == 0 and name not in pending:
                    self.slots.names[s] = None
            for name in list(self.host.entries):
                if name not in self.registry and name not in pending:
                    self.host.drop(name)

    def _fail_all(self, message: str):
        with self._cv:
            waiting, self.waiting = self.waiting, []
        for r in waiting:
            self._finish(r, "error", {"status": 500, "message": message})
        if self.decoder:
            for i in self.batch.live:
                row = self.batch.drop(i)
                self.slots.release(row.slot)
                self._finish(row.req, "error", {"status": 500, "message": message})

    # --- encoders: classification, one padded batch per step ---

    def _classify_step(self):
        rows, reqs = [], []
        with self._cv:
            queue_ = list(self.waiting)
        for req in queue_:
            if req.cancelled:
                self._remove_waiting(req)
                continue
            if rows and len(rows) + len(req.prompt) > self.max_batch:
                break
            slot = self._slot_for(req)
            if slot is None:
                continue
            self.slots.take(slot)
            self._remove_waiting(req)
            reqs.append((req, slot, len(rows)))
            rows.extend((ids, slot) for ids in req.prompt)
        if not rows:
            return
        t0 = time.perf_counter()
        logits_NxL = classify.logits(self.kernels, self.params, rows, self.max_batch)
        self.metrics.step(len(rows), self.max_batch, time.perf_counter() - t0)
        for req, slot, first in reqs:
            out = [classify.answer(logits_NxL[first + j], self.labels_of[slot]) for j in range(len(req.prompt))]
            self.slots.release(slot)
            n_tokens = sum(len(x) for x in req.prompt)
            self.metrics.inc("prompt_tokens_total", n_tokens)
            self._finish(req, "result", {"data": out, "prompt_tokens": n_tokens})

    # --- what /metrics and /v1/models show ---

    def gauges(self) -> dict:
        with self._cv:
            waiting = len(self.waiting)
        return {"queue_depth": waiting, "running_requests": len(self.batch.live) if self.decoder else 0,
                "resident_adapters": self.slots.resident, "bank_slots": len(self.slots.names),
                "host_cached_adapters": len(self.host.entries), "host_cache_bytes": self.host.used,
                "registered_adapters": len(self.registry), "compiled_programs": self.compiled(),
                "slot_evictions_total": self.slots.evictions, "host_evictions_total": self.host.evictions,
                "cache_compactions_total": self.batch.compactions if self.decoder else 0}
