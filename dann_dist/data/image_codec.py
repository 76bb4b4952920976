"""PNG/JPEG decoding and PNG encoding through TensorFlow (no Pillow needed).

TensorFlow is imported inside the functions: it takes seconds to import and
most of the package (MNIST loading, cache checks) never needs it.
"""

from __future__ import annotations

import numpy as np

from dann_dist.data.errors import DataError


def decode_image(data: bytes, where: str) -> np.ndarray:
    """PNG/JPEG/GIF/BMP bytes -> uint8 [H, W, C] (C as stored: 1 to 4)."""
    import tensorflow as tf

    try:
        image = tf.io.decode_image(data, expand_animations=False, dtype=tf.uint8)
    except (tf.errors.OpError, ValueError) as e:
        message = getattr(e, "message", str(e)).strip().splitlines()[0]
        raise DataError(f"{where}: cannot decode image ({message})") from e
    return image.numpy()


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, C] -> PNG bytes."""
    import tensorflow as tf

    return tf.io.encode_png(image).numpy()


def resize_bilinear(images: np.ndarray, size: int, batch: int = 8192) -> np.ndarray:
    """uint8 [N, H, W, C] -> uint8 [N, size, size, C], bilinear, rounded to nearest.

    tf.image.resize with half-pixel centres and no antialiasing; done in
    batches so 60,000 colour images need ~100 MB of float32 at a time.
    """
    import tensorflow as tf

    out = np.empty((len(images), size, size, images.shape[-1]), np.uint8)
    for start in range(0, len(images), batch):
        chunk = tf.image.resize(tf.cast(images[start:start + batch], tf.float32), (size, size),
                                method="bilinear", antialias=False)
        rounded = tf.clip_by_value(tf.round(chunk), 0, 255)
        out[start:start + batch] = tf.cast(rounded, tf.uint8).numpy()
    return out
