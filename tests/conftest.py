"""Shared fixtures. Tests import helpers from tests/ (synthetic data, runners)."""

from __future__ import annotations

import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
sys.path[:0] = [ROOT, TESTS]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def domains():
    from synthetic import synthetic_domains

    return synthetic_domains()
