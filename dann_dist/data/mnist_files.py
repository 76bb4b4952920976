"""Readers for the MNIST file formats a user may already have.

- a folder with the four IDX files, each gzipped or not
  (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
  t10k-labels-idx1-ubyte; the variant spelling "train-images.idx3-ubyte" too);
- keras' mnist.npz (x_train, y_train, x_test, y_test);
- the classic mnist.pkl.gz: a pickled 3-tuple (train, valid, test) of
  (float rows of 784 pixels equal to byte/256, labels). train + valid, in that
  order, is MNIST's 60,000-image training set; pixels are converted back to
  uint8 exactly (a pixel that is not a multiple of 1/256 is an error).

Each reader returns {"x_train", "y_train", "x_test", "y_test"} with images
shaped [N, 28, 28, 1]; domain.check_arrays does the common checks.
Pickles are read with user_files' restricted unpickler: only numpy arrays and plain
containers load; a pickle that names anything else is refused, unrun.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dann_dist.data.errors import DataError
from dann_dist.data.user_files import gunzip_if_gzipped, load_pickle, read_bytes

_IDX_UBYTE = 0x08
# MNIST's own format, and through it MNIST-M's (its digits are MNIST's): 28x28 digits of
# 10 classes. The rest of the package reads these from the Domain or the pair.
IMAGE_SIZE = 28
NUM_CLASSES = 10
_PIXELS = IMAGE_SIZE * IMAGE_SIZE

# Official base names; users also meet "train-images.idx3-ubyte" (dot before
# idx) from some mirrors, so both spellings are looked for, gzipped or not.
IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def read_mnist_path(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """Reads MNIST from a folder of IDX files, an .npz or a .pkl(.gz); returns (arrays, format)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: does not exist (--mnist_path)")
    if path.is_dir():
        return read_idx_folder(path), "IDX files"
    name = path.name.lower()
    if name.endswith(".npz"):
        return read_mnist_npz(path), "keras mnist.npz"
    if name.endswith((".pkl", ".pkl.gz", ".pickle", ".pickle.gz")):
        return read_mnist_pickle(path), "mnist.pkl.gz 3-tuple"
    raise DataError(
        f"{path}: unknown MNIST format; expected a folder of IDX files, an .npz with "
        "x_train/y_train/x_test/y_test, or mnist.pkl.gz")


def read_idx(path: Path) -> np.ndarray:
    """Parses one IDX file of unsigned bytes (gzipped or not) into an array."""
    data = gunzip_if_gzipped(read_bytes(path), path)
    if len(data) < 4 or data[0:2] != b"\x00\x00":
        raise DataError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != _IDX_UBYTE:
        raise DataError(f"{path}: IDX element type 0x{dtype_code:02x}, "
                        "expected 0x08 (unsigned byte)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(data) - header
    if actual != expected:
        state = "truncated" if actual < expected else "too long"
        raise DataError(
            f"{path}: {state}: header says shape {list(shape)} ({expected} bytes of data), "
            f"file has {actual}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _find_idx_file(folder: Path, base: str) -> Path | None:
    dotted = base.replace("-idx", ".idx")
    for name in (base, base + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx_folder(folder: Path) -> dict[str, np.ndarray]:
    found = {key: _find_idx_file(folder, base) for key, base in IDX_NAMES.items()}
    missing = [IDX_NAMES[key] for key, path in found.items() if path is None]
    if missing:
        raise DataError(f"{folder}: missing IDX file(s) {', '.join(missing)} (gzipped or not)")
    arrays = {}
    for key, path in found.items():
        array = read_idx(path)
        if key.startswith("x_"):
            if array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
                raise DataError(f"{path}: images have shape {list(array.shape)}, "
                                f"expected [N, {IMAGE_SIZE}, {IMAGE_SIZE}]")
            array = array[..., None]
        elif array.ndim != 1:
            raise DataError(f"{path}: labels have shape {list(array.shape)}, expected [N]")
        elif len(array) and array.max() >= NUM_CLASSES:
            bad = int(np.argmax(array >= NUM_CLASSES))
            raise DataError(f"{path}: label #{bad} is {int(array[bad])}, labels must be "
                            f"0..{NUM_CLASSES - 1}")
        arrays[key] = array
    for split in ("train", "test"):
        x_path, y_path = found[f"x_{split}"], found[f"y_{split}"]
        n_x, n_y = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if n_x != n_y:
            raise DataError(f"{x_path} has {n_x} images but {y_path} has {n_y} labels")
    return arrays


def read_mnist_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in IDX_NAMES if k not in archive.files]
            if missing:
                raise DataError(f"{path}: no {', '.join(missing)} array "
                                f"(has {', '.join(archive.files)})")
            arrays = {key: archive[key] for key in IDX_NAMES}
    except DataError:
        raise
    except Exception as e:  # zipfile/numpy raise many types for damaged files
        raise DataError(f"{path}: cannot read .npz ({type(e).__name__}: {e})") from e
    for key in ("x_train", "x_test"):
        if arrays[key].ndim == 3:  # keras stores [N, 28, 28]
            arrays[key] = arrays[key][..., None]
    return arrays


def floats_to_bytes(rows: np.ndarray, where: str) -> np.ndarray:
    """float rows equal to byte/256 -> uint8 [N, 28, 28, 1], exactly or not at all."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != _PIXELS or not np.issubdtype(rows.dtype, np.floating):
        raise DataError(f"{where}: images have shape {list(rows.shape)} and dtype {rows.dtype}, "
                        f"expected float rows of {_PIXELS} pixels")
    # Multiplying by a power of two is exact in floating point, so byte/256
    # comes back as the integral byte value with no rounding involved.
    scaled = rows * rows.dtype.type(256)
    if not (np.all(scaled >= 0) and np.all(scaled <= 255)
            and np.array_equal(scaled, np.floor(scaled))):
        raise DataError(f"{where}: pixels are not byte/256 values in [0, 255/256] "
                        "(a byte/255 variant would fail here too)")
    return scaled.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1)


def read_mnist_pickle(path: Path) -> dict[str, np.ndarray]:
    return parse_mnist_pickle(load_pickle(path), str(path))


def parse_mnist_pickle(content, path: str) -> dict[str, np.ndarray]:
    """The unpickled 3-tuple -> arrays; train + valid become the 60,000 train set."""
    if not (isinstance(content, (tuple, list)) and len(content) == 3
            and all(isinstance(part, (tuple, list)) and len(part) == 2 for part in content)):
        raise DataError(f"{path}: expected a pickled 3-tuple ((x, y) train, valid, test)")
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = content
    parts = {}
    for name, x, y in (("train", x_tr, y_tr), ("valid", x_va, y_va), ("test", x_te, y_te)):
        images = floats_to_bytes(x, f"{path} ({name} part)")
        labels = np.asarray(y)
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{path}: {name} part has {len(images)} images but labels of shape "
                            f"{list(labels.shape)}")
        parts[name] = (images, labels)
    return {
        "x_train": np.concatenate([parts["train"][0], parts["valid"][0]]),
        "y_train": np.concatenate([parts["train"][1], parts["valid"][1]]),
        "x_test": parts["test"][0],
        "y_test": parts["test"][1],
    }
