"""The machine the bench runs on, as the OS and TensorFlow see it: the CPUs and their
model, the load, this process's peak memory, TensorFlow's thread pools and logical CPUs,
the GPUs and their memory, and one large matmul timed as this run's reference for achieved
GFLOP/s. (Pinning the process to a core has to precede TensorFlow: cli.py does it.)"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from typing import Callable

import tensorflow as tf

# The dtype each precision computes its convolutions and matmuls in.
COMPUTE_DTYPES = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


def configure(intra_op_threads: int, inter_op_threads: int, cpu_devices: int) -> None:
    """Thread pools (0: TensorFlow's default) and logical CPU devices; before any op runs."""
    if intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    if inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    if cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def gpu_names() -> list[str]:
    """Names of the visible GPUs (empty without one)."""
    return [tf.config.experimental.get_device_details(g).get("device_name", g.name)
            for g in tf.config.list_physical_devices("GPU")]


def describe() -> dict:
    """CPUs on the host, those this process may use, their model, the Python version, and
    the visible GPUs' names if any."""
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    info = {"cpus": cores, "cpus_usable": usable, "cpu_model": cpu_model(),
            "python": platform.python_version()}
    gpus = gpu_names()
    if gpus:
        info["gpus"] = gpus
    return info


def threads_line() -> str:
    """The thread pools TensorFlow uses, as the bench prints them."""
    return (f"intra_op={tf.config.threading.get_intra_op_parallelism_threads() or 'default'} "
            f"inter_op={tf.config.threading.get_inter_op_parallelism_threads() or 'default'}")


def loadavg() -> float | None:
    """The 1-minute load average of the whole machine (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def peak_rss_mb() -> float:
    """This process's maximum resident set size so far, in MiB."""
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def peak_gpu_mb() -> float | None:
    """Peak MiB TensorFlow's allocator held on the first visible GPU (None without one)."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20


def make_matmul_timer(dtype_name: str, size: int) -> Callable[[], float]:
    """Returns fn() -> GFLOP/s of one size x size matmul in `dtype_name` (compiled and run
    once here), this run's reference for achieved GFLOP/s."""
    a = tf.cast(tf.random.normal([size, size]), dtype_name)
    mm = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.matmul(x, x)[0, :1], tf.float32)))
    mm(a).numpy()

    def timed() -> float:
        start = time.perf_counter()
        mm(a).numpy()
        return 2 * size ** 3 / (time.perf_counter() - start) / 1e9

    return timed
