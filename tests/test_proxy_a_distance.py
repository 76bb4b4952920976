"""Proxy A-distance on synthetic features whose separability is known."""

import math

import numpy as np
import pytest

from dann_dist.report.proxy_a_distance import balanced_error, fit_logistic, proxy_a_distance


def gaussians(shift, n=1000, dim=20, seed=0):
    rng = np.random.default_rng(seed)
    source = rng.normal(size=(n, dim))
    target = rng.normal(size=(n, dim))
    target[:, 0] += shift
    return source, target


def test_identical_distributions_give_pad_near_zero():
    result = proxy_a_distance(*gaussians(0.0))
    assert result["pad"] < 0.2
    assert 0.45 < result["error"] <= 0.5
    assert result["train_size"] == result["test_size"] == 1000


def test_well_separated_distributions_give_pad_near_two():
    result = proxy_a_distance(*gaussians(10.0))
    assert result["pad"] > 1.8
    assert result["error"] < 0.05


def test_partial_overlap_matches_the_bayes_error():
    # Unit Gaussians whose means differ by 2 along one axis: the best linear classifier
    # errs with probability Phi(-1) = 0.159, so PAD = 2 (1 - 2 * 0.159) = 1.37.
    bayes = 0.5 * math.erfc(1 / math.sqrt(2))
    result = proxy_a_distance(*gaussians(2.0, n=2000))
    assert abs(result["pad"] - 2 * (1 - 2 * bayes)) < 0.15


def test_error_is_clipped_to_one_half():
    # Tiny identical sets: a test error above 0.5 is chance, not anti-separability.
    pads = [proxy_a_distance(*gaussians(0.0, n=16, dim=30, seed=s), seed=s) for s in range(10)]
    assert all(p["error"] <= 0.5 and 0 <= p["pad"] <= 2 for p in pads)
    assert any(p["raw_error"] > 0.5 for p in pads)


def test_unequal_sizes_use_the_balanced_error():
    rng = np.random.default_rng(3)
    # 900 vs 100 identical examples: always answering "source" would err only 10% of the
    # time; balanced, it is chance.
    result = proxy_a_distance(rng.normal(size=(900, 5)), rng.normal(size=(100, 5)))
    assert result["pad"] < 0.3


def test_logistic_regression_fits_a_known_direction():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 3))
    y = (x @ np.array([2.0, -1.0, 0.0]) + 0.5 > 0).astype(float)
    w = fit_logistic(x, y, l2=1e-3)
    direction = w[:3] / np.linalg.norm(w[:3])
    assert direction @ (np.array([2.0, -1.0, 0.0]) / math.sqrt(5)) > 0.99
    assert balanced_error(w, x, y) < 0.02


def test_rejects_mismatched_or_tiny_inputs():
    with pytest.raises(ValueError):
        proxy_a_distance(np.zeros((50, 3)), np.zeros((50, 4)))
    with pytest.raises(ValueError):
        proxy_a_distance(np.zeros((4, 3)), np.zeros((50, 3)))
