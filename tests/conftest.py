"""Shared fixtures. Test modules import helpers from tests/ (synthetic data, runners): pytest's
default import mode puts this directory on sys.path; dann_dist is installed (editable)."""

from __future__ import annotations

import os

import pytest

from synthetic import synthetic_domains

# Before the first TensorFlow import of the session: its C++ start-up notices bury test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def domains():
    return synthetic_domains()

