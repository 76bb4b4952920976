"""Fixtures for the data tests: small files of every format, built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_fixtures import FixtureFiles, smooth_photo


@pytest.fixture
def files(tmp_path: Path) -> FixtureFiles:
    return FixtureFiles(tmp_path / "inputs")


@pytest.fixture
def photos() -> list[np.ndarray]:
    return [smooth_photo(48, 64, seed=1), smooth_photo(60, 45, seed=2),
            smooth_photo(33, 90, seed=3)]
