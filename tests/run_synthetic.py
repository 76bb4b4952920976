"""Runs the real trainer on tests/synthetic.py data, with the real flags, under any
launcher (python, horovodrun, TF_CONFIG workers). Used by the multi-process tests.

  python tests/run_synthetic.py --model_dir=D [--strategy=...] [--logical_cpus=2] [other flags]
"""

from __future__ import annotations

import os

from absl import app, flags

# Run as a script: tests/ is sys.path[0] (for `synthetic`); dann_dist is installed.
from dann_dist import cli, train
from dann_dist import config as config_lib


def main(argv):
    import tensorflow as tf

    if flags.FLAGS.logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * flags.FLAGS.logical_cpus)
    if flags.FLAGS.pid_dir:
        # Lets a test find and kill one particular rank.
        rank = os.environ.get("HOROVOD_RANK", "0")
        with open(os.path.join(flags.FLAGS.pid_dir, rank), "w") as f:
            f.write(str(os.getpid()))
    from synthetic import synthetic_domains

    seed = flags.FLAGS.data_seed + (int(os.environ.get("HOROVOD_RANK", "0"))
                                     if flags.FLAGS.data_seed_per_rank else 0)
    train.main(argv, domains=synthetic_domains(flags.FLAGS.n_train, seed=seed))


if __name__ == "__main__":
    config_lib.define_flags()
    config_lib.define_test_hook_flags()
    flags.DEFINE_integer("logical_cpus", 1, "Split the CPU into this many logical devices.")
    flags.DEFINE_integer("n_train", 256, "Synthetic training images per domain.")
    flags.DEFINE_string("pid_dir", "", "Write this process's pid to <pid_dir>/<rank>.")
    flags.DEFINE_integer("data_seed", 0, "Seed of the synthetic data.")
    flags.DEFINE_bool("data_seed_per_rank", False,
                      "Testing aid: each Horovod rank gets other data.")
    # The synthetic domains are small: hold out and score a fraction of them only.
    flags.FLAGS.set_default("source_holdout", 32)
    flags.FLAGS.set_default("selection_images", 64)
    # Machine-independent numerics (auto follows the CPU); tests may still pass --precision.
    flags.FLAGS.set_default("precision", "float32")
    app.run(main, flags_parser=cli.parse_flags_or_exit)
