"""Train an adapter: python scripts/train.py --config experiments/configs/NAME.py [--config.key=value ...]

    --workdir DIR   run directory (default runs/<config>-seed<seed>-<time>), printed at start
    --resume        continue from the latest complete checkpoint in --workdir

Multi-host (docs/parallel.md): run the same command on every host, with
    --multihost                       join JAX's multi-controller runtime (TPU pods, SLURM: found automatically)
    --coordinator_address HOST:PORT   process 0's address (or $JAX_COORDINATOR_ADDRESS)
    --num_processes N --process_id I  (or $JAX_NUM_PROCESSES, $JAX_PROCESS_ID)

XLA:CPU flags are chosen for the model's family before JAX starts (adapters_jax/xla_flags.py;
ADAPTERS_JAX_ONEDNN=0/1 forces) and recorded in report.json.

Prints the test accuracy (at the best validation step) and the trainable share,
and writes DIR/report.json. A refusal (bad flag, config, model, data, checkpoint
or asset) is one `error: ...` line on stderr and exit status 2.
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/ configs import each other

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", "experiments/configs/rt_houlsby.py", "experiment config file")
flags.DEFINE_string("workdir", None, "run directory")
flags.DEFINE_bool("resume", False, "resume from the latest checkpoint in --workdir")
flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize (implied by the next three flags)")
flags.DEFINE_string("coordinator_address", None, "multi-host: HOST:PORT of process 0")
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
flags.DEFINE_integer("process_id", None, "multi-host: this process's id, 0..num_processes-1")
FLAGS = flags.FLAGS


def refuse(message) -> None:
    """Exit with status 2 after one `error:` line on stderr (a message's line breaks become spaces)."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag, config file or --config.KEY reported as one `error:` line."""
    try:
        return FLAGS(argv)
    except flags.Error as e:  # an unknown flag or a value of the wrong type
        refuse(e)
    except (KeyError, AttributeError) as e:  # ml_collections: --config.KEY that the config does not hold
        while isinstance(e, BaseException) and e.args:  # ml_collections nests the KeyError's message
            e = e.args[0]
        refuse(f"--config.KEY=VALUE names a key the config does not hold: {e}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # Orbax logs every save step at INFO
    config = FLAGS.config
    try:
        model = config.model
    except OSError as e:  # ml_collections raises the config file's load failure on first use
        refuse(f"cannot load the config file {FLAGS['config'].config_filename}: {e}")
    from adapters_jax.errors import AdaptersJaxError

    try:
        from adapters_jax import xla_flags

        xla_flags.apply_for(model)  # before anything touches JAX: XLA reads XLA_FLAGS once
        from adapters_jax.train import loop, parallel

        env = {k: os.environ.get(f"JAX_{k.upper()}") for k in ("num_processes", "process_id")}
        num_processes = FLAGS.num_processes if FLAGS.num_processes is not None else env["num_processes"]
        process_id = FLAGS.process_id if FLAGS.process_id is not None else env["process_id"]
        if FLAGS.multihost or FLAGS.coordinator_address or num_processes is not None:
            parallel.initialize(FLAGS.coordinator_address, None if num_processes is None else int(num_processes),
                                None if process_id is None else int(process_id))

        name = Path(FLAGS["config"].config_filename.split(":")[0]).stem
        workdir = FLAGS.workdir or os.path.join("runs", f"{name}-seed{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
        if config.get("tasks"):  # several tasks, one adapter each, in one bank
            from adapters_jax.train import multitask

            report = multitask.run(config, workdir, resume=FLAGS.resume)
            if not report["completed"]:
                print(f"stopped at step {report['steps']} (SIGTERM); --resume continues; {workdir}/report.json")
                return 0
            print("; ".join(f"{k} {v * 100:.2f}%" for k, v in report.items() if k.endswith("test_accuracy"))
                  + f"; train {report['train_s']:.0f}s, wall {report['wall_s']:.0f}s; {workdir}/report.json")
            return 0
        report = loop.run(config, workdir, resume=FLAGS.resume)
    except AdaptersJaxError as e:
        refuse(e)
    key = "perplexity" if report["task_kind"] == "lm" else "accuracy"  # train/kinds.py: what `best` follows
    test, val, step = report[f"test_{key}"], report[f"val_{key}"], report["best_step"]
    fmt = (lambda x: f"{x:.3f}") if key == "perplexity" else (lambda x: f"{x * 100:.2f}%")
    if test is None:
        result = f"stopped at step {report['steps']} before any evaluation"
    elif val is None:
        result = f"test {key} {fmt(test)} (step {step}; no validation split, so the last evaluation)"
    else:
        result = f"test {key} {fmt(test)} (at best validation {fmt(val)}, step {step})"
    print(f"{result}; trainable {report['trainable_params']:,} params = "
          f"{report['trainable_share']:.2f}% of the model; train {report['train_s']:.0f}s, "
          f"compile {report['compile_s']:.0f}s, wall {report['wall_s']:.0f}s; {workdir}/report.json")
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
