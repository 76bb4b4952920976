"""benchmarks/step_breakdown.py times every part of the step it lists."""

from __future__ import annotations

import math
import sys

import pytest

from bench_helpers import run


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_step_breakdown_times_every_part(precision):
    stdout = run([sys.executable, "benchmarks/step_breakdown.py", f"--precision={precision}",
                  "--batch_size=4", "--calls=1"]).stdout
    lines = [line for line in stdout.splitlines() if line.rstrip().endswith(("ms", "GFLOP/s"))]
    names = ("whole step", "forward + all gradients", "optimizer updates", "extractor",
             "conv1 3->32", "conv1 1->32", "conv2 32->48")
    for name in names:
        line = next((text for text in lines if name in text), None)
        assert line is not None, f"{name} missing:\n{stdout}"
        milliseconds = float(line.split(" ms")[0].split()[-1])
        assert milliseconds > 0 and math.isfinite(milliseconds)
