"""Reading bytes and pickles from files a user passes in, with errors naming the file.

Pickles are read with a restricted unpickler: a plain pickle.load runs whatever
callable the file names (os.system included), so a crafted --mnist_path or
--mnistm_path could run code. Only the globals that numpy arrays, numpy scalars
and plain containers need are resolved; anything else is refused, naming the file
and the global, before it is imported or called.
"""

from __future__ import annotations

import gzip
import io
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


# (module, name) pairs a pickle of numpy arrays and builtin containers refers to,
# under numpy 1.x (numpy.core) and 2.x (numpy._core) names and Python 2's
# __builtin__. Each is a constructor without side effects: _reconstruct and
# _frombuffer (protocol 5) build arrays, scalar builds numpy scalars, and
# _codecs.encode turns the text that protocols 0-2 store bytes as back into bytes.
ALLOWED_GLOBALS = frozenset(
    [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
     ("collections", "OrderedDict")]
    + [(f"numpy.{core}.multiarray", name) for core in ("core", "_core")
       for name in ("_reconstruct", "scalar")]
    + [(f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")]
    + [(builtins, name) for builtins in ("builtins", "__builtin__")
       for name in ("set", "frozenset", "bytearray", "complex")])


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle named a global outside ALLOWED_GLOBALS."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualified_name = f"{module}.{name}"


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise ForbiddenGlobal(module, name)
        return super().find_class(module, name)


def load_pickle(path: Path):
    """Unpickles a (possibly gzipped) file of numpy arrays and builtin containers."""
    return unpickle(gunzip_if_gzipped(read_bytes(path), path), where=str(path))


def unpickle(data: bytes, where: str):
    """Unpickles data with the restricted unpickler; DataError naming `where` on failure."""
    try:
        # latin1 lets Python 3 read Python 2 pickles of numpy arrays, which is
        # how the classic mnist.pkl.gz and older MNIST-M pickles were written.
        return _ArraysOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except ForbiddenGlobal as e:
        raise DataError(
            f"{where}: refused to load: the pickle asks for {e.qualified_name}, which is not "
            "part of a numpy array or a plain container (a pickle can run code when loaded, so "
            "only numpy arrays, numpy scalars, dict/list/tuple/set, numbers, strings and bytes "
            "are allowed). If the file is yours and safe, convert it to an .npz with x_train, "
            "y_train, x_test, y_test and pass that instead") from e
    except Exception as e:  # unpickling damaged data raises almost any type
        raise DataError(f"{where}: cannot unpickle ({type(e).__name__}: {e})") from e
