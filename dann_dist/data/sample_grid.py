"""A PNG grid of sample images: per domain, rows of one training example per class."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dann_dist.data.domain import Domain
from dann_dist.data.image_codec import encode_png
from dann_dist.data.storage import atomic_write_bytes

SCALE = 2  # 28 px digits are hard to see at 1:1
GAP = 2


def grid(domains: Sequence[Domain], rows_per_domain: int = 3) -> np.ndarray:
    """uint8 [H, W, 3]: for each domain, rows_per_domain rows; column c shows the
    first, second, ... training images of class c (blank if the class has fewer).
    Tiles take the largest image of the domains; smaller ones sit in their tile's corner."""
    tile_h = max(d.image_shape[0] for d in domains) * SCALE
    tile_w = max(d.image_shape[1] for d in domains) * SCALE
    columns = max(d.num_classes for d in domains)
    rows = len(domains) * rows_per_domain
    # An extra gap between domains keeps them apart visually.
    height = rows * (tile_h + GAP) + GAP + (len(domains) - 1) * 2 * GAP
    width = columns * (tile_w + GAP) + GAP
    canvas = np.full((height, width, 3), 255, np.uint8)
    top = GAP
    for domain in domains:
        for row in range(rows_per_domain):
            for label in range(domain.num_classes):
                indices = np.flatnonzero(domain.y_train == label)
                if row < len(indices):
                    image = domain.x_train[indices[row]]
                    image = np.repeat(np.repeat(image, SCALE, axis=0), SCALE, axis=1)
                    left = GAP + label * (tile_w + GAP)
                    # A 1-channel image broadcasts to RGB.
                    canvas[top:top + image.shape[0], left:left + image.shape[1]] = image
            top += tile_h + GAP
        top += 2 * GAP
    return canvas


def write_grid(path: Path, domains: Sequence[Domain]) -> None:
    atomic_write_bytes(Path(path), encode_png(grid(domains)))
