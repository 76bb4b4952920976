"""The Domain record and the checks every source's arrays go through."""

from __future__ import annotations

import dataclasses

import numpy as np

from dann_dist.data.errors import DataError
from dann_dist.data.storage import arrays_sha256

SPLITS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SIZE = 28
NUM_CLASSES = 10


# eq=False: the fields are numpy arrays, for which a generated __eq__ would
# raise ("truth value of an array is ambiguous") instead of answering.
@dataclasses.dataclass(frozen=True, eq=False)
class Domain:
    """One domain's images and labels, with a human description of its origin."""

    name: str  # "mnist" / "mnistm"
    description: str
    x_train: np.ndarray  # uint8 [N, 28, 28, C]; C = 1 for MNIST, 3 for MNIST-M
    y_train: np.ndarray  # int64 [N], 0..9
    x_test: np.ndarray
    y_test: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in SPLITS}

    def sha256(self) -> str:
        """Checksum of the four arrays (the one stored in the cache)."""
        return arrays_sha256(self.arrays())


def check_arrays(arrays: dict[str, np.ndarray], channels: int,
                 source: str) -> dict[str, np.ndarray]:
    """Validates images and labels from `source`; returns them as uint8 / int64.

    Raises DataError naming `source` for a missing array, a wrong dtype or
    shape, labels outside 0..9, or an image/label count mismatch.
    """
    checked = {}
    for split in ("train", "test"):
        x_name, y_name = f"x_{split}", f"y_{split}"
        for name in (x_name, y_name):
            if name not in arrays:
                raise DataError(f"{source}: no {name} array")
        x, y = np.asarray(arrays[x_name]), np.asarray(arrays[y_name])
        if x.dtype != np.uint8:
            raise DataError(f"{source}: {split} images have dtype {x.dtype}, expected uint8")
        expected = (IMAGE_SIZE, IMAGE_SIZE, channels)
        if x.ndim != 4 or x.shape[1:] != expected:
            raise DataError(
                f"{source}: {split} images have shape {list(x.shape)}, "
                f"expected [N, 28, 28, {channels}]")
        if len(x) == 0:
            raise DataError(f"{source}: {split} set is empty")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"{source}: {split} labels have shape {list(y.shape)} and dtype {y.dtype}, "
                "expected integers of shape [N]")
        if len(y) != len(x):
            raise DataError(f"{source}: {len(x)} {split} images but {len(y)} {split} labels")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= NUM_CLASSES:
            bad = int(np.flatnonzero((y < 0) | (y >= NUM_CLASSES))[0])
            raise DataError(
                f"{source}: {split} label #{bad} is {int(y[bad])}, labels must be 0..9 "
                f"(range found: {low}..{high})")
        checked[x_name] = x
        checked[y_name] = y.astype(np.int64, copy=False)
    return checked


def make_domain(name: str, description: str, arrays: dict[str, np.ndarray], channels: int,
                source: str) -> Domain:
    checked = check_arrays(arrays, channels, source)
    return Domain(name=name, description=description, **checked)
