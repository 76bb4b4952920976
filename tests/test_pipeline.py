"""Paired input: sharding, determinism, resume position, preprocessing."""

import numpy as np
import pytest
import tensorflow as tf

from dann_dist.data.pipeline import channel_mean, to_model_input, train_dataset


def _arrays(n_source, n_target):
    # Image k carries k in its first pixels, so batches can be traced back to indices.
    source = np.zeros([n_source, 28, 28, 1], np.uint8)
    source[:, 0, 0, 0] = np.arange(n_source) % 256
    source[:, 0, 1, 0] = np.arange(n_source) // 256
    target = np.zeros([n_target, 28, 28, 3], np.uint8)
    target[:, 0, 0, 0] = np.arange(n_target) % 256
    target[:, 0, 1, 0] = np.arange(n_target) // 256
    return source, np.arange(n_source) % 10, target


def _indices(images):
    return (np.rint(images[:, 0, 0, 0] * 255) + 256 * np.rint(images[:, 0, 1, 0] * 255)).astype(int)


def _take(n_source, n_target, steps, **kwargs):
    source, labels, target = _arrays(n_source, n_target)
    ds = train_dataset(source, labels, target, mean=np.zeros(3, np.float32), seed=7, **kwargs)
    out = []
    for batch in ds.take(steps):
        out.append((_indices(batch["source_images"].numpy()), batch["source_labels"].numpy(),
                    _indices(batch["target_images"].numpy())))
    return out


@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
def test_horovod_style_shards_are_disjoint_equal_and_union_is_the_global_batch(replicas):
    per_replica, steps = 6, 9  # 9 steps cross several epochs of the smaller (uneven) domain
    single = _take(301, 97, steps, per_replica_batch=per_replica * replicas)
    shards = [_take(301, 97, steps, per_replica_batch=per_replica, num_pipelines=replicas,
                    pipeline_index=r) for r in range(replicas)]
    assert all(len(shard) == steps for shard in shards)
    for k in range(steps):
        for domain in (0, 2):
            parts = [shard[k][domain] for shard in shards]
            assert all(len(p) == per_replica for p in parts)
            union = np.concatenate(parts)
            assert len(set(union)) == len(union), "replica shards overlap"
            np.testing.assert_array_equal(union, single[k][domain])
        labels = np.concatenate([shard[k][1] for shard in shards])
        np.testing.assert_array_equal(labels % 10, single[k][1])
        np.testing.assert_array_equal(single[k][0] % 10, single[k][1])  # labels follow images


def test_mirrored_style_pipeline_hands_out_consecutive_replica_batches():
    single = _take(200, 150, 4, per_replica_batch=8)
    mirrored = _take(200, 150, 8, per_replica_batch=4, replicas_per_pipeline=2)
    for k in range(4):
        both = np.concatenate([mirrored[2 * k][0], mirrored[2 * k + 1][0]])
        np.testing.assert_array_equal(both, single[k][0])


def test_each_epoch_is_a_permutation_and_shorter_domain_cycles():
    batches = _take(40, 20, 10, per_replica_batch=4)
    target_epoch = np.concatenate([b[2] for b in batches[:5]])
    assert sorted(target_epoch) == list(range(20))
    source_epoch = np.concatenate([b[0] for b in batches[:10]])
    assert sorted(source_epoch) == list(range(40))
    assert not np.array_equal(np.concatenate([b[2] for b in batches[5:10]]), target_epoch)


def test_same_seed_same_stream_and_resume_reenters_at_its_step():
    full = _take(50, 30, 12, per_replica_batch=8)
    again = _take(50, 30, 12, per_replica_batch=8)
    resumed = _take(50, 30, 5, per_replica_batch=8, start_step=7)
    for a, b in zip(full, again):
        np.testing.assert_array_equal(a[0], b[0])
    for a, b in zip(full[7:], resumed):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[2], b[2])


def test_preprocessing_scales_subtracts_mean_and_makes_rgb():
    gray = np.full([2, 28, 28, 1], 255, np.uint8)
    colour = np.zeros([2, 28, 28, 3], np.uint8)
    mean = channel_mean(gray, colour)
    np.testing.assert_allclose(mean, [0.5, 0.5, 0.5])
    x = to_model_input(tf.constant(gray), mean).numpy()
    assert x.shape == (2, 28, 28, 3)
    np.testing.assert_allclose(x, 0.5)


def test_batch_larger_than_a_domain_is_a_clear_error():
    source, labels, target = _arrays(10, 10)
    with pytest.raises(ValueError, match="lower --batch_size"):
        train_dataset(source, labels, target, mean=np.zeros(3), per_replica_batch=16, seed=0)


def _augmented(steps, **kwargs):
    source, labels, target = _arrays(64, 32)
    source[:, 10:18, 10:18, 0] = 200                   # a gray "digit" on black
    ds = train_dataset(source, labels, target, mean=np.zeros(3, np.float32), seed=7,
                       source_augment="colour", **kwargs)
    return [batch["source_images"].numpy() for batch in ds.take(steps)]


def test_colour_augmentation_colours_and_inverts_gray_digits_within_range():
    images = np.concatenate(_augmented(8, per_replica_batch=16))
    assert images.min() >= 0.0 and images.max() <= 1.0
    background, digit = images[:, 25, 25], images[:, 14, 14]
    # Coloured: the channels of one pixel differ (the gray input had them equal).
    assert np.mean(np.ptp(background, axis=1) > 0.05) > 0.8
    # Inverted about half the time: the digit is then darker than the background.
    inverted = np.mean(digit.mean(axis=1) < background.mean(axis=1))
    assert 0.3 < inverted < 0.7
    # Contrast at least MIN_CONTRAST of the input's 200/255 gap, in every channel.
    assert np.all(np.abs(digit - background) >= 0.3 * 200 / 255 - 1e-5)


def test_colour_augmentation_is_the_same_on_every_backend_and_after_a_resume():
    single = _augmented(4, per_replica_batch=16)
    shards = [_augmented(4, per_replica_batch=8, num_pipelines=2, pipeline_index=r)
              for r in range(2)]
    mirrored = _augmented(8, per_replica_batch=8, replicas_per_pipeline=2)
    resumed = _augmented(2, per_replica_batch=16, start_step=2)
    for k in range(4):
        np.testing.assert_array_equal(np.concatenate([s[k] for s in shards]), single[k])
        np.testing.assert_array_equal(np.concatenate(mirrored[2 * k:2 * k + 2]), single[k])
    np.testing.assert_array_equal(resumed[0], single[2])
    assert not np.array_equal(single[0], single[1])


def test_without_augmentation_source_images_are_the_plain_preprocessing():
    source, labels, target = _arrays(64, 32)
    ds = train_dataset(source, labels, target, mean=np.zeros(3, np.float32), seed=7,
                       per_replica_batch=16)
    batch = next(iter(ds))
    expected = to_model_input(tf.constant(source), np.zeros(3)).numpy()
    np.testing.assert_array_equal(batch["source_images"].numpy(),
                                  expected[_indices(batch["source_images"].numpy())])
