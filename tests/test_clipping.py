"""--clip_norm: the norm of the global gradient is clipped, identically on one device,
under MirroredStrategy (where gradients are still per replica when clipped) and Horovod."""

import sys

import numpy as np
import pytest
import tensorflow as tf

from dann_dist import step as step_lib

from distributed_helpers import horovodrun, max_weight_difference, run, single_device, synthetic

# A clip well below the synthetic runs' gradient norms (about 1 to 3), so every step clips.
CLIP = ("--clip_norm=0.05",)


def test_clipping_scales_the_gradient_to_the_clip_norm_and_keeps_its_direction():
    grads = [tf.constant([3.0, 0.0]), tf.constant([[0.0], [4.0]])]  # global norm 5
    clipped = step_lib.clip_by_global_norm(grads, 1.0)
    assert float(tf.linalg.global_norm(clipped)) == pytest.approx(1.0)
    np.testing.assert_allclose(clipped[0].numpy(), [0.6, 0.0], rtol=1e-6)
    unchanged = step_lib.clip_by_global_norm(grads, 10.0)
    for a, b in zip(unchanged, grads):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_mirrored_clips_the_norm_of_the_summed_gradient():
    strategy = tf.distribute.MirroredStrategy(["CPU:0"])  # one replica: the sum is the gradient
    per_replica = [tf.constant([3.0, 4.0])]
    out = strategy.run(lambda g: step_lib.clip_by_global_norm(g, 1.0), args=(per_replica,))
    np.testing.assert_allclose(strategy.experimental_local_results(out[0])[0].numpy(),
                               [0.6, 0.8], rtol=1e-6)


@pytest.fixture(scope="module")
def clipped_single(tmp_path_factory, domains):
    # One device, in this process (the same data and flags as tests/run_synthetic.py's).
    model_dir = tmp_path_factory.mktemp("clipped_single")
    single_device(model_dir, domains, *CLIP)
    return model_dir


def test_clipping_changes_the_update(tmp_path, clipped_single, domains):
    single_device(tmp_path, domains)
    assert max_weight_difference(clipped_single, tmp_path) > 1e-3


def test_mirrored_with_clipping_equals_one_device(tmp_path, clipped_single):
    # Had each replica clipped its own half of the gradient, every update would differ.
    run([sys.executable] + synthetic(tmp_path, "--strategy=mirrored", "--logical_cpus=2", *CLIP))
    assert max_weight_difference(clipped_single, tmp_path) < 1e-6


def test_horovod_with_clipping_equals_one_device(tmp_path, clipped_single):
    run(horovodrun(2, synthetic(tmp_path, "--strategy=horovod", *CLIP)), timeout=240)
    assert max_weight_difference(clipped_single, tmp_path) < 1e-6
