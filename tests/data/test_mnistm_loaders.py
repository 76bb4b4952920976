"""MNIST-M from the user's files: published PNG folder, both pickle styles, .npz; bad input."""

import logging

import numpy as np
import pytest

from dann_dist.data import load_mnistm, mnistm
from dann_dist.data.errors import DataError

from data_fixtures import encode_png, injected_source, tiny_mnist


def uniform_images(n, size, seed):
    """Each image one flat colour, so any resize or crop must leave it unchanged."""
    colours = np.random.default_rng(seed).integers(0, 256, (n, 1, 1, 3), dtype=np.uint8)
    return np.broadcast_to(colours, (n, size, size, 3)).copy()


def ramp_image(size=32):
    """Red grows 8 per column: tells a bilinear resize from a crop."""
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0] = 8 * np.arange(size)[None, :]
    return image


@pytest.fixture
def mnist():
    return tiny_mnist(n_train=12, n_test=6)


@pytest.fixture
def published(files, mnist):
    x_train, x_test = uniform_images(12, 32, 1), uniform_images(6, 32, 2)
    x_train[3] = ramp_image()
    labels = (np.arange(12) * 7) % 10, (np.arange(6) * 3) % 10
    folder = files.mnistm_png_folder(x_train, labels[0], x_test, labels[1])
    return folder, x_train, labels


def test_published_png_folder_resized_bilinearly(published, mnist, tmp_path):
    folder, x_train, (y_train, y_test) = published
    domain = load_mnistm(str(tmp_path / "data"), mnist, mnistm_path=str(folder))
    assert domain.x_train.shape == (12, 28, 28, 3) and domain.x_train.dtype == np.uint8
    assert domain.x_test.shape == (6, 28, 28, 3)
    np.testing.assert_array_equal(domain.y_train, y_train)  # from the label file, in its order
    np.testing.assert_array_equal(domain.y_test, y_test)
    for index in (0, 1, 11):
        np.testing.assert_array_equal(domain.x_train[index], x_train[index, :28, :28])
    # Bilinear with half-pixel centres maps output column j to input column
    # (j + 0.5) * 32 / 28 - 0.5; on a linear ramp that interpolates exactly.
    expected = np.round(8 * ((np.arange(28) + 0.5) * 32 / 28 - 0.5))
    np.testing.assert_allclose(domain.x_train[3, 5, :, 0], expected, atol=1)
    assert domain.x_train[3, 5, 0, 0] < 8  # a central crop would start at 16
    assert "published PNG folder" in domain.description and "bilinear" in domain.description


def test_published_folder_found_inside_its_parent_and_28px_kept(files, mnist, tmp_path):
    x_train = np.random.default_rng(0).integers(0, 256, (12, 28, 28, 3), dtype=np.uint8)
    x_test = x_train[:6]
    folder = files.mnistm_png_folder(x_train, np.arange(12) % 10, x_test, np.arange(6),
                                     name="parent/mnist_m")
    domain = load_mnistm(str(tmp_path / "data"), mnist, mnistm_path=str(folder.parent))
    np.testing.assert_array_equal(domain.x_train, x_train)  # no resize at 28x28: lossless
    np.testing.assert_array_equal(domain.x_test, x_test)


def test_pickle_of_the_common_generator_takes_labels_from_mnist(files, mnist, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (18, 28, 28, 3), dtype=np.uint8)
    # TensorFlow's read_data_sets split: valid = the first training images.
    content = {"valid": images[:5], "train": images[5:12], "test": images[12:]}
    path = files.mnistm_pickle(content)
    domain = load_mnistm(str(tmp_path / "data"), mnist, mnistm_path=str(path))
    np.testing.assert_array_equal(domain.x_train, images[:12])
    np.testing.assert_array_equal(domain.y_train, mnist.y_train)
    np.testing.assert_array_equal(domain.x_test, images[12:])
    np.testing.assert_array_equal(domain.y_test, mnist.y_test)
    assert "labels from MNIST" in domain.description


def test_pickle_of_the_origin_script(files, mnist, tmp_path):
    rng = np.random.default_rng(0)
    content = {"train": rng.integers(0, 256, (9, 28, 28, 3), dtype=np.uint8),
               "train_label": rng.integers(0, 10, 9),
               "test": rng.integers(0, 256, (4, 28, 28, 3), dtype=np.uint8),
               "test_label": rng.integers(0, 10, 4)}
    path = files.mnistm_pickle(content)
    domain = load_mnistm(str(tmp_path / "data"), mnist, mnistm_path=str(path))
    np.testing.assert_array_equal(domain.x_train, content["train"])
    np.testing.assert_array_equal(domain.y_train, content["train_label"])
    np.testing.assert_array_equal(domain.y_test, content["test_label"])


def test_npz(files, mnist, tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (9, 28, 28, 3), dtype=np.uint8),
              "y_train": rng.integers(0, 10, 9, dtype=np.uint8),
              "x_test": rng.integers(0, 256, (4, 28, 28, 3), dtype=np.uint8),
              "y_test": rng.integers(0, 10, 4)}
    domain = load_mnistm(str(tmp_path / "data"), mnist, mnistm_path=str(files.mnistm_npz(arrays)))
    for name, array in arrays.items():
        np.testing.assert_array_equal(getattr(domain, name), array)
    assert domain.y_train.dtype == np.int64


def test_file_source_is_cached_until_the_files_change(published, mnist, tmp_path, monkeypatch):
    folder, _, _ = published
    data_dir = tmp_path / "data"
    first = load_mnistm(str(data_dir), mnist, mnistm_path=str(folder))
    calls = []
    real_reader = mnistm.read_mnistm_path
    monkeypatch.setattr(mnistm, "read_mnistm_path", lambda *a: calls.append(a) or real_reader(*a))
    again = load_mnistm(str(data_dir), mnist, mnistm_path=str(folder))
    assert calls == [] and again.sha256() == first.sha256()

    labels = folder / "mnist_m_test_labels.txt"
    labels.write_text(labels.read_text().replace("00000000.png 0", "00000000.png 9"))
    changed = load_mnistm(str(data_dir), mnist, mnistm_path=str(folder))
    assert len(calls) == 1 and changed.y_test[0] == 9


# Bad input -----------------------------------------------------------------

def _set_label(folder, line_text):
    path = folder / "mnist_m_train_labels.txt"
    lines = path.read_text().splitlines()
    lines[2] = line_text
    path.write_text("\n".join(lines) + "\n")


def _extra_png(folder):
    (folder / "mnist_m_train" / "00000099.png").write_bytes(encode_png(ramp_image()))


def _missing_png(folder):
    (folder / "mnist_m_train" / "00000004.png").unlink()
    (folder / "mnist_m_train" / "00000044.png").write_bytes(encode_png(ramp_image()))


def _garbage_png(folder):
    (folder / "mnist_m_test" / "00000002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")


def _wrong_size_png(folder):
    png = encode_png(np.zeros((30, 30, 3), np.uint8))
    (folder / "mnist_m_train" / "00000000.png").write_bytes(png)


def _odd_size_png(folder):
    png = encode_png(np.zeros((28, 28, 3), np.uint8))
    (folder / "mnist_m_train" / "00000005.png").write_bytes(png)


@pytest.mark.parametrize("corrupt,problem", [
    (lambda f: _set_label(f, "00000002.png 11"),
     r"mnist_m_train_labels.txt:3: label 11 outside 0..9"),
    (lambda f: _set_label(f, "00000002.png"),
     r"mnist_m_train_labels.txt:3: expected '<name>.png <label>'"),
    (lambda f: _set_label(f, "00000002.png seven"), r"mnist_m_train_labels.txt:3: expected"),
    # isdigit() says yes to these, and int() then raised a bare ValueError ("²") or read
    # the Arabic-Indic three as label 3: only ASCII digits are labels.
    (lambda f: _set_label(f, "00000002.png \u00b2"),
     r"mnist_m_train_labels.txt:3: expected '<name>.png <label>' with the label in ASCII "
     r"digits, got '00000002.png \u00b2'"),
    (lambda f: _set_label(f, "00000002.png \u0663"), r"mnist_m_train_labels.txt:3: expected"),
    (_extra_png,
     r"mnist_m_train: image/label count mismatch: 13 PNG files, 12 labels.*00000099.png"),
    (_missing_png,
     r"mnist_m_train: image/label count mismatch.*labelled but missing: 00000004.png"),
    (_garbage_png, r"mnist_m_test/00000002.png: cannot decode image"),
    (_wrong_size_png, r"mnist_m_train/00000000.png: image is 30x30, expected 32x32"),
    (_odd_size_png, r"mnist_m_train/00000005.png: image is 28x28x3, expected 32x32"),
])
def test_bad_published_folder(published, mnist, tmp_path, corrupt, problem):
    folder, _, _ = published
    corrupt(folder)
    with pytest.raises(DataError, match=problem):
        load_mnistm(str(tmp_path / "data"), mnist, mnistm_path=str(folder))


@pytest.mark.parametrize("odd", [0, 1])
def test_an_odd_sized_png_is_named_even_when_it_comes_first(published, mnist, tmp_path, odd):
    """The first PNG set the expected size, so a 28x28 first image made the next, good
    32x32 one the culprit. Most images' size is the expected one."""
    folder, _, _ = published
    (folder / "mnist_m_train" / f"0000000{odd}.png").write_bytes(
        encode_png(np.zeros((28, 28, 3), np.uint8)))
    with pytest.raises(DataError) as error:
        load_mnistm(str(tmp_path / "data"), mnist, mnistm_path=str(folder))
    message = str(error.value)
    assert message.startswith(str(folder / "mnist_m_train" / f"0000000{odd}.png: image is "
                                           "28x28x3, expected 32x32 RGB like 11 of the 12 "
                                           "images")), message
    assert f"(1 differ: 0000000{odd}.png)" in message


def test_several_odd_pngs_are_counted_and_the_first_named(published, mnist, tmp_path):
    folder, _, _ = published
    for index in (0, 4, 7, 9, 10):
        (folder / "mnist_m_train" / f"{index:08d}.png").write_bytes(
            encode_png(np.zeros((28, 28, 3), np.uint8)))
    with pytest.raises(DataError, match=r"00000000.png: image is 28x28x3, expected 32x32 RGB "
                                        r"like 7 of the 12 images .*\(5 differ: 00000000.png, "
                                        r"00000004.png, 00000007.png, \.\.\.\)"):
        load_mnistm(str(tmp_path / "data"), mnist, mnistm_path=str(folder))


def test_bad_input_leaves_the_existing_cache_intact(published, files, mnist, tmp_path):
    folder, _, _ = published
    data_dir = tmp_path / "data"
    load_mnistm(str(data_dir), mnist, mnistm_path=str(folder))
    cache = mnistm.cache_path(data_dir, mnistm_path=str(folder))
    before = cache.read_bytes()
    _garbage_png(folder)
    with pytest.raises(DataError, match="cannot decode"):
        load_mnistm(str(data_dir), mnist, mnistm_path=str(folder))
    assert cache.read_bytes() == before
    assert [p.name for p in data_dir.iterdir()] == [cache.name]


def test_pickle_sizes_that_do_not_match_mnist(files, mnist, tmp_path):
    images = np.zeros((20, 28, 28, 3), np.uint8)
    path = files.mnistm_pickle({"valid": images[:5], "train": images[5:13], "test": images[13:]})
    with pytest.raises(DataError, match="mnistm_data.pkl: has 8 train \\+ 5 valid .* "
                                        "labels are taken from MNIST"):
        load_mnistm(str(tmp_path / "data"), mnist, mnistm_path=str(path))


def test_pickle_with_unknown_keys(files, mnist, tmp_path):
    path = files.mnistm_pickle({"images": np.zeros((3, 28, 28, 3), np.uint8)})
    with pytest.raises(DataError, match="mnistm_data.pkl: pickle has keys \\['images'\\]"):
        load_mnistm(str(tmp_path / "data"), mnist, mnistm_path=str(path))


@pytest.mark.parametrize("change,problem", [
    ({"x_train": np.zeros((9, 28, 28, 3), np.float32)}, "train images have dtype float32"),
    ({"x_test": np.zeros((4, 28, 28, 1), np.uint8)}, r"test images have shape \[4, 28, 28, 1\]"),
    ({"y_train": np.full(9, 10)}, "labels must be 0..9"),
    ({"y_test": np.zeros(5, np.int64)}, "4 test images but 5 test labels"),
])
def test_bad_npz(files, mnist, tmp_path, change, problem):
    arrays = {"x_train": np.zeros((9, 28, 28, 3), np.uint8), "y_train": np.zeros(9, np.int64),
              "x_test": np.zeros((4, 28, 28, 3), np.uint8), "y_test": np.zeros(4, np.int64)}
    arrays.update(change)
    path = files.mnistm_npz(arrays)
    with pytest.raises(DataError, match=problem) as error:
        load_mnistm(str(tmp_path / "data"), mnist, mnistm_path=str(path))
    assert "mnistm.npz" in str(error.value)


def test_both_mnistm_and_bsds_paths_is_an_error(published, mnist, tmp_path):
    folder, _, _ = published
    with pytest.raises(DataError, match="not both"):
        load_mnistm(str(tmp_path / "data"), mnist, mnistm_path=str(folder), bsds_path=str(folder))


def test_missing_path(mnist, tmp_path):
    with pytest.raises(DataError, match="nowhere: does not exist"):
        load_mnistm(str(tmp_path / "data"), mnist, mnistm_path=str(tmp_path / "nowhere"))


def test_published_tarball_gets_told_to_extract(files, mnist, tmp_path):
    files.root.mkdir(parents=True, exist_ok=True)
    tarball = files.root / "mnist_m.tar.gz"
    tarball.write_bytes(b"\x1f\x8b not extracted")
    with pytest.raises(DataError, match="mnist_m.tar.gz: a tarball; extract it first"):
        load_mnistm(str(tmp_path / "data"), mnist, mnistm_path=str(tarball))


def test_mnistm_path_is_cached_apart_and_a_later_run_uses_the_default(published, mnist, tmp_path,
                                                                     photos, caplog):
    folder, _, (y_train, _) = published
    data_dir = tmp_path / "data"
    default_calls = []
    source = injected_source(photos, default_calls)
    generated = load_mnistm(str(data_dir), mnist, photo_source=source)
    default_cache = mnistm.cache_path(data_dir)
    before = default_cache.read_bytes()

    users = load_mnistm(str(data_dir), mnist, mnistm_path=str(folder))
    np.testing.assert_array_equal(users.y_train, y_train)
    assert default_cache.read_bytes() == before  # the default cache never holds the user's set
    assert mnistm.cache_path(data_dir, mnistm_path=str(folder)).is_file()

    with caplog.at_level(logging.INFO, logger="absl"):
        later = load_mnistm(str(data_dir), mnist, photo_source=source)
    assert later.sha256() == generated.sha256() and later.sha256() != users.sha256()
    assert default_calls == [1]  # from its cache, not regenerated
    assert f"source: generated (version {mnistm.DEFAULT_VERSION})" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="absl"):
        again = load_mnistm(str(data_dir), mnist, mnistm_path=str(folder))
    assert again.sha256() == users.sha256() and "using cache" in caplog.text
    assert f"source --mnistm_path {folder}" in caplog.text
