"""Generator version 2 (--mnistm_version=2): scales, flips, colour match; version 1 untouched."""

import numpy as np
import pytest

from dann_dist.data import load_mnistm, mnistm
from dann_dist.data import mnistm_recipe_v2 as v2
from dann_dist.data.domain import Domain
from dann_dist.data.errors import DataError
from dann_dist.data.summary import channel_mean_std

from data_fixtures import injected_source, smooth_photo, tiny_mnist


def mnist_like(n_train, n_test, seed=0):
    """Digits with MNIST's share of stroke pixels (~19%) in the middle of the image."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = np.zeros((n, 28, 28, 1), np.uint8)
        strokes = rng.random((n, 20, 20, 1)) < 0.37
        x[:, 4:24, 4:24][strokes] = rng.integers(1, 256, int(strokes.sum()), dtype=np.uint8)
        arrays[f"x_{split}"] = x
        arrays[f"y_{split}"] = np.arange(n, dtype=np.int64) % 10
    return Domain(name="mnist", description="MNIST-like test digits", **arrays)


@pytest.fixture(scope="module")
def varied_photos():
    """Photos of different sizes, brightness and contrast, as the wheel photos are."""
    photos = []
    for index, (height, width) in enumerate([(300, 451), (512, 512), (140, 200), (620, 400)]):
        photo = smooth_photo(height, width, seed=10 + index).astype(np.float64)
        photo = np.clip(photo * (0.6 + 0.3 * index) + 40 * (index - 1.5), 0, 255)
        photos.append(photo.astype(np.uint8))
    return photos


def test_crop_moments_equal_the_average_over_every_crop_position():
    view = np.random.default_rng(0).integers(0, 256, (33, 31, 3), dtype=np.uint8)
    crops = np.stack([view[t:t + 28, c:c + 28] for t in range(6) for c in range(4)]).astype(float)
    mean, square = v2.crop_moments(view)
    np.testing.assert_allclose(mean, crops.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(square, np.square(crops).mean(axis=(0, 1, 2)), rtol=1e-12)


def test_background_target_inverts_the_blend_moments():
    fraction = 0.19
    crop_mean, crop_std = v2.background_target(fraction)
    # Forward: out = crop outside strokes, 255 - crop under them, strokes independent of the crop.
    rng = np.random.default_rng(0)
    crops = rng.normal(crop_mean, crop_std, (400_000, 3))
    strokes = rng.random((400_000, 1)) < fraction
    out = np.where(strokes, 255 - crops, crops)
    np.testing.assert_allclose(out.mean(axis=0), v2.PUBLISHED_MEAN, atol=0.3)
    np.testing.assert_allclose(out.std(axis=0), v2.PUBLISHED_STD, atol=0.3)
    with pytest.raises(ValueError, match="too small"):
        v2.background_target(0.19, std=(5, 5, 5))


def test_downscale_is_the_rounded_block_mean():
    photo = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    small = v2.downscale(photo, 2)
    expected = np.floor(photo.reshape(3, 2, 4, 2, 3).astype(float).mean(axis=(1, 3)) + 0.5)
    np.testing.assert_array_equal(small, expected)
    assert [view.shape[:2] for view in v2.photo_views(np.zeros((300, 600, 3), np.uint8))] == \
        [(300, 600), (150, 300)]


def test_crops_are_whole_windows_and_half_of_them_mirrored():
    # Red = row, green = column of the view pixel: each background pixel says where it came from.
    view = np.zeros((40, 45, 3), np.uint8)
    view[..., 0] = np.arange(40)[:, None]
    view[..., 1] = np.arange(45)[None, :]
    out = v2.blend(np.zeros((2000, 28, 28, 1), np.uint8), [[view]], np.random.default_rng(0))
    columns = out[..., 1].astype(int)
    steps = np.diff(columns, axis=2)
    mirrored = np.all(steps == -1, axis=(1, 2))
    assert np.all(mirrored | np.all(steps == 1, axis=(1, 2)))  # whole windows, one way or the other
    assert 0.45 < mirrored.mean() < 0.55
    np.testing.assert_array_equal(np.diff(out[..., 0].astype(int), axis=1), 1)  # never upside down


def test_same_seed_same_bytes_and_not_version_1(varied_photos, tmp_path):
    digits = tiny_mnist()
    def load(folder, **kwargs):
        return load_mnistm(str(tmp_path / folder), digits,
                           photo_source=injected_source(varied_photos), **kwargs)

    first, again = load("a", version=2), load("b", version=2)
    other_seed, version_1 = load("b", seed=7, version=2), load("a", version=1)
    assert first.sha256() == again.sha256()
    assert len({first.sha256(), other_seed.sha256(), version_1.sha256()}) == 3
    assert "generator v2" in first.description and "NOT the published MNIST-M" in first.description
    assert "generator v2" not in version_1.description
    np.testing.assert_array_equal(first.y_train, digits.y_train)


def test_pixel_statistics_match_the_published_mnistm(varied_photos):
    digits = mnist_like(6000, 10)
    x_train, _ = v2.generate(digits.x_train, digits.x_test, varied_photos, seed=0)
    mean, std = channel_mean_std(x_train)
    # Exact in expectation; 6,000 crops of 4 photos leave sampling noise of about 0.3.
    np.testing.assert_allclose(mean, v2.PUBLISHED_MEAN, atol=1.0)
    np.testing.assert_allclose(std, v2.PUBLISHED_STD, atol=1.0)
    v1_mean, v1_std = channel_mean_std(
        mnistm.GENERATORS[1].recipe.generate(digits.x_train, digits.x_test, varied_photos, 0)[0])
    assert np.abs(v1_std - v2.PUBLISHED_STD).max() > 10  # the test photos start far off


def test_versions_have_their_own_caches_and_keys(varied_photos, tmp_path):
    data_dir = tmp_path / "data"
    calls = []
    source = injected_source(varied_photos, calls)
    first_v1 = load_mnistm(str(data_dir), tiny_mnist(), version=1, photo_source=source)
    first_v2 = load_mnistm(str(data_dir), tiny_mnist(), version=2, photo_source=source)
    assert sorted(p.name for p in data_dir.iterdir()) == ["mnistm.npz", "mnistm_v2.npz"]
    _, meta = mnistm.read_cache(data_dir / "mnistm_v2.npz")
    assert meta["key"]["version"] == 2 and meta["version"] == 2
    _, meta_v1 = mnistm.read_cache(data_dir / "mnistm.npz")
    assert "version" not in meta_v1["key"]  # as before the flag, so existing caches stay valid
    again_v1 = load_mnistm(str(data_dir), tiny_mnist(), version=1, photo_source=source)
    again_v2 = load_mnistm(str(data_dir), tiny_mnist(), version=2, photo_source=source)
    assert again_v1.sha256() == first_v1.sha256() and again_v2.sha256() == first_v2.sha256()
    assert len(calls) == 2  # each version generated once, then read from its own cache
    with pytest.raises(DataError, match="--mnistm_version=3: no such generator"):
        load_mnistm(str(data_dir), tiny_mnist(), version=3, photo_source=source)
