"""Paired, sharded tf.data input for training and batched input for evaluation.

Sharding rule: global step k uses the global batch k of each domain (a stateless
shuffle per epoch, keyed by seed and epoch). Input pipeline i of P, serving R replicas
of per-replica batch b, takes the i-th contiguous block of R*b examples of that global
batch and hands it out as R consecutive batches of b. Hence shards are disjoint, every
replica runs the same number of steps (the streams repeat forever; the trainer stops
all replicas at the same step), the union over replicas is exactly what one device at
the global batch would see, and a resumed run re-enters the stream at its step.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

SOURCE_STREAM, TARGET_STREAM = 0, 1


def channel_mean(*image_sets: np.ndarray) -> np.ndarray:
    """Per-channel mean of [0,1]-scaled images over all sets (grayscale counts as RGB)."""
    total, count = np.zeros(3, np.float64), 0
    for images in image_sets:
        flat = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        total += flat.sum(axis=0)  # broadcasts a single gray channel over RGB
        count += flat.shape[0]
    return (total / count).astype(np.float32)


def unit_rgb(images: tf.Tensor) -> tf.Tensor:
    """uint8 [..., 28, 28, 1 or 3] -> float32 RGB in [0,1]."""
    x = tf.cast(images, tf.float32) / 255.0
    if x.shape[-1] == 1:
        x = tf.tile(x, [1] * (x.shape.rank - 1) + [3])
    return x


def to_model_input(images: tf.Tensor, mean) -> tf.Tensor:
    """uint8 [..., 28, 28, 1 or 3] -> float32 RGB in [0,1] minus the training mean."""
    return unit_rgb(images) - tf.convert_to_tensor(mean, tf.float32)


# Per image: a contrast and an offset per colour channel, and an inversion draw.
AUGMENT_PARAMS = 7
MIN_CONTRAST = 0.3


def augment_params(global_batch: int, seed: int, start_step: int = 0) -> tf.data.Dataset:
    """Infinite dataset of float32 [global_batch, AUGMENT_PARAMS] uniforms, one per step,
    keyed by (seed, step) alone: split like the indices, every backend and resume draws
    the same values for the same example of the same step."""
    def draw(step):
        # A negative second seed word: never equal to a shuffle's (epoch * 2 + stream).
        return tf.random.stateless_uniform([global_batch, AUGMENT_PARAMS],
                                           seed=tf.stack([tf.cast(seed, tf.int64), -1 - step]))
    return tf.data.Dataset.range(start_step, np.iinfo(np.int64).max).map(draw)


def colour_augment(images: tf.Tensor, params: tf.Tensor) -> tf.Tensor:
    """uint8 images -> float32 RGB in [0,1] with, per image, a random contrast in
    [MIN_CONTRAST, 1] and a random offset per channel (the result stays in [0,1]), then an
    inversion with probability 1/2: gray digits become coloured digits on coloured
    backgrounds, light on dark or dark on light, as in MNIST-M."""
    x = unit_rgb(images)
    contrast = MIN_CONTRAST + (1.0 - MIN_CONTRAST) * params[:, None, None, 0:3]
    x = x * contrast + (1.0 - contrast) * params[:, None, None, 3:6]
    return tf.where(params[:, None, None, 6:7] < 0.5, 1.0 - x, x)


def vat_directions(global_batch: int, shape: tuple, seed: int, stream: int,
                   start_step: int = 0) -> tf.data.Dataset:
    """Infinite dataset of float32 [global_batch, *shape] N(0, 1) draws, one per step: the
    random directions of VAT's power iteration (dann_dist/vat.py), keyed by (seed, stream,
    step) alone and split like the indices, so every backend and resume draws the same
    direction for the same example of the same step."""
    # A first seed word no shuffle (seed) or augmentation (seed) uses for seed >= 0.
    key = -2 - 2 * seed - stream

    def draw(step):
        return tf.random.stateless_normal([global_batch, *shape],
                                          seed=tf.stack([tf.constant(key, tf.int64), step]))
    return tf.data.Dataset.range(start_step, np.iinfo(np.int64).max).map(draw)


def index_batches(num_examples: int, global_batch: int, seed: int, stream: int,
                  start_step: int = 0) -> tf.data.Dataset:
    """Infinite dataset of int32 [global_batch] index vectors, one per step, from step
    `start_step` on. Each epoch is a fresh permutation; the tail that does not fill a
    batch is left for the next epoch's shuffle to pick up."""
    steps_per_epoch = num_examples // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"global batch {global_batch} exceeds the {num_examples} training "
                         "examples of a domain: lower --batch_size.")
    first_epoch, offset = divmod(start_step, steps_per_epoch)

    def epoch_batches(epoch):
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(num_examples, dtype=tf.int32),
            seed=tf.stack([tf.cast(seed, tf.int64), epoch * 2 + stream]))
        return tf.data.Dataset.from_tensor_slices(
            tf.reshape(perm[:steps_per_epoch * global_batch], [steps_per_epoch, global_batch]))

    epochs = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
    return epochs.flat_map(epoch_batches).skip(offset)


def replica_indices(indices: tf.data.Dataset, per_replica_batch: int, replicas_per_pipeline: int,
                    pipeline_index: int) -> tf.data.Dataset:
    """Global index batches -> this pipeline's R consecutive per-replica batches (a
    dataset of tuples: each member split alike; a one-tensor dataset stays one tensor)."""
    block = per_replica_batch * replicas_per_pipeline
    start = pipeline_index * block

    def split(*batch):
        # Any tensors whose first dimension is the global batch (indices, augmentation).
        parts = tuple(tf.reshape(t[start:start + block],
                                 [replicas_per_pipeline, per_replica_batch, *t.shape[1:]])
                      for t in batch)
        return tf.data.Dataset.from_tensor_slices(parts[0] if len(parts) == 1 else parts)

    return indices.flat_map(split)


def train_dataset(source_images: np.ndarray, source_labels: np.ndarray, target_images: np.ndarray,
                  *, mean, per_replica_batch: int, seed: int, replicas_per_pipeline: int = 1,
                  pipeline_index: int = 0, num_pipelines: int = 1,
                  start_step: int = 0, source_augment: str = "none",
                  vat_shape: tuple | None = None) -> tf.data.Dataset:
    """Infinite paired batches {source_images, source_labels, target_images} for one
    input pipeline (a Horovod rank, or a tf.distribute worker serving R replicas); with
    `vat_shape` (the model's input shape) also {source,target}_vat_direction."""
    if not 0 <= pipeline_index < num_pipelines:
        raise ValueError(f"pipeline_index {pipeline_index} not in [0, {num_pipelines})")
    global_batch = per_replica_batch * replicas_per_pipeline * num_pipelines

    augment = source_augment == "colour"

    def stream(num_examples, which):
        parts = [index_batches(num_examples, global_batch, seed, which, start_step)]
        if augment and which == SOURCE_STREAM:
            parts.append(augment_params(global_batch, seed, start_step))
        if vat_shape:
            parts.append(vat_directions(global_batch, tuple(vat_shape), seed, which, start_step))
        zipped = parts[0] if len(parts) == 1 else tf.data.Dataset.zip(tuple(parts))
        return replica_indices(zipped, per_replica_batch, replicas_per_pipeline, pipeline_index)

    source_x = tf.constant(source_images)
    source_y = tf.constant(source_labels.astype(np.int32))
    target_x = tf.constant(target_images)
    mean = tf.constant(mean, tf.float32)

    def gather(source, target):
        source = source if isinstance(source, tuple) else (source,)
        target = target if isinstance(target, tuple) else (target,)
        source_idx = source[0]
        images = tf.gather(source_x, source_idx)
        source_in = (colour_augment(images, source[1]) - mean if augment
                     else to_model_input(images, mean))
        batch = {
            "source_images": source_in,
            "source_labels": tf.gather(source_y, source_idx),
            "target_images": to_model_input(tf.gather(target_x, target[0]), mean),
        }
        if vat_shape:
            batch.update(source_vat_direction=source[-1], target_vat_direction=target[-1])
        return batch

    paired = tf.data.Dataset.zip((stream(len(source_images), SOURCE_STREAM),
                                  stream(len(target_images), TARGET_STREAM)))
    options = tf.data.Options()
    options.deterministic = True
    # Sharding is done by index above; tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return (paired.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE).with_options(options))


def eval_dataset(images: np.ndarray, labels: np.ndarray, *, batch_size: int) -> tf.data.Dataset:
    """Finite, ordered batches (uint8 images, int32 labels) of a whole test set. The
    evaluator preprocesses inside its graph (to_model_input): 15-20% faster than a map
    here, which competes with the model for the same cores."""
    return (tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE))
