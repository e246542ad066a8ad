"""Run a sweep: every point as its own training process, here or on a Ray cluster; one table of rows.

    run_sweep("experiments/ablations/init_scale.py")                   # the driver (scripts/sweep.py)
    run_point("experiments/ablations/init_scale.py", POINT, WORKDIR)    # one point (scripts/sweep.py --point)

The driver never trains. It starts `scripts/sweep.py --point ID` per point (a fresh process: its own XLA
flags, its own memory, nothing shared between points) with at most `max_parallel` at once, and appends
the rows each finished point returns to the results table (JSONL, one writer: the driver). A point is
finished when its rows are in the table; a rerun skips those, picks up rows a killed driver had not yet
appended (WORKDIR/ID/rows.json), and restarts the rest, each resuming from its latest complete
checkpoint (WORKDIR/ID/checkpoints). A failed point is reported with its log and the others go on.

Ray (`executor="ray"`): the same command runs as a Ray task (`num_cpus=cpus_per_point`) on whichever node
has room; the task returns the rows, so the table is written by the driver whatever node trained. Every
node must hold this repository, its virtual environment and the assets at the same paths as the driver
(one image or one shared file system), as for any Ray job that starts processes.

A row: sweep, point, factors (the point's overrides, plus a variant's own for rows from the config's
`evaluate`), variant, seed, metrics (test_/val_ numbers), trainable params and share, steps, times,
split counts, peak host (and accelerator) memory, the commit, the host and when it finished.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import threading
from pathlib import Path

from adapters_jax import checkpoint as ckpt_lib
from adapters_jax import xla_flags
from adapters_jax.errors import ConfigError
from adapters_jax.sweeps import grid
from adapters_jax.train import records

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "sweep.py"


def default_paths(config_path: str | Path) -> tuple[Path, Path]:
    """(workdir, results table) for a sweep named after its config file."""
    name = Path(config_path).stem
    return ROOT / "runs" / "sweeps" / name, ROOT / "experiments" / "results" / name / "results.jsonl"


def read_rows(results: str | Path) -> list[dict]:
    """The table's rows (none for a missing file); a torn last line (a killed append) is skipped."""
    path = Path(results)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _append(results: Path, rows: list[dict]) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _number_metrics(d: dict) -> dict:
    return {k: v for k, v in d.items() if (k.startswith(("test_", "val_")) and isinstance(v, (int, float))
                                          and not isinstance(v, bool))}


def run_point(config_path: str | Path, point: str, workdir: str | Path) -> list[dict]:
    """Train one point (resuming its checkpoint, or reusing its finished report), run the config's
    `evaluate`, write WORKDIR/POINT/rows.json and return the rows."""
    module = grid.load_module(config_path)
    pts = grid.points(module, str(config_path))
    if point not in pts:
        raise ConfigError(f"{config_path} has no sweep point {point!r}; its points: {sorted(pts)}")
    config = grid.config_for(module, pts[point])
    config.progress = False  # the log is a file: no progress bar in it
    xla_flags.apply_for(config.model)  # before the first JAX computation in this process
    from adapters_jax.train import loop  # noqa: E402  (JAX computes only after the flags are set)

    run_dir = Path(workdir) / point
    if (run_dir / "report.json").exists():  # trained; a kill came during the evaluations
        report = json.loads((run_dir / "report.json").read_text())
    else:
        report = loop.run(config, run_dir, resume=bool(ckpt_lib.finished_steps(run_dir)))
    common = {
        "sweep": Path(config_path).stem, "point": point, "seed": config.seed, "model": config.model,
        "task": report["task"], "adapter": report["adapter"], "trainable_params": report["trainable_params"],
        "trainable_share": report["trainable_share"], "steps": report["steps"], "train_s": report["train_s"],
        "wall_s": report["wall_s"], "split_counts": report["split_counts"],
        "commit": records.provenance()["git_commit"], "versions": report.get("versions") or records.versions(),
        "machine": report.get("machine") or records.machine(),
        "host": platform.node(),
    }
    rows = [{**common, "factors": dict(pts[point]), "variant": None, "metrics": _number_metrics(report)}]
    for extra in (module.evaluate(config, run_dir) if hasattr(module, "evaluate") else []):
        rows.append({**common, "factors": {**pts[point], **extra["factors"]}, "variant": extra["variant"],
                     "metrics": extra["metrics"]})
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = [{**r, **peak_memory(), "finished": stamp} for r in rows]
    ckpt_lib.write_json(run_dir / "rows.json", rows)
    return rows


def peak_memory() -> dict:
    """This process's peak resident memory, and the accelerator's peak bytes in use where it reports them
    (None on the CPU). A point is a process of its own, so these are the point's peaks (and, after its
    evaluations, those of the evaluations too)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return {"peak_host_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_device_mb": None if peak is None else peak / 2**20}


def point_command(config_path: Path, point: str, workdir: Path) -> list[str]:
    return [sys.executable, str(SCRIPT), "--config", str(config_path), "--workdir", str(workdir), "--point", point]


def _run_local(cmd: list[str], run_dir: Path) -> tuple[int, list[dict] | None, str]:
    """(exit status, the point's rows or None, the log's last lines); the log goes to RUN_DIR/log.txt."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "log.txt"
    with log.open("a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    rows_file = run_dir / "rows.json"
    rows = json.loads(rows_file.read_text()) if rc == 0 and rows_file.exists() else None
    return rc, rows, "\n".join(log.read_text(errors="replace").splitlines()[-15:])


def _ray_submit(cpus_per_point: float):
    import ray

    @ray.remote(num_cpus=cpus_per_point, max_retries=0)
    def point_task(cmd, run_dir):
        return _run_local(cmd, Path(run_dir))

    return lambda cmd, run_dir: point_task.remote(cmd, str(run_dir))


def run_sweep(config_path: str | Path, workdir: str | Path | None = None, results: str | Path | None = None, *,
              executor: str = "local", max_parallel: int = 1, ray_address: str | None = None,
              cpus_per_point: float = 1.0, only: list[str] | None = None, log=print) -> dict:
    """Run the sweep's unfinished points; returns {"points", "skipped", "ran", "failed": {id: log tail}}."""
    config_path = Path(config_path).resolve()
    module = grid.load_module(config_path)
    pts = grid.points(module, str(config_path))
    d_work, d_results = default_paths(config_path)
    workdir, results = Path(workdir or d_work).resolve(), Path(results or d_results).resolve()
    if only:
        if unknown := sorted(set(only) - set(pts)):
            raise ConfigError(f"--only names points the sweep does not have: {unknown}; its points: {sorted(pts)}")
    if executor not in ("local", "ray"):
        raise ConfigError(f"executor {executor!r}; choose local or ray")
    if max_parallel < 1:
        raise ConfigError(f"max_parallel={max_parallel} must be >= 1")
    for overrides in pts.values():  # a key the config lacks fails here, not in every point's process
        grid.config_for(module, overrides)
    done = {r["point"] for r in read_rows(results)}
    for pid in pts:  # finished by a worker, not yet appended (the driver was killed in between)
        if pid not in done and (workdir / pid / "rows.json").exists():
            _append(results, json.loads((workdir / pid / "rows.json").read_text()))
            done.add(pid)
    todo = [p for p in pts if p not in done and (not only or p in only)]
    log(f"{config_path.stem}: {len(pts)} points, {len(pts) - len(todo)} finished, {len(todo)} to run "
        f"({executor}, {max_parallel} at once); table {results}")
    failed: dict[str, str] = {}
    lock = threading.Lock()

    def finished(pid, rc, rows, tail):
        with lock:
            if rows is not None:
                _append(results, rows)
                m = rows[0]["metrics"]
                log(f"  done {pid}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(m.items())))
            else:
                failed[pid] = tail
                log(f"  FAILED {pid} (exit {rc}); log {workdir / pid / 'log.txt'}:\n{tail}")

    if executor == "local":
        with cf.ThreadPoolExecutor(max_parallel) as pool:
            futures = {pool.submit(_run_local, point_command(config_path, p, workdir), workdir / p): p for p in todo}
            for fut in cf.as_completed(futures):
                finished(futures[fut], *fut.result())
    else:
        try:
            import ray
        except ImportError as e:
            raise ConfigError(f"--executor ray needs the ray package (pip install 'ray>=2.50'): {e}") from e
        try:
            if ray_address:  # Ray itself retries an unreachable address for minutes
                host, _, port = ray_address.rpartition(":")
                socket.create_connection((host, int(port)), timeout=5).close()
            ray.init(address=ray_address or "auto", log_to_driver=False)
        except (OSError, RuntimeError, ValueError) as e:  # ConnectionError is an OSError
            raise ConfigError(f"no Ray cluster at {ray_address or 'auto'} ({e}); start one with `ray start --head` "
                              "and pass its address with --ray-address HOST:PORT") from e
        try:
            submit = _ray_submit(cpus_per_point)
            pending = {}
            queue = list(todo)
            while queue or pending:
                while queue and len(pending) < max_parallel:
                    p = queue.pop(0)
                    pending[submit(point_command(config_path, p, workdir), workdir / p)] = p
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    finished(pending.pop(ref), *ray.get(ref))
        finally:
            ray.shutdown()
    return {"points": len(pts), "skipped": len(pts) - len(todo), "ran": len(todo) - len(failed), "failed": failed}
