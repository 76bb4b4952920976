"""Evaluate a trained run: source and target test accuracy and loss, domain accuracy.

  python -m dann_dist.evaluate --model_dir=runs/dann [--checkpoint=PATH]

Uses the newest readable checkpoint on disk (the final model: selection never looks at
target labels; a lost `checkpoint` index does not matter). Target labels are used only to
report target accuracy. The last stdout line is one JSON object with source_accuracy,
target_accuracy, domain_accuracy, source_loss, target_loss, `step`, `train_steps`,
`training_complete` and the checkpoint path. A run that has not reached its --train_steps
is evaluated all the same (exit 0), with a line "training incomplete: step k of N" before
the JSON, or "training in progress" while its trainer holds the run's lease (checkpoints
it deletes while they are read are skipped, and the listing read again).

Exit status: 0 done; 1 unreadable checkpoints or run.json, or a data error; 2 bad flags,
a --model_dir without a run or a checkpoint, or a --checkpoint that does not exist.
"""

from __future__ import annotations

import dataclasses
import json

from absl import app, flags

from dann_dist import cli, lease, rundir
from dann_dist.data.flags import DATA_FLAGS

FLAGS = flags.FLAGS


def define_flags() -> None:
    from dann_dist.data import define_flags as define_data_flags

    define_data_flags()
    flags.DEFINE_string("model_dir", None, "A --model_dir written by dann_dist.train.",
                        required=True)
    flags.DEFINE_string("checkpoint", "", "A checkpoint path (default: the newest in --model_dir).")
    flags.DEFINE_integer("eval_batch_size", 1000, "Batch of the forward passes.", lower_bound=1)
    flags.DEFINE_integer("max_test_examples", 0, "Only the first N test images (0: all).",
                         lower_bound=0)


def evaluate_run(model_dir: str, checkpoint: str = "", eval_batch_size: int = 1000,
                 max_test_examples: int = 0, data_overrides: dict | None = None,
                 domains=None) -> dict:
    config, mean, state, path = rundir.restore_run(model_dir, checkpoint)
    # After restore_run, which reports a damaged run.json or a mistyped --checkpoint
    # before TensorFlow starts.
    from dann_dist import step as step_lib
    from dann_dist.data.load import load_domains
    from dann_dist.eval_lib import make_evaluator
    from dann_dist.methods import registry

    config = dataclasses.replace(config, **(data_overrides or {}))
    source, target = domains or load_domains(config)
    n = max_test_examples or None
    test_sets = {"source": (source.x_test[:n], source.y_test[:n]),
                 "target": (target.x_test[:n], target.y_test[:n])}
    # The weights the trainer evaluated and exported (the moving average, if any).
    with step_lib.evaluation_weights(state):
        evaluator = make_evaluator(state.models, registry.get(config.adaptation))
        metrics = evaluator(test_sets, mean, eval_batch_size)
    step = int(state.step.numpy())
    metrics.update(step=step, checkpoint=path, train_steps=config.train_steps,
                   training_complete=step >= config.train_steps)
    return metrics


def completion_note(metrics: dict, live: dict | None = None) -> str:
    """'' for a finished run, else the line that says how far it got. `live`: the lease
    of a trainer that is still at work on the run (lease.live_lease)."""
    if metrics["training_complete"]:
        return ""
    if live:
        return (f"training in progress: step {metrics['step']} of {metrics['train_steps']} "
                f"(the run is live: pid {live.get('pid')} on host {live.get('host')} holds its "
                "lease; this is its newest readable checkpoint)")
    return (f"training incomplete: step {metrics['step']} of {metrics['train_steps']} "
            "(rerun dann_dist.train with the same flags to finish it)")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}", cli.EXIT_USAGE)
    from dann_dist.data import DataError

    overrides = {name: FLAGS[name].value for name in DATA_FLAGS if FLAGS[name].present}
    try:
        metrics = evaluate_run(FLAGS.model_dir, FLAGS.checkpoint, FLAGS.eval_batch_size,
                               FLAGS.max_test_examples, overrides)
    except FileNotFoundError as err:
        cli.fail(str(err), cli.EXIT_USAGE)
    except (DataError, rundir.RunRecordError) as err:
        cli.fail(str(err), cli.EXIT_ERROR)
    except Exception as err:
        # Imported only now: dann_dist.checkpoints starts TensorFlow, and a CheckpointError
        # can only come from a run that has started it already.
        from dann_dist.checkpoints import CheckpointError

        if not isinstance(err, CheckpointError):
            raise
        cli.fail(str(err), cli.EXIT_ERROR)
    note = completion_note(metrics, lease.live_lease(FLAGS.model_dir))
    if note:
        print(note)
    for name in ("source_accuracy", "target_accuracy", "domain_accuracy"):
        if name in metrics:  # a method without a discriminator has no domain accuracy
            print(f"{name}: {metrics[name]:.4f}")
    print(json.dumps(metrics, sort_keys=True), flush=True)


def run() -> None:
    define_flags()
    app.run(main, flags_parser=cli.parse_flags_or_exit)


if __name__ == "__main__":
    run()
