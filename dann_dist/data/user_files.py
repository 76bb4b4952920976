"""Reading bytes and pickles from files a user passes in, with errors naming the file."""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path

from dann_dist.data.errors import DataError

_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e


def gunzip_if_gzipped(data: bytes, path: Path | str) -> bytes:
    """Decompresses gzip data (recognised by its magic bytes, not the file name)."""
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from e


def load_pickle(path: Path):
    """Unpickles a (possibly gzipped) file. Pickles can run code: trusted files only."""
    return unpickle(gunzip_if_gzipped(read_bytes(path), path), where=str(path))


def unpickle(data: bytes, where: str):
    try:
        # latin1 lets Python 3 read Python 2 pickles of numpy arrays, which is
        # how the classic mnist.pkl.gz and older MNIST-M pickles were written.
        return pickle.loads(data, encoding="latin1")
    except Exception as e:  # unpickling damaged data raises almost any type
        raise DataError(f"{where}: cannot unpickle ({type(e).__name__}: {e})") from e
