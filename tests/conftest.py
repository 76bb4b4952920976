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


# Longest test files first, so that pytest-xdist's two workers (--dist loadfile, which takes
# whole files in this order given --no-loadscope-reorder; the Makefile passes both) finish
# together: a long file taken last kept one core idle for 5 minutes of a 15-minute suite.
# Ordered by the files' summed test times in one run (2026-12-05, 2 cores, AVX2; files with
# several processes per test first); the rest keep their order.
LONGEST_FIRST = ("test_reliability.py", "test_distributed.py", "test_elastic.py",
                 "test_launch.py", "test_distributed_methods.py", "test_trainer.py",
                 "test_clipping.py", "test_dirtt.py", "test_bench_aggregate.py",
                 "test_reliability_round2.py", "test_bench_cli.py", "test_report.py",
                 "test_step_breakdown.py", "test_setup_env.py", "test_report_recipes.py",
                 "test_checkpoints.py", "test_noise_measure.py", "test_wheel_integration.py",
                 "test_data_cli.py", "test_report_scaling.py", "test_device_check.py",
                 "test_vada.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: within a file, and among the rest, the order stays
