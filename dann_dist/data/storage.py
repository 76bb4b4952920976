"""Atomic file writes, checksums and the .npz cache format.

Every file this package writes goes to a temporary name in the destination
folder and is then renamed over the target with os.replace, so a crash or a bad
input never leaves a half-written file behind, and readers (other training
processes sharing the data_dir) see either the old or the new file.

A cache file is an uncompressed .npz with the arrays plus a JSON string under
the key "__meta__". The metadata stores the sha256 of the arrays, which is
checked on every load: a cache damaged on disk is reported, not used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

from dann_dist.data.errors import DataError

META_KEY = "__meta__"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the arrays, in name order.

    Shape and dtype are hashed too so that the same bytes reinterpreted (for
    example uint8 labels read as int64 rows) do not pass as the same data.
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def ensure_dir(path: Path) -> Path:
    """Creates the folder (and parents) if needed; DataError if that is impossible."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{path}: cannot create the data directory ({e.strerror or e}); "
                        "pass a writable --data_dir") from e
    return path


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Calls write(file) on a temporary file next to path, then renames it to path.

    An OSError (disk full, no permission) becomes a DataError naming the file;
    in every failure the temporary file is removed and path is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise DataError(f"{path}: cannot write ({e.strerror or e}); check the folder's "
                        "permissions or pass another --data_dir") from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file private (0600); a data cache is meant to be shared.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(e, OSError):
            raise DataError(f"{path}: cannot write ({e.strerror or e}); check free space and "
                            "permissions, or pass another --data_dir") from e
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def save_cache(path: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> str:
    """Writes arrays and meta (plus the arrays' sha256) atomically; returns the sha256."""
    checksum = arrays_sha256(arrays)
    full_meta = dict(meta, sha256=checksum)
    payload = dict(arrays)
    payload[META_KEY] = np.array(json.dumps(full_meta, sort_keys=True))
    # Uncompressed: MNIST-M is ~165 MB raw; compression would cost many seconds
    # on every write and a second or two on every read.
    atomic_write(path, lambda f: np.savez(f, **payload))
    return checksum


def load_cache(path: Path, required: tuple[str, ...]
               ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads a cache file written by save_cache and verifies its checksum.

    Raises DataError when the file cannot be read, lacks an array, has no
    metadata, or its arrays do not match the stored sha256.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            missing = [name for name in (*required, META_KEY) if name not in names]
            if missing:
                raise DataError(f"{path}: cache lacks {', '.join(missing)}")
            arrays = {name: archive[name] for name in required}
            meta = json.loads(str(archive[META_KEY]))
    except DataError:
        raise
    except Exception as e:  # numpy/zipfile raise many types for damaged files
        raise DataError(f"{path}: cannot read the cache ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or "sha256" not in meta:
        raise DataError(f"{path}: cache metadata has no checksum")
    actual = arrays_sha256(arrays)
    if actual != meta["sha256"]:
        raise DataError(
            f"{path}: checksum mismatch (stored {meta['sha256'][:16]}..., "
            f"contents {actual[:16]}...); the file was modified or damaged")
    return arrays, meta
