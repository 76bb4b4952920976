"""Builders of small fixture files for the data tests (imported by conftest and tests)."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np

from dann_dist.data.domain import Domain
from dann_dist.data.photos import Photo, PhotoSource


def tiny_mnist_arrays(n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """MNIST-shaped arrays: sparse random strokes, every class present."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(1, 256, (n, 28, 28, 1), dtype=np.uint8)
        x[rng.random(x.shape) < 0.8] = 0
        arrays[f"x_{split}"] = x
        arrays[f"y_{split}"] = rng.permutation(np.arange(n) % 10).astype(np.int64)
    return arrays


def tiny_mnist(seed: int = 0, **sizes) -> Domain:
    return Domain(name="mnist", description="tiny test MNIST",
                  **tiny_mnist_arrays(seed=seed, **sizes))


def injected_source(arrays, calls=None):
    """Photos handed in directly, as tests and callers with their own photos do."""
    photos = [Photo(name=f"test-photo-{i}", sha256=hashlib.sha256(a.tobytes()).hexdigest(),
                    pixels=a) for i, a in enumerate(arrays)]

    def load():
        if calls is not None:
            calls.append(1)
        return photos

    key = hashlib.sha256(b"".join(p.sha256.encode() for p in photos)).hexdigest()
    return PhotoSource(kind="test", description="test photos", key=key, load=load)


def smooth_photo(height: int, width: int, seed: int) -> np.ndarray:
    """A colour image with gradients and blobs: compresses like a photo, not noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(0.02, 0.2, 3)
        channels.append(127 + 120 * np.sin(a * rows + b * cols + c * rows * cols / 50))
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def encode_png(image: np.ndarray) -> bytes:
    import tensorflow as tf

    return tf.io.encode_png(image).numpy()


def encode_jpeg(image: np.ndarray) -> bytes:
    import tensorflow as tf

    return tf.io.encode_jpeg(image, quality=95).numpy()


class FixtureFiles:
    """Writes fixture files of every supported format under one folder."""

    def __init__(self, root: Path):
        self.root = root

    def _new(self, name: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        assert not path.exists(), f"fixture {path} built twice"
        return path

    # MNIST formats -------------------------------------------------------
    def mnist_idx(self, arrays: dict, gz: bool = False, dotted: bool = False,
                  name: str = "idx") -> Path:
        folder = self._new(name)
        folder.mkdir(parents=True)
        bases = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
                 "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
        for key, base in bases.items():
            array = arrays[key][..., 0] if key.startswith("x_") else arrays[key].astype(np.uint8)
            data = idx_bytes(array)
            if dotted:
                base = base.replace("-idx", ".idx")
            if gz:
                (folder / f"{base}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / base).write_bytes(data)
        return folder

    def mnist_npz(self, arrays: dict, name: str = "mnist.npz") -> Path:
        path = self._new(name)
        # keras' file stores images as [N, 28, 28] and labels as uint8.
        np.savez(path, x_train=arrays["x_train"][..., 0],
                 y_train=arrays["y_train"].astype(np.uint8),
                 x_test=arrays["x_test"][..., 0], y_test=arrays["y_test"].astype(np.uint8))
        return path

    def mnist_pkl_gz(self, arrays: dict, n_valid: int = 10, scale: float = 256.0,
                     name: str = "mnist.pkl.gz") -> Path:
        path = self._new(name)
        rows = lambda x: (x.reshape(len(x), 784).astype(np.float32) / np.float32(scale))  # noqa: E731
        n_train = len(arrays["y_train"]) - n_valid
        content = ((rows(arrays["x_train"][:n_train]), arrays["y_train"][:n_train]),
                   (rows(arrays["x_train"][n_train:]), arrays["y_train"][n_train:]),
                   (rows(arrays["x_test"]), arrays["y_test"]))
        path.write_bytes(gzip.compress(pickle.dumps(content)))
        return path

    # MNIST-M formats -----------------------------------------------------
    def mnistm_png_folder(self, x_train: np.ndarray, y_train, x_test: np.ndarray, y_test,
                          name: str = "mnist_m") -> Path:
        folder = self._new(name)
        for split, images, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
            (folder / f"mnist_m_{split}").mkdir(parents=True)
            lines = []
            for index, (image, label) in enumerate(zip(images, labels)):
                file_name = f"{index:08d}.png"
                (folder / f"mnist_m_{split}" / file_name).write_bytes(encode_png(image))
                lines.append(f"{file_name} {int(label)}")
            (folder / f"mnist_m_{split}_labels.txt").write_text("\n".join(lines) + "\n")
        return folder

    def mnistm_pickle(self, content: dict, name: str = "mnistm_data.pkl") -> Path:
        path = self._new(name)
        path.write_bytes(pickle.dumps(content))
        return path

    def mnistm_npz(self, arrays: dict, name: str = "mnistm.npz") -> Path:
        path = self._new(name)
        np.savez(path, **arrays)
        return path

    # BSDS-like photos ----------------------------------------------------
    def bsds_folder(self, photos: list[np.ndarray], name: str = "bsds") -> Path:
        """BSR/BSDS500/data/images/train/*.jpg plus files the loader must ignore."""
        folder = self._new(name)
        train = folder / "BSR" / "BSDS500" / "data" / "images" / "train"
        test = folder / "BSR" / "BSDS500" / "data" / "images" / "test"
        train.mkdir(parents=True)
        test.mkdir(parents=True)
        for index, photo in enumerate(photos):
            (train / f"{index:05d}.jpg").write_bytes(encode_jpeg(photo))
        (train / "Thumbs.db").write_bytes(b"not an image")
        (test / "99999.jpg").write_bytes(encode_jpeg(np.full((40, 40, 3), 7, np.uint8)))
        return folder

    def bsds_tarball(self, folder: Path, name: str = "BSR_bsds500.tgz") -> Path:
        path = self._new(name)
        with tarfile.open(path, "w:gz") as archive:
            archive.add(folder / "BSR", arcname="BSR")
        return path
