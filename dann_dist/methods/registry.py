"""The methods `--adaptation` can name: one row per method, the module that defines it.

Rows name modules instead of importing them, so that the config (and --help) can list
the choices without loading TensorFlow; `get` imports the one a run uses. A new method
is one module under dann_dist/methods/ that defines METHOD, plus one row here.
"""

from __future__ import annotations

import importlib

METHODS = {
    "dann": "dann_dist.methods.dann",
    "source_only": "dann_dist.methods.source_only",
    "target_only": "dann_dist.methods.target_only",
    "cdan": "dann_dist.methods.cdan",
    "vada": "dann_dist.methods.vada",
    "dirtt": "dann_dist.methods.dirtt",
}


def names() -> tuple[str, ...]:
    return tuple(METHODS)


def get(name: str):
    """The Method registered as `name` (see dann_dist.methods.base.Method)."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(METHODS)}")
    return importlib.import_module(METHODS[name]).METHOD
