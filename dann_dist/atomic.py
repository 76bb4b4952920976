"""Writes that a crash cannot leave half done: readers see the old or the new version.

(The data caches have their own, stricter variant with checksums: data/storage.py.)
"""

from __future__ import annotations

import os
import shutil


def write_file(path: str, data: bytes | str) -> None:
    """Writes data to a temporary name beside `path`, then renames it over `path`."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def replace_directory(tmp: str, directory: str) -> None:
    """Moves the finished directory `tmp` to `directory`, replacing any previous one.
    The old version is moved aside first and deleted last, so one of the two is always
    complete."""
    old = directory + ".old"
    if os.path.exists(directory):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
