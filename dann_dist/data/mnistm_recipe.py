"""The MNIST-M recipe: MNIST digits blended into random crops of colour photos.

For each digit: binarise it (pixel > 0 -> 255), pick a photo uniformly at random,
pick a 28x28 crop position uniformly at random (every position that fits), and
output |crop - digit| per pixel and channel, i.e. the crop with its colours
inverted under the digit's strokes. This is the recipe of the common MNIST-M
generator (Ganin & Lempitsky's construction); the draws come from numpy's
Generator(PCG64(seed)), all photo picks first, then rows, then columns, for the
train set and then the test set, so it is deterministic for a seed (and numpy
version) but not byte-identical to the common generator's RandomState stream.

Vectorised: the crops for all digits sharing a photo are gathered with one
fancy-indexing operation, so 70,000 digits take about a second.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SIZE = 28
RECIPE = ("binarise digit (>0 -> 255); uniform random photo; uniform random 28x28 crop; "
          "out = |crop - digit|; numpy Generator(PCG64(seed)): photos, rows, cols; train then test")


def blend(digits: np.ndarray, photos: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """uint8 digits [N, 28, 28, 1] + uint8 photos [H, W, 3] -> uint8 [N, 28, 28, 3]."""
    n = len(digits)
    heights = np.array([p.shape[0] for p in photos])
    widths = np.array([p.shape[1] for p in photos])
    which = rng.integers(len(photos), size=n)
    # integers' upper bound is exclusive: +1 so the last row/column fits too.
    top = rng.integers(0, heights[which] - SIZE + 1)
    left = rng.integers(0, widths[which] - SIZE + 1)

    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    offsets = np.arange(SIZE)
    for index, photo in enumerate(photos):
        chosen = np.flatnonzero(which == index)
        if chosen.size:
            rows = top[chosen, None, None] + offsets[None, :, None]
            cols = left[chosen, None, None] + offsets[None, None, :]
            out[chosen] = photo[rows, cols]
    # |crop - 255| = 255 - crop under the strokes; |crop - 0| = crop elsewhere.
    strokes = digits > 0
    np.subtract(np.uint8(255), out, out=out, where=strokes)
    return out


def generate(x_train: np.ndarray, x_test: np.ndarray, photos: Sequence[np.ndarray],
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-M-style train and test images for MNIST's train and test digits."""
    rng = np.random.default_rng(seed)
    return blend(x_train, photos, rng), blend(x_test, photos, rng)
