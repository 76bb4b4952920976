"""Train DANN on MNIST -> MNIST-M, on one device or data-parallel.

  python -m dann_dist.train --flagfile=configs/mnist_mnistm.cfg --model_dir=runs/dann
  horovodrun -np 4 python -m dann_dist.train --flagfile=configs/mnist_mnistm.cfg
  python -m dann_dist.train --strategy=mirrored ...

Running the same command again resumes from the newest checkpoint in --model_dir.
The last stdout line is the final evaluation as JSON. Exit status: 0 done; 1 data or
runtime error (unreadable checkpoints, a full disk: the last good checkpoint is kept);
2 bad flags (also: --model_dir in use by another run, or a resume with flags that change
what is trained); 3 non-finite loss or weights; 128+N stopped by signal N (rerun to resume).
"""

from __future__ import annotations

import json

from absl import app

from dann_dist import cli
from dann_dist import config as config_lib


def main(argv: list[str], domains=None) -> None:
    """`domains` (source, target) replaces the data flags; the tests pass synthetic ones."""
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}; flags are --name=value", cli.EXIT_USAGE)
    try:
        config = config_lib.from_flags()
    except config_lib.ConfigError as err:
        cli.fail(str(err), cli.EXIT_USAGE)
    # Heavy imports after the flags are checked: --help and flag errors take a fraction of a
    # second, not TensorFlow's start-up (~6 s on a 2-core CPU).
    import tensorflow as tf

    from dann_dist import checkpoints, distribute, trainer
    from dann_dist.data import DataError

    try:
        metrics = trainer.train_and_evaluate(config, domains)
    except config_lib.ConfigError as err:
        cli.fail(str(err), cli.EXIT_USAGE)
    except (DataError, distribute.InconsistentProcessesError, checkpoints.CheckpointError) as err:
        cli.fail(str(err), cli.EXIT_ERROR)
    except trainer.NonFiniteLossError as err:
        cli.fail(str(err), cli.EXIT_NONFINITE)
    except trainer.StopRequested as stop:
        cli.fail(f"{stop}; rerun the same command to resume", stop.exit_code)
    except (OSError, tf.errors.OpError) as err:
        # A full disk or a failing filesystem at any write (lock, run.json, TensorBoard,
        # eval_history, metrics.json): checkpoints are written whole or not at all.
        where = getattr(err, "filename", None) or ""
        cli.fail(f"reading or writing {where or 'the run directory'} failed "
                 f"({str(err).splitlines()[0][:300]}); the checkpoints already written are "
                 "kept: fix the cause (e.g. free space) and rerun the same command to resume.",
                 cli.EXIT_ERROR)
    print(json.dumps(metrics, sort_keys=True), flush=True)


def run() -> None:
    config_lib.define_flags()
    app.run(main, flags_parser=cli.parse_flags_or_exit)


if __name__ == "__main__":
    run()
