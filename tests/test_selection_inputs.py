"""What the label-free model selection reads: a held-out source validation set and the
prediction entropy on unlabelled target images, logged at every evaluation. And which
images the labelled stream is made of: never the holdout; the target's under target_only."""

import json

import numpy as np

from dann_dist import inputs as inputs_lib
from dann_dist import rundir, trainer
from dann_dist.data.domain import Domain
from dann_dist.data.pipeline import train_dataset

from synthetic import synthetic_domains, tiny_config

BATCH = 16


def _labelled_stream(inputs, steps: int, seed: int = 0):
    """(raw uint8 images [steps*BATCH, 28, 28, 3], labels) of the labelled stream the train
    loop builds from `inputs`, recovered from the model inputs: +mean, x255, rounded. The
    error of the float32 round trip is far below the 0.5 that rounding forgives."""
    dataset = train_dataset(inputs.train_x, inputs.train_y, inputs.target_x, mean=inputs.mean,
                            per_replica_batch=BATCH, seed=seed)
    images, labels = [], []
    for batch in dataset.take(steps):
        raw = np.rint((batch["source_images"].numpy() + inputs.mean) * 255)
        images.append(raw.astype(np.uint8))
        labels.append(batch["source_labels"].numpy())
    return np.concatenate(images), np.concatenate(labels)


def _index_of(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row of `reference` (uint8, 1 or 3 channels) equal to each of `images` (3 channels),
    -1 where none is."""
    if reference.shape[-1] == 1:
        reference = np.repeat(reference, 3, axis=-1)
    rows = {ref.tobytes(): i for i, ref in enumerate(reference)}
    assert len(rows) == len(reference), "test data must not repeat an image"
    return np.array([rows.get(image.tobytes(), -1) for image in images])


def test_eval_history_has_label_free_criteria(tmp_path, domains):
    config = tiny_config(tmp_path, train_steps=20, eval_every=10, source_holdout=32,
                         selection_images=64)
    trainer.train_and_evaluate(config, domains=domains)
    lines = [json.loads(text) for text in open(tmp_path / rundir.EVAL_HISTORY)]
    assert [line["step"] for line in lines] == [10, 20]
    for line in lines:
        assert 0 <= line["source_val_accuracy"] <= 1
        assert 0 <= line["target_entropy"] <= np.log(10) + 1e-6
        assert {"target_accuracy", "lambda", "learning_rate", "progress"} <= set(line)


def test_holdout_is_not_trained_on(tmp_path, domains):
    source, target = domains
    holdout = 32
    inputs = inputs_lib.prepare(tiny_config(tmp_path, source_holdout=holdout), source, target)
    n_train = len(source.x_train) - holdout
    np.testing.assert_array_equal(inputs.source_val[0], source.x_train[n_train:])
    # Three epochs of the labelled stream: every training image comes round, the holdout never.
    images, labels = _labelled_stream(inputs, steps=3 * n_train // BATCH)
    seen = _index_of(images, source.x_train)
    assert np.all(seen >= 0), "the labelled stream holds an image that is not a source image"
    trained_holdout = sorted(set(seen.tolist()) & set(range(n_train, len(source.x_train))))
    assert not trained_holdout, f"holdout images {trained_holdout} were trained on"
    assert set(seen.tolist()) == set(range(n_train))
    np.testing.assert_array_equal(labels, source.y_train[seen])


def test_holdout_split_keeps_the_last_images_apart():
    x, y = np.arange(10), np.arange(10) % 3
    train_x, train_y, (val_x, val_y) = inputs_lib.split_holdout(x, y, 3)
    assert list(train_x) == list(range(7)) and list(val_x) == [7, 8, 9]
    assert list(val_y) == [1, 2, 0]
    assert inputs_lib.split_holdout(x, y, 0)[2] is None


def test_target_only_streams_labelled_target_images(tmp_path, domains):
    source, target = domains
    inputs = inputs_lib.prepare(tiny_config(tmp_path, adaptation="target_only"), source, target)
    np.testing.assert_array_equal(inputs.train_x, target.x_train)
    np.testing.assert_array_equal(inputs.train_y, target.y_train)
    images, labels = _labelled_stream(inputs, steps=4)
    seen = _index_of(images, target.x_train)
    assert np.all(seen >= 0), "target_only streamed a labelled image that is not a target image"
    np.testing.assert_array_equal(labels, target.y_train[seen])
    # Source accuracy and the holdout are still measured on the source.
    np.testing.assert_array_equal(inputs.test_sets["source"][0], source.x_test)
    np.testing.assert_array_equal(inputs.source_val[0], source.x_train[-32:])


def test_target_only_learns_the_target_labels(tmp_path):
    """A target domain of the source's kind of images (other draws), labelled one class
    further on than they show: trained on the labelled target, the model learns the shift,
    so it scores on the target test set and misses on the source one. Had it trained on the
    source (source_only, measured: 0.69 source, 0.0 target), it would be the other way round."""
    source, _ = synthetic_domains(seed=0)
    other, _ = synthetic_domains(seed=1)
    shifted = Domain("mnistm", "shifted labels", np.repeat(other.x_train, 3, axis=-1),
                     (other.y_train + 1) % 10, np.repeat(other.x_test, 3, axis=-1),
                     (other.y_test + 1) % 10)
    metrics = trainer.train_and_evaluate(
        tiny_config(tmp_path, adaptation="target_only", train_steps=30, log_every=30,
                    checkpoint_every=30, export=False), domains=(source, shifted))
    # Measured: 0.85 target, 0.06 source.
    assert metrics["target_accuracy"] > 0.5 and metrics["source_accuracy"] < 0.2, metrics
