"""Orbax adapter-only training checkpoints.

A checkpoint holds exactly the train state (trainable params, optimizer state,
step, RNG), the data iterator's position and human-readable metadata; never a
base tensor. Layout: WORKDIR/checkpoints/<step>/{state,data,meta}. Orbax writes
each step to a temporary directory and renames it when complete, so a killed
save leaves no half checkpoint where a good one was, and `latest` only ever
sees complete ones.

Retention: the last `keep` checkpoints plus the best one by a metric (Orbax
preservation policies, combined with "any": the best rule never deletes the
latest). Saves are asynchronous; `wait()` blocks until the last one is on disk.
Restoring checks the metadata first and refuses another adapter setup or base
by name. A checkpoint may also hold the run's best-so-far evaluation (`best`),
so a resumed run continues from the record that matches its state.

`write_json` writes the small files beside the checkpoints (best.json,
report.json) atomically: a reader sees the old file or the new one, never a part.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from adapters_jax import configs
from adapters_jax.errors import CheckpointError  # noqa: F401  (re-exported)

# Metadata keys that must match for a resume (the rest is informational).
MUST_MATCH = ("adapter", "adapter_setup", "train_rules", "base_fingerprint", "task")


def finished_steps(workdir: str | Path) -> list[int]:
    """The steps with a complete checkpoint in WORKDIR/checkpoints (Orbax's own listing), oldest first."""
    d = Path(workdir) / "checkpoints"
    return sorted(ocp.path.step.checkpoint_steps(d)) if d.is_dir() else []


class Checkpointer:
    def __init__(self, workdir: str | Path, meta: dict, *, keep: int = 2, best_metric: str | None = "val_accuracy",
                 async_save: bool = True):
        self.dir = Path(workdir).resolve() / "checkpoints"
        self.meta = meta
        policies = [cm.LatestN(n=keep)]
        if best_metric:
            policies.append(cm.BestN(get_metric_fn=lambda m: m[best_metric], n=1,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.mgr = ocp.CheckpointManager(self.dir, options=options, item_names=("state", "data", "meta", "best"))

    def save(self, state: dict, data_position: dict, metrics: dict | None = None, force: bool = True,
             best: dict | None = None) -> int:
        """Save `state` at its step (asynchronously unless async_save=False); `best`: the run's best-so-far record."""
        step = int(jax.device_get(state["step"]))
        items = {"state": ocp.args.StandardSave(state), "data": ocp.args.JsonSave(data_position),
                 "meta": ocp.args.JsonSave(self.meta)}
        if best is not None:
            items["best"] = ocp.args.JsonSave(best)
        self.mgr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)
        return step

    def wait(self):
        self.mgr.wait_until_finished()

    def close(self):
        self.mgr.close()

    def latest_step(self) -> int | None:
        return self.mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.mgr.all_steps())

    def restore(self, abstract_state: dict, step: int | None = None) -> tuple[dict, dict, dict]:
        """(state, data_position, meta) of `step` (default: the latest complete checkpoint)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no complete checkpoint in {self.dir}; nothing to resume from "
                                  "(start without --resume, or point --workdir at the run to continue)")
        try:
            meta = self.mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            raise CheckpointError(f"checkpoint {self.dir / str(step)} is unreadable ({type(e).__name__}: {e}); "
                                  "it was left as it is") from e
        check_meta(meta, self.meta, self.dir / str(step))
        try:
            out = self.mgr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except Exception as e:
            raise CheckpointError(f"checkpoint {self.dir / str(step)} does not restore into this run's state "
                                  f"({type(e).__name__}: {e}); it was left as it is") from e
        return out["state"], out["data"], meta

    def saved_best(self, step: int) -> dict | None:
        """The best-so-far record saved with checkpoint `step`; None if it holds none."""
        if not (self.dir / str(step) / "best").is_dir():
            return None
        return self.mgr.restore(step, args=ocp.args.Composite(best=ocp.args.JsonRestore()))["best"]


def _same(key: str, a, b) -> bool:
    """Equal values; adapter setups compare as parsed configs (a string written by an older canonical form
    of configs.to_string still matches the same setup)."""
    if key == "adapter_setup" and isinstance(a, str) and isinstance(b, str) and a != b:
        try:
            return configs.parse(a) == configs.parse(b)
        except configs.AdapterConfigError:
            return False
    return a == b


def check_meta(saved: dict, current: dict, where) -> None:
    for key in MUST_MATCH:
        if key in saved and key in current and not _same(key, saved[key], current[key]):
            raise CheckpointError(
                f"{where} was written with {key}={json.dumps(saved[key])}, but this run has "
                f"{key}={json.dumps(current[key])}; resume with the same setup or use another --workdir"
            )


def write_json(path: str | Path, obj) -> None:
    """Write `obj` as JSON to `path` through a temporary file and os.replace (atomic on POSIX)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
