"""Parts of scripts/device_check.sh that need Python. Each prints one JSON line last.

  python scripts/device_check_parts.py probe [--device=gpu|cpu]
      TensorFlow's build (CUDA or not, CUDA/cuDNN versions), the devices it sees, and a
      matmul on the first device checked against NumPy. Exit 1 if no such device.
  python scripts/device_check_parts.py train --logical_devices=N [--device=gpu|cpu] \\
      -- TRAIN_FLAGS...
      Splits the first GPU (or the CPU) into N logical devices, then runs
      `python -m dann_dist.train TRAIN_FLAGS` in this process (so MirroredStrategy can
      use the logical devices).
  python scripts/device_check_parts.py compare --tolerance=T DIR_A DIR_B
      Max |difference| over every numeric variable of the newest checkpoints in two model
      dirs (weights, optimizer slots and counters alike). Exit 1 if it exceeds T or the
      variables differ in names or shapes.

Exit status: 0 done; 1 the check failed; 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# Memory each logical GPU may take: the model and batch 512 need well under 1 GiB.
LOGICAL_GPU_MEMORY_MB = 4096


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    probe = sub.add_parser("probe")
    probe.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    train = sub.add_parser("train")
    train.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    train.add_argument("--logical_devices", type=int, default=1)
    train.add_argument("train_flags", nargs=argparse.REMAINDER)
    compare = sub.add_parser("compare")
    compare.add_argument("--tolerance", type=float, required=True)
    compare.add_argument("dir_a")
    compare.add_argument("dir_b")
    return parser


def probe(tf, np, device: str) -> int:
    kind = device.upper()
    physical = tf.config.list_physical_devices(kind)
    info = dict(tf.sysconfig.get_build_info())
    report = {"tensorflow": tf.__version__, "built_with_cuda": tf.test.is_built_with_cuda(),
              "cuda_version": info.get("cuda_version"), "cudnn_version": info.get("cudnn_version"),
              "cuda_compute_capabilities": info.get("cuda_compute_capabilities"),
              "devices": [d.name for d in physical]}
    if not physical:
        report["error"] = f"TensorFlow sees no {kind}"
        print(json.dumps(report), flush=True)
        return 1
    if kind == "GPU":
        report["device_details"] = tf.config.experimental.get_device_details(physical[0])
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 1024, 1024), dtype=np.float32)
    with tf.device(f"/{kind}:0"):
        started = time.perf_counter()
        product = tf.matmul(a, b)
        placed = product.device
        result = product.numpy()
        report["first_matmul_s"] = time.perf_counter() - started
    report["matmul_device"] = placed
    # TF32 on Ampere and later rounds inputs to 10 mantissa bits: allow for it.
    report["matmul_max_rel_error"] = float(np.max(np.abs(result - a @ b)) / np.max(np.abs(a @ b)))
    ok = f"{kind}:0" in placed and report["matmul_max_rel_error"] < 1e-2
    print(json.dumps(report), flush=True)
    return 0 if ok else 1


def split_device(tf, device: str, count: int) -> None:
    """Before TensorFlow initialises its devices: `count` logical devices on the first one."""
    kind = device.upper()
    physical = tf.config.list_physical_devices(kind)
    if not physical:
        raise SystemExit(f"error: TensorFlow sees no {kind} to split")
    limit = LOGICAL_GPU_MEMORY_MB if kind == "GPU" else None
    tf.config.set_logical_device_configuration(
        physical[0], [tf.config.LogicalDeviceConfiguration(memory_limit=limit)] * count)


def compare(tf, np, dir_a: str, dir_b: str, tolerance: float) -> int:
    def numeric(model_dir):
        reader = tf.train.load_checkpoint(model_dir)
        out = {}
        for name in reader.get_variable_to_shape_map():
            value = np.asarray(reader.get_tensor(name))
            if value.dtype.kind in "fiu":  # skips the object graph (a string)
                out[name] = value.astype(np.float64)
        return out

    a, b = numeric(dir_a), numeric(dir_b)
    report = {"variables": len(a)}
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        report["error"] = f"checkpoints differ in variables: {sorted(a.keys() ^ b.keys())[:5]}"
        print(json.dumps(report), flush=True)
        return 1
    diffs = {k: float(np.max(np.abs(a[k] - b[k]))) if a[k].size else 0.0 for k in a}
    worst = max(diffs, key=diffs.get)
    report.update(max_abs_difference=diffs[worst], worst_variable=worst, tolerance=tolerance)
    if diffs[worst] > tolerance:
        report["error"] = f"max |difference| {diffs[worst]:.3g} exceeds {tolerance:g} ({worst})"
    print(json.dumps(report), flush=True)
    return 1 if "error" in report else 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    # Heavy imports after argument parsing: --help and usage errors stay instant.
    import numpy as np
    import tensorflow as tf

    if args.command == "probe":
        return probe(tf, np, args.device)
    if args.command == "compare":
        return compare(tf, np, args.dir_a, args.dir_b, args.tolerance)
    if args.logical_devices > 1:
        split_device(tf, args.device, args.logical_devices)
    from dann_dist import train

    flags = args.train_flags[1:] if args.train_flags[:1] == ["--"] else args.train_flags
    sys.argv = ["dann_dist.train", *flags]
    train.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
