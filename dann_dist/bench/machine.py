"""Facts about the host from the OS: its CPUs, their model, the load, this process's peak
memory, and pinning the process to one core. No TensorFlow here: the pinning has to
happen before TensorFlow starts its thread pools."""

from __future__ import annotations

import os
import platform
import resource
import sys

# Where launchers put the process's rank on its host, in the order they are looked up.
LOCAL_RANK_VARIABLES = ("HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                        "PMI_RANK")


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


def describe() -> dict:
    """CPUs on the host, those this process may use, their model, the Python version."""
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return {"cpus": cores, "cpus_usable": usable, "cpu_model": cpu_model(),
            "python": platform.python_version()}


def peak_rss_mb() -> float:
    """This process's maximum resident set size so far, in MiB."""
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def loadavg() -> float | None:
    """The 1-minute load average of the whole machine (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def local_rank() -> int:
    """This process's rank on its host under a launcher (0 without one)."""
    for var in LOCAL_RANK_VARIABLES:
        if var in os.environ:
            return int(os.environ[var])
    return 0


def pin_to_local_rank() -> None:
    """Pins this process to core <local rank> among those it may use (where the OS can)."""
    if not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[local_rank() % len(cores)]})
