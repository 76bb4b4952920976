"""What the label-free model selection reads: a held-out source validation set and the
prediction entropy on unlabelled target images, logged at every evaluation."""

import json

import numpy as np

from dann_dist import rundir, trainer
from synthetic import tiny_config


def test_eval_history_has_label_free_criteria_and_holdout_is_not_trained_on(tmp_path, domains):
    config = tiny_config(tmp_path, train_steps=20, eval_every=10, source_holdout=32, selection_images=64)
    trainer.train_and_evaluate(config, domains=domains)
    lines = [json.loads(l) for l in open(tmp_path / rundir.EVAL_HISTORY)]
    assert [l["step"] for l in lines] == [10, 20]
    for line in lines:
        assert 0 <= line["source_val_accuracy"] <= 1
        assert 0 <= line["target_entropy"] <= np.log(10) + 1e-6
        assert {"target_accuracy", "lambda", "learning_rate", "progress"} <= set(line)


def test_holdout_split_keeps_the_last_images_apart():
    x, y = np.arange(10), np.arange(10) % 3
    train_x, train_y, (val_x, val_y) = trainer._split_holdout(x, y, 3)
    assert list(train_x) == list(range(7)) and list(val_x) == [7, 8, 9]
    assert list(val_y) == [1, 2, 0]
    assert trainer._split_holdout(x, y, 0)[2] is None
