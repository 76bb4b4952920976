"""Data sources for DANN: dataset pairs (pairs.py), the first being MNIST (labelled source)
and MNIST-M (unlabelled target).

Importing this package defines no flags, touches no disk and loads no submodule: the
names below are imported on first use, so that `import dann_dist.config` (which needs
only dann_dist.data.options) does not pull in the dataset loaders. See
`python -m dann_dist.data --help` for where the data come from.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Domain": "dann_dist.data.domain",
    "DataError": "dann_dist.data.errors",
    "define_flags": "dann_dist.data.options",
    "load_mnist": "dann_dist.data.mnist",
    "load_mnistm": "dann_dist.data.mnistm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
