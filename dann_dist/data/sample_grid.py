"""A PNG grid of sample images: per domain, rows of one training example per class."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dann_dist.data.domain import NUM_CLASSES, Domain
from dann_dist.data.image_codec import encode_png
from dann_dist.data.storage import atomic_write_bytes

SCALE = 2  # 28 px digits are hard to see at 1:1
GAP = 2


def grid(domains: Sequence[Domain], rows_per_domain: int = 3) -> np.ndarray:
    """uint8 [H, W, 3]: for each domain, rows_per_domain rows; column c shows the
    first, second, ... training images of class c (blank if the class has fewer)."""
    tile = 28 * SCALE
    rows = len(domains) * rows_per_domain
    # An extra gap between domains keeps them apart visually.
    height = rows * (tile + GAP) + GAP + (len(domains) - 1) * 2 * GAP
    width = NUM_CLASSES * (tile + GAP) + GAP
    canvas = np.full((height, width, 3), 255, np.uint8)
    top = GAP
    for domain in domains:
        for row in range(rows_per_domain):
            for label in range(NUM_CLASSES):
                indices = np.flatnonzero(domain.y_train == label)
                if row < len(indices):
                    image = domain.x_train[indices[row]]
                    image = np.repeat(np.repeat(image, SCALE, axis=0), SCALE, axis=1)
                    left = GAP + label * (tile + GAP)
                    canvas[top:top + tile, left:left + tile] = image  # 1 channel broadcasts to RGB
            top += tile + GAP
        top += 2 * GAP
    return canvas


def write_grid(path: Path, domains: Sequence[Domain]) -> None:
    atomic_write_bytes(Path(path), encode_png(grid(domains)))
