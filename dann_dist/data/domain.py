"""The Domain record and the checks every source's arrays go through."""

from __future__ import annotations

import dataclasses

import numpy as np

from dann_dist.data.errors import DataError
from dann_dist.data.storage import arrays_sha256

SPLITS = ("x_train", "y_train", "x_test", "y_test")


# eq=False: the fields are numpy arrays, for which a generated __eq__ would
# raise ("truth value of an array is ambiguous") instead of answering.
@dataclasses.dataclass(frozen=True, eq=False)
class Domain:
    """One domain's images and labels, with a human description of its origin."""

    name: str  # "mnist" / "mnistm"
    description: str
    x_train: np.ndarray  # uint8 [N, H, W, C]; 28x28 for the digit domains, C = 1 or 3
    y_train: np.ndarray  # int64 [N], 0..num_classes-1
    x_test: np.ndarray
    y_test: np.ndarray
    # Defaulted to the digits' 10 because Domain(name, description, arrays...) predates
    # the field; loaders of other pairs pass their own.
    num_classes: int = 10

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one stored image (C as stored: 1 for grayscale)."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in SPLITS}

    def sha256(self) -> str:
        """Checksum of the four arrays (the one stored in the cache)."""
        return arrays_sha256(self.arrays())


def check_arrays(arrays: dict[str, np.ndarray], image_shape: tuple[int, int, int],
                 num_classes: int, source: str) -> dict[str, np.ndarray]:
    """Validates images ([N, *image_shape]) and labels from `source`; returns them as
    uint8 / int64.

    Raises DataError naming `source` for a missing array, a wrong dtype or
    shape, labels outside 0..num_classes-1, or an image/label count mismatch.
    """
    image_shape = tuple(image_shape)
    checked = {}
    for split in ("train", "test"):
        x_name, y_name = f"x_{split}", f"y_{split}"
        for name in (x_name, y_name):
            if name not in arrays:
                raise DataError(f"{source}: no {name} array")
        x, y = np.asarray(arrays[x_name]), np.asarray(arrays[y_name])
        if x.dtype != np.uint8:
            raise DataError(f"{source}: {split} images have dtype {x.dtype}, expected uint8")
        if x.ndim != 4 or x.shape[1:] != image_shape:
            raise DataError(
                f"{source}: {split} images have shape {list(x.shape)}, "
                f"expected [N, {', '.join(map(str, image_shape))}]")
        if len(x) == 0:
            raise DataError(f"{source}: {split} set is empty")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"{source}: {split} labels have shape {list(y.shape)} and dtype {y.dtype}, "
                "expected integers of shape [N]")
        if len(y) != len(x):
            raise DataError(f"{source}: {len(x)} {split} images but {len(y)} {split} labels")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= num_classes:
            bad = int(np.flatnonzero((y < 0) | (y >= num_classes))[0])
            raise DataError(
                f"{source}: {split} label #{bad} is {int(y[bad])}, labels must be "
                f"0..{num_classes - 1} (range found: {low}..{high})")
        checked[x_name] = x
        checked[y_name] = y.astype(np.int64, copy=False)
    return checked


def make_domain(name: str, description: str, arrays: dict[str, np.ndarray],
                image_shape: tuple[int, int, int], num_classes: int, source: str) -> Domain:
    checked = check_arrays(arrays, image_shape, num_classes, source)
    return Domain(name=name, description=description, num_classes=num_classes, **checked)
