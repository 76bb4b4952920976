"""Pickles a user passes (--mnist_path, --mnistm_path) load numpy arrays and nothing else.

A crafted pickle's __reduce__ can name any callable; the restricted unpickler must
refuse it, naming the file and the callable, before anything runs.
"""

import gzip
import os
import pickle

import numpy as np
import pytest

from dann_dist.data import load_mnist, load_mnistm
from dann_dist.data.errors import DataError
from dann_dist.data.user_files import unpickle

from data_fixtures import tiny_mnist, tiny_mnist_arrays


class OpensAFile:
    """Unpickling this calls open(path, "w"), which creates the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


class RunsAShellCommand:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _mnistm_content(payload):
    rng = np.random.default_rng(0)
    return {"train": rng.integers(0, 256, (12, 28, 28, 3), dtype=np.uint8),
            "train_label": payload, "test": rng.integers(0, 256, (6, 28, 28, 3), dtype=np.uint8),
            "test_label": np.arange(6) % 10}


@pytest.mark.parametrize("attack,named", [(OpensAFile, r"(builtins|io)\.open"),
                                          (RunsAShellCommand, r"(posix|os)\.system")])
@pytest.mark.parametrize("flag,suffix", [("mnistm_path", ".pkl"), ("mnistm_path", ".pkl.gz"),
                                         ("mnist_path", ".pkl.gz")])
def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path, attack, named, flag, suffix):
    victim = tmp_path / "written_by_the_pickle"
    if flag == "mnistm_path":
        content = _mnistm_content(attack(victim))  # hidden inside an ordinary-looking dict
    else:
        content = (attack(victim), None, None)
    data = pickle.dumps(content)
    path = tmp_path / f"crafted{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    data_dir = tmp_path / "data"

    with pytest.raises(DataError, match=rf"crafted{suffix}: refused to load: the pickle asks for "
                                        rf"{named}, which is not part of a numpy array") as error:
        if flag == "mnistm_path":
            load_mnistm(str(data_dir), tiny_mnist(n_train=12, n_test=6), mnistm_path=str(path))
        else:
            load_mnist(str(data_dir), mnist_path=str(path), allow_download=False)
    assert ".npz" in str(error.value)  # says what to pass instead
    assert not victim.exists()
    assert not data_dir.exists() or list(data_dir.iterdir()) == []


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("gz", [False, True])
def test_mnistm_pickles_of_arrays_still_load(files, tmp_path, protocol, gz):
    content = _mnistm_content(np.arange(12) % 10)
    data = pickle.dumps(content, protocol=protocol)
    path = files.root / f"mnistm_p{protocol}.pkl{'.gz' if gz else ''}"
    files.root.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    domain = load_mnistm(str(tmp_path / "data"), tiny_mnist(n_train=12, n_test=6),
                         mnistm_path=str(path))
    np.testing.assert_array_equal(domain.x_train, content["train"])
    np.testing.assert_array_equal(domain.y_train, content["train_label"])
    np.testing.assert_array_equal(domain.x_test, content["test"])


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_mnist_tuple_pickle_still_loads(files, tmp_path, protocol):
    arrays = tiny_mnist_arrays()
    path = files.mnist_pkl_gz(arrays)
    content = pickle.loads(gzip.decompress(path.read_bytes()))
    path.write_bytes(gzip.compress(pickle.dumps(content, protocol=protocol)))
    domain = load_mnist(str(tmp_path / "data"), mnist_path=str(path), allow_download=False)
    np.testing.assert_array_equal(domain.x_train, arrays["x_train"])
    np.testing.assert_array_equal(domain.y_test, arrays["y_test"])


def test_numpy_1_names_scalars_and_builtin_containers_load():
    # numpy 1.x wrote numpy.core.multiarray (numpy 2: numpy._core); protocol 2
    # spells globals as text, so the older name can be put back byte for byte.
    content = {"x": np.arange(6, dtype=np.uint8).reshape(2, 3), "n": np.int64(7),
               "f": np.float32(0.5), "s": {1, 2}, "t": (b"ab", "cd", 1.5, None, [3])}
    data = pickle.dumps(content, protocol=2)
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert old != data
    for raw in (data, old):
        loaded = unpickle(raw, "test.pkl")
        np.testing.assert_array_equal(loaded["x"], content["x"])
        assert loaded["n"] == 7 and loaded["f"] == np.float32(0.5)
        assert loaded["s"] == {1, 2} and loaded["t"] == content["t"]
