"""Train an adapter: python scripts/train.py --config experiments/configs/NAME.py [--config.key=value ...]

    --workdir DIR   run directory (default runs/<config>-<adapter>-seed<seed>-<time>), printed at start
    --resume        continue from the latest complete checkpoint in --workdir

Prints the test accuracy (at the best validation step) and the trainable share,
and writes DIR/report.json.
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
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # Orbax logs every save step at INFO
    from adapters_jax.train import loop

    config = FLAGS.config
    name = Path(FLAGS["config"].config_filename.split(":")[0]).stem
    workdir = FLAGS.workdir or os.path.join("runs", f"{name}-seed{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        report = loop.run(config, workdir, resume=FLAGS.resume)
    except (loop.TrainingError, loop.ckpt_lib.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    acc = report["test_accuracy"]
    result = (f"test accuracy {acc * 100:.2f}% (at best validation {report['val_accuracy'] * 100:.2f}%, "
              f"step {report['best_step']})" if acc is not None else f"stopped at step {report['steps']} before "
              "any evaluation")
    print(f"{result}; trainable {report['trainable_params']:,} params = "
          f"{report['trainable_share']:.2f}% of the model; train {report['train_s']:.0f}s, "
          f"compile {report['compile_s']:.0f}s, wall {report['wall_s']:.0f}s; {workdir}/report.json")
    return 0


if __name__ == "__main__":
    app.run(main)
