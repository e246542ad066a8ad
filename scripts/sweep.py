"""Run a config's sweep(): every point as its own training process; one row per run in a results table.

    python scripts/sweep.py --config experiments/ablations/NAME.py [--executor local|ray] [--max-parallel N]
        [--workdir DIR] [--results FILE] [--only ID,ID] [--ray-address HOST:PORT] [--cpus-per-point C]

Defaults: runs in runs/sweeps/NAME/<point>/, the table experiments/results/NAME/results.jsonl. A rerun skips
the points in the table and resumes the others from their checkpoints. `--executor ray` submits the points
to a Ray cluster (`ray start --head` on one machine, `ray start --address HEAD:6379` on the others; every
node with this repository, its venv and the assets at the same paths). Then: python scripts/report.py
experiments/results/NAME. Exit status: 0 all points finished, 1 some failed (their logs are printed),
2 bad input (one `error:` line).

    python scripts/sweep.py --config FILE --workdir DIR --point ID    # one point (what the driver starts)
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="config file with get_config() and sweep()")
    p.add_argument("--workdir", help="where the points' run directories go (default runs/sweeps/NAME)")
    p.add_argument("--results", help="results table (default experiments/results/NAME/results.jsonl)")
    p.add_argument("--executor", default="local", choices=("local", "ray"))
    p.add_argument("--max-parallel", type=int, default=1, help="points running at once")
    p.add_argument("--ray-address", default=None, help="a running Ray cluster (default: auto)")
    p.add_argument("--cpus-per-point", type=float, default=1.0, help="Ray: CPUs each point reserves")
    p.add_argument("--only", default="", help="comma-separated point ids to run (default: all)")
    p.add_argument("--point", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    from adapters_jax.errors import AdaptersJaxError
    from adapters_jax.sweeps import runner

    try:
        if a.point:
            if not a.workdir:
                raise AdaptersJaxError("--point needs --workdir")
            rows = runner.run_point(a.config, a.point, a.workdir)
            print(f"point {a.point}: {len(rows)} row(s), {rows[0]['metrics']}")
            return 0
        summary = runner.run_sweep(a.config, a.workdir, a.results, executor=a.executor,
                                   max_parallel=a.max_parallel, ray_address=a.ray_address,
                                   cpus_per_point=a.cpus_per_point, only=[x for x in a.only.split(",") if x] or None)
    except AdaptersJaxError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    print(f"{summary['ran']} ran, {summary['skipped']} already finished, {len(summary['failed'])} failed"
          + (f": {sorted(summary['failed'])}" if summary["failed"] else ""))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
