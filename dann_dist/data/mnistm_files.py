"""Readers for MNIST-M files a user already has (--mnistm_path).

- the published format: a folder (or its parent holding mnist_m/) with
  mnist_m_train/*.png, mnist_m_test/*.png, mnist_m_train_labels.txt and
  mnist_m_test_labels.txt, lines like "00000000.png 7"; images are 32x32 RGB;
- a pickle (optionally gzipped) of uint8 [N, 28, 28, 3] arrays, either
  * the origin script's keys train, train_label, test, test_label, or
  * the common generator's keys train, valid, test, which hold no labels: the
    labels are MNIST's, in order. That generator took TensorFlow's
    read_data_sets split, where validation is the FIRST 5,000 MNIST training
    images and train the remaining 55,000; so valid + train, in that order,
    lines up with MNIST's 60,000 training labels, and test with MNIST's test
    labels. Sizes must match exactly;
- an .npz with x_train, y_train, x_test, y_test.

Images of 32x32 (the published size) are brought to 28x28 with a bilinear
resize (tf.image.resize, half-pixel centres, no antialiasing, rounded to the
nearest integer), which keeps the digits at MNIST's scale; 28x28 images are
used as they are.
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from pathlib import Path

import numpy as np
from absl import logging

from dann_dist.data.errors import DataError
from dann_dist.data.image_codec import decode_image, resize_bilinear
from dann_dist.data.mnist_files import IMAGE_SIZE, NUM_CLASSES
from dann_dist.data.user_files import load_pickle, read_bytes

PUBLISHED_SIZE = 32
_PUBLISHED_HW = (PUBLISHED_SIZE, PUBLISHED_SIZE)
_MNIST_HW = (IMAGE_SIZE, IMAGE_SIZE)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_LABEL = re.compile(r"-?[0-9]+")
RESIZE_NOTE = "32x32 resized to 28x28 (bilinear)"


def read_mnistm_path(path: Path, mnist_y_train: np.ndarray, mnist_y_test: np.ndarray
                     ) -> tuple[dict[str, np.ndarray], str]:
    """Reads MNIST-M from a published folder, a pickle or an .npz; returns (arrays, format)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: does not exist (--mnistm_path)")
    if path.is_dir():
        arrays, file_format = read_published_folder(path), "published PNG folder"
    elif path.name.lower().endswith(".npz"):
        arrays, file_format = read_mnistm_npz(path), ".npz"
    elif path.name.lower().endswith((".pkl", ".pkl.gz", ".pickle", ".pickle.gz", ".p")):
        arrays, file_format = read_mnistm_pickle(path, mnist_y_train, mnist_y_test)
    elif path.name.lower().endswith((".tar.gz", ".tgz", ".tar")):
        raise DataError(f"{path}: a tarball; extract it first (tar xzf {path.name}) and pass the "
                        "folder it makes (mnist_m/, holding mnist_m_train/ and the label files)")
    else:
        raise DataError(f"{path}: unknown MNIST-M format; expected the published folder "
                        "(mnist_m_train/, mnist_m_train_labels.txt, ...), a .pkl or an .npz")
    resized = False
    for key in ("x_train", "x_test"):
        images = arrays[key]
        if images.ndim == 4 and images.shape[1:3] == (PUBLISHED_SIZE, PUBLISHED_SIZE) \
                and images.dtype == np.uint8:
            arrays[key] = resize_bilinear(images, IMAGE_SIZE)
            resized = True
    return arrays, f"{file_format}, {RESIZE_NOTE}" if resized else file_format


def _labels_file(folder: Path, split: str) -> list[tuple[str, int]]:
    path = folder / f"mnist_m_{split}_labels.txt"
    try:
        text = read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text file ({e})") from e
    entries, seen = [], set()
    # split("\n"), not splitlines(): the line numbers must be the ones an editor or grep
    # shows, and splitlines() also breaks at \x0c, \x1c-\x1e, \x85 and \u2028.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        parts = line.split()
        # ASCII digits only: str.isdigit() accepts "²", on which int() then raises.
        if len(parts) != 2 or not _LABEL.fullmatch(parts[1]):
            raise DataError(f"{path}:{number}: expected '<name>.png <label>' with the label "
                            f"in ASCII digits, got {line.rstrip(chr(13))!r}")
        name, label = parts[0], int(parts[1])
        if not 0 <= label < NUM_CLASSES:
            raise DataError(f"{path}:{number}: label {label} outside 0..{NUM_CLASSES - 1}")
        if name in seen:
            raise DataError(f"{path}:{number}: {name} is listed twice")
        seen.add(name)
        entries.append((name, label))
    if not entries:
        raise DataError(f"{path}: no labels")
    return entries


def read_published_folder(folder: Path) -> dict[str, np.ndarray]:
    if not (folder / "mnist_m_train").is_dir() and (folder / "mnist_m" / "mnist_m_train").is_dir():
        folder = folder / "mnist_m"
    arrays = {}
    for split in ("train", "test"):
        image_dir = folder / f"mnist_m_{split}"
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: missing (published MNIST-M has mnist_m_train/ and "
                            "mnist_m_test/ next to the two label files)")
        entries = _labels_file(folder, split)
        _check_listed(image_dir, split, entries)
        logging.info("MNIST-M: decoding %d PNG files in %s", len(entries), image_dir)
        arrays[f"x_{split}"] = _decode_images(image_dir, [name for name, _ in entries])
        arrays[f"y_{split}"] = np.array([label for _, label in entries], np.int64)
    return arrays


def _check_listed(image_dir: Path, split: str, entries: list[tuple[str, int]]) -> None:
    present = {p.name for p in image_dir.glob("*.png")}
    listed = {name for name, _ in entries}
    if present != listed:
        unlisted, missing = sorted(present - listed), sorted(listed - present)
        raise DataError(
            f"{image_dir}: image/label count mismatch: {len(present)} PNG files, "
            f"{len(entries)} labels in mnist_m_{split}_labels.txt"
            + (f"; not labelled: {', '.join(unlisted[:3])}" if unlisted else "")
            + (f"; labelled but missing: {', '.join(missing[:3])}" if missing else ""))


def _rgb(image: np.ndarray, path: Path) -> np.ndarray:
    channels = image.shape[-1]
    if channels == 1:
        return np.repeat(image, 3, axis=-1)
    if channels not in (3, 4):
        raise DataError(f"{path}: image is {_size(image.shape)}x{channels}, expected RGB "
                        "(3 channels; gray and RGBA are converted)")
    return image[..., :3]


def _size(shape) -> str:
    return f"{shape[0]}x{shape[1]}"


def _decode_images(image_dir: Path, names: list[str]) -> np.ndarray:
    """uint8 [N, H, W, 3] of the listed PNGs, all of one size (32x32 or 28x28)."""
    images = None
    for index, name in enumerate(names):
        path = image_dir / name
        image = _rgb(decode_image(read_bytes(path), str(path)), path)
        if images is None:
            if image.shape[:2] not in (_PUBLISHED_HW, _MNIST_HW):
                raise DataError(f"{path}: image is {_size(image.shape)}, expected "
                                f"{_size(_PUBLISHED_HW)} (or {_size(_MNIST_HW)})")
            images = np.empty((len(names), *image.shape), np.uint8)
        if image.shape != images.shape[1:]:
            # The first image set the size, but it may be the odd one out.
            raise _odd_size_error(image_dir, names, fallback=path)
        images[index] = image
    return images


def _odd_size_error(image_dir: Path, names: list[str], fallback: Path) -> DataError:
    """Names the first image whose size differs from most images' (ties go to the
    published size) and how many differ. On the error path only: every file is read again
    (headers, not pixels)."""
    sizes = {name: _image_size(image_dir / name) for name in names}
    counts = Counter(sizes.values())
    usual = max(counts, key=lambda size: (counts[size], size == _PUBLISHED_HW))
    odd = [name for name in names if sizes[name] != usual]
    path = image_dir / odd[0] if odd else fallback
    shape = decode_image(read_bytes(path), str(path)).shape
    shown = ", ".join(odd[:3]) + (", ..." if len(odd) > 3 else "")
    return DataError(
        f"{path}: image is {_size(shape)}x{shape[2]}, expected {_size(usual)} RGB like "
        f"{counts[usual]} of the {len(names)} images in {image_dir} ({len(odd)} differ: "
        f"{shown}); all images of a split must have one size")


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from a PNG's header, decoding only what is not a PNG."""
    data = read_bytes(path)
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    return decode_image(data, str(path)).shape[:2]


def read_mnistm_npz(path: Path) -> dict[str, np.ndarray]:
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise DataError(f"{path}: no {', '.join(missing)} array "
                                f"(has {', '.join(archive.files)})")
            return {key: archive[key] for key in keys}
    except DataError:
        raise
    except Exception as e:  # zipfile/numpy raise many types for damaged files
        raise DataError(f"{path}: cannot read .npz ({type(e).__name__}: {e})") from e


def read_mnistm_pickle(path: Path, mnist_y_train: np.ndarray, mnist_y_test: np.ndarray
                       ) -> tuple[dict[str, np.ndarray], str]:
    content = load_pickle(path)
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    keys = set(content)
    if {"train", "train_label", "test", "test_label"} <= keys:
        return ({"x_train": np.asarray(content["train"]),
                 "y_train": np.asarray(content["train_label"]),
                 "x_test": np.asarray(content["test"]),
                 "y_test": np.asarray(content["test_label"])},
                "pickle with train/train_label/test/test_label")
    if {"train", "valid", "test"} <= keys:
        train, valid, test = (np.asarray(content[k]) for k in ("train", "valid", "test"))
        if len(valid) + len(train) != len(mnist_y_train) or len(test) != len(mnist_y_test):
            raise DataError(
                f"{path}: has {len(train)} train + {len(valid)} valid and {len(test)} test images; "
                f"labels are taken from MNIST in order (valid = MNIST's first training images), "
                f"which has {len(mnist_y_train)} train and {len(mnist_y_test)} test labels")
        if valid.shape[1:] != train.shape[1:]:
            raise DataError(f"{path}: valid images have shape {list(valid.shape)}, train images "
                            f"{list(train.shape)}; they must agree")
        return ({"x_train": np.concatenate([valid, train]), "y_train": mnist_y_train,
                 "x_test": test, "y_test": mnist_y_test},
                "pickle with train/valid/test, labels from MNIST (valid = first train images)")
    raise DataError(f"{path}: pickle has keys {sorted(map(str, keys))}; expected train/train_label/"
                    "test/test_label or train/valid/test")
