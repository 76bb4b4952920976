"""When a run stops early: signals (checkpoint and exit 128 + N) and non-finite losses or
weights (exit 3, the last good checkpoint kept)."""

from __future__ import annotations

import contextlib
import signal

import keras
import numpy as np


class NonFiniteLossError(RuntimeError):
    """A NaN/Inf loss or weight (exit 3); the last checkpoint written before it is good."""


class StopRequested(Exception):
    """A signal asked the run to stop (exit 128 + signal)."""

    def __init__(self, signum: int, checkpoint_written: bool = True):
        what = ("checkpoint written" if checkpoint_written else
                "stopped outside training; the checkpoints on disk are unchanged")
        super().__init__(f"stopped by {signal.Signals(signum).name}; {what}")
        self.exit_code = 128 + signum


class Signals:
    """SIGTERM/SIGINT handling for the whole run. Inside `deferred()` (the training loop)
    a signal is recorded, and the loop checkpoints and stops after the current step;
    elsewhere it raises StopRequested at once, so that the run directory's lock is
    released on the way out."""

    def __init__(self):
        self.signum = 0
        self._defer = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        if not self._defer:
            raise StopRequested(signum, checkpoint_written=False)

    @contextlib.contextmanager
    def deferred(self):
        self._defer = True
        try:
            yield
        finally:
            self._defer = False

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def check_metrics(metrics: dict, step: int, kept: str) -> None:
    """Raises NonFiniteLossError naming every metric whose sum is NaN/Inf."""
    bad = {name: s for name, (s, _) in metrics.items() if not np.isfinite(s)}
    if bad:
        sums = ", ".join(f"{name} sum {value}" for name, value in bad.items())
        raise NonFiniteLossError(f"non-finite loss at step {step}: {sums}; {kept}. Lower "
                                 "--learning_rate or check the input.")


def check_weights(models: dict, step: int, kept: str) -> None:
    """Raises NonFiniteLossError if a model weight is NaN/Inf (a diverged update whose
    loss was still finite). Cheap (one pass over 0.2M numbers): run at every progress
    line and before every save and export, so no checkpoint holds a non-finite weight."""
    for model in models.values():
        for variable in model.weights:
            value = keras.ops.convert_to_numpy(variable)
            if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
                raise NonFiniteLossError(
                    f"non-finite weights at step {step} ({model.name}/{variable.path}); "
                    f"{kept}. Lower --learning_rate or check the input.")
