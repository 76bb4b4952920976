"""Generated MNIST-M: the recipe itself, determinism, BSDS folder/tarball, cache."""

import hashlib
import logging
import time

import numpy as np
import pytest

from dann_dist.data import load_mnistm, mnistm
from dann_dist.data.errors import DataError
from dann_dist.data.mnistm_recipe import blend, generate

from data_fixtures import encode_jpeg, injected_source, tiny_mnist


def test_strokes_invert_the_crop_and_background_keeps_it():
    digits = tiny_mnist().x_train
    colour = np.array([10, 200, 60], np.uint8)
    photo = np.broadcast_to(colour, (40, 50, 3)).copy()
    out = blend(digits, [photo], np.random.default_rng(0))
    strokes = digits[..., 0] > 0
    assert strokes.any() and (~strokes).any()
    np.testing.assert_array_equal(out[strokes], np.broadcast_to(255 - colour, out[strokes].shape))
    np.testing.assert_array_equal(out[~strokes], np.broadcast_to(colour, out[~strokes].shape))


def test_crops_are_whole_28x28_windows_covering_every_position():
    # Red = row and green = column of the photo pixel, so each background
    # pixel reveals where in the photo it was taken from.
    height, width = 31, 33
    photo = np.zeros((height, width, 3), np.uint8)
    photo[..., 0] = np.arange(height)[:, None]
    photo[..., 1] = np.arange(width)[None, :]
    digits = np.zeros((2000, 28, 28, 1), np.uint8)  # no strokes: pure crops
    out = blend(digits, [photo], np.random.default_rng(1))
    top, left = out[:, 0, 0, 0].astype(int), out[:, 0, 0, 1].astype(int)
    rows = np.broadcast_to(top[:, None, None] + np.arange(28)[None, :, None], out.shape[:3])
    cols = np.broadcast_to(left[:, None, None] + np.arange(28)[None, None, :], out.shape[:3])
    np.testing.assert_array_equal(out[..., 0], rows)
    np.testing.assert_array_equal(out[..., 1], cols)
    assert set(top) == set(range(height - 27)) and set(left) == set(range(width - 27))


def test_seventy_thousand_digits_take_seconds():
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
              for h, w in [(512, 512), (300, 451), (872, 1000), (1411, 1411), (427, 640)] * 2]
    digits = np.zeros((60000, 28, 28, 1), np.uint8)
    digits[:, 10:18, 10:18] = 200
    start = time.perf_counter()
    x_train, x_test = generate(digits, digits[:10000], photos, seed=42)
    assert time.perf_counter() - start < 15
    assert x_train.shape == (60000, 28, 28, 3) and x_test.shape == (10000, 28, 28, 3)


def test_same_seed_same_bytes_other_seed_other_bytes(files, photos, tmp_path):
    mnist = tiny_mnist()
    folder = files.bsds_folder(photos)
    first = load_mnistm(str(tmp_path / "a"), mnist, bsds_path=str(folder), seed=42)
    second = load_mnistm(str(tmp_path / "b"), mnist, bsds_path=str(folder), seed=42)
    other = load_mnistm(str(tmp_path / "c"), mnist, bsds_path=str(folder), seed=43)
    assert first.x_train.tobytes() == second.x_train.tobytes()
    assert first.x_test.tobytes() == second.x_test.tobytes()
    assert first.x_train.tobytes() != other.x_train.tobytes()
    np.testing.assert_array_equal(first.y_train, mnist.y_train)
    np.testing.assert_array_equal(first.y_test, mnist.y_test)
    # The cache files themselves are byte-identical too (metadata included).
    cache_a, cache_b = (mnistm.cache_path(tmp_path / d, bsds_path=str(folder)) for d in "ab")
    assert cache_a.read_bytes() == cache_b.read_bytes()


def test_bsds_tarball_and_folder_give_the_same_set(files, photos, tmp_path):
    mnist = tiny_mnist()
    folder = files.bsds_folder(photos)
    tarball = files.bsds_tarball(folder)
    from_folder = load_mnistm(str(tmp_path / "a"), mnist, bsds_path=str(folder))
    from_tar = load_mnistm(str(tmp_path / "b"), mnist, bsds_path=str(tarball))
    assert from_folder.sha256() == from_tar.sha256()
    assert "BSDS500 train photos" in from_tar.description and "seed 42" in from_tar.description


def test_cache_metadata_lists_only_the_train_photos_with_sha256(files, photos, tmp_path):
    folder = files.bsds_folder(photos)
    load_mnistm(str(tmp_path / "data"), tiny_mnist(), bsds_path=str(folder))
    _, meta = mnistm.read_cache(mnistm.cache_path(tmp_path / "data", bsds_path=str(folder)))
    train = folder / "BSR" / "BSDS500" / "data" / "images" / "train"
    expected = [(str(p), hashlib.sha256(p.read_bytes()).hexdigest())
                for p in sorted(train.glob("*.jpg"))]
    # No test/ photo, no Thumbs.db.
    assert [(p["name"], p["sha256"]) for p in meta["photos"]] == expected
    assert meta["seed"] == 42


def test_grayscale_photos_are_skipped_and_all_gray_is_an_error(files, photos, tmp_path, caplog):
    gray = np.repeat(photos[0][..., :1], 3, axis=-1)
    folder = files.bsds_folder([gray, photos[1]], name="mixed")
    with caplog.at_level(logging.INFO, logger="absl"):
        load_mnistm(str(tmp_path / "a"), tiny_mnist(), bsds_path=str(folder))
    assert "00000.jpg (grayscale)" in caplog.text
    _, meta = mnistm.read_cache(mnistm.cache_path(tmp_path / "a", bsds_path=str(folder)))
    assert [p["name"].rsplit("/", 1)[1] for p in meta["photos"]] == ["00001.jpg"]

    only_gray = files.bsds_folder([gray], name="gray")
    with pytest.raises(DataError, match="gray: no usable colour photo"):
        load_mnistm(str(tmp_path / "b"), tiny_mnist(), bsds_path=str(only_gray))


@pytest.mark.parametrize("make,problem", [
    (lambda root: root / "absent.tgz", "absent.tgz: does not exist"),
    (lambda root: (root / "empty").mkdir() or root / "empty", "empty: no train photos found"),
    (lambda root: (root / "broken.tgz").write_bytes(b"\x1f\x8b broken") and root / "broken.tgz",
     "broken.tgz: cannot read the tarball"),
])
def test_bad_bsds_paths(tmp_path, make, problem):
    with pytest.raises(DataError, match=problem):
        load_mnistm(str(tmp_path / "data"), tiny_mnist(), bsds_path=str(make(tmp_path)))


def test_unreadable_bsds_jpeg_names_the_file(files, photos, tmp_path):
    folder = files.bsds_folder(photos)
    bad = folder / "BSR" / "BSDS500" / "data" / "images" / "train" / "00001.jpg"
    bad.write_bytes(encode_jpeg(photos[1])[:50])
    with pytest.raises(DataError, match="00001.jpg: cannot decode image"):
        load_mnistm(str(tmp_path / "data"), tiny_mnist(), bsds_path=str(folder))
    assert not (tmp_path / "data" / "mnistm.npz").exists()


def test_default_photo_set_is_labelled_not_the_published_mnistm(photos, tmp_path):
    domain = load_mnistm(str(tmp_path / "data"), tiny_mnist(), photo_source=injected_source(photos),
                         version=1)
    assert domain.description == ("generated MNIST-M-style set from 3 natural photos in test "
                                  "photos (seed 42) - NOT the published MNIST-M")
    _, meta = mnistm.read_cache(tmp_path / "data" / "mnistm.npz")
    assert [p["name"] for p in meta["photos"]] == ["test-photo-0", "test-photo-1", "test-photo-2"]
    assert meta["description"] == domain.description


def test_cache_reused_until_seed_or_mnist_changes(photos, tmp_path):
    calls = []
    source = injected_source(photos, calls)
    data_dir = str(tmp_path / "data")
    first = load_mnistm(data_dir, tiny_mnist(), photo_source=source)
    again = load_mnistm(data_dir, tiny_mnist(), photo_source=source)
    assert len(calls) == 1 and again.sha256() == first.sha256()
    load_mnistm(data_dir, tiny_mnist(), seed=7, photo_source=source)
    assert len(calls) == 2
    load_mnistm(data_dir, tiny_mnist(seed=5), seed=7, photo_source=source)
    assert len(calls) == 3


def test_damaged_cache_is_detected_and_regenerated(photos, tmp_path, caplog):
    data_dir = tmp_path / "data"
    original = load_mnistm(str(data_dir), tiny_mnist(), photo_source=injected_source(photos),
                           version=1)
    cache = data_dir / "mnistm.npz"
    raw = bytearray(cache.read_bytes())
    raw[raw.find(original.x_train.tobytes()[:256]) + 300] ^= 0x55
    cache.write_bytes(bytes(raw))
    calls = []
    with caplog.at_level(logging.WARNING):
        rebuilt = load_mnistm(str(data_dir), tiny_mnist(),
                              photo_source=injected_source(photos, calls), version=1)
    assert "cache is damaged" in caplog.text and calls == [1]
    assert rebuilt.sha256() == original.sha256()
    assert mnistm.read_cache(cache)[0].sha256() == original.sha256()
