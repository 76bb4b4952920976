"""The registry of dataset pairs: which source and target domains a run adapts between.

A pair is one module with its two loaders (pair_mnist_mnistm.py) plus one row in
BUILT_IN below. The row says what the rest of the code needs to know without loading
any data: the image shape the models see, the number of classes, and the target
accuracies the paper reports, which the report sets our results against.

    pair = pairs.get("mnist_mnistm")      # or pairs.of(config): the config's --pair
    pair.image_shape, pair.num_classes    # (28, 28, 3), 10
    source = pair.load_source(config)     # data options: a Config or parsed data flags
    target = pair.load_target(config, source)

load.load_domains(config) does the last two and checks the domains against the row.
Tests add pairs of their own with register()/unregister() or registered().
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
from typing import Any, Callable, Iterator, Mapping

from dann_dist.data import pair_mnist_mnistm
from dann_dist.data.domain import Domain
from dann_dist.data.errors import DataError
from dann_dist.data.options import DEFAULT_PAIR, pair_name


@dataclasses.dataclass(frozen=True, eq=False)
class Pair:
    """One registry row."""

    name: str  # the --pair value
    description: str
    load_source: Callable[[Any], Domain]  # (data options) -> the labelled source domain
    load_target: Callable[[Any, Domain], Domain]  # (data options, source) -> the target
    image_shape: tuple[int, int, int]  # (H, W, C) the models see; C = 3: gray is repeated
    num_classes: int
    # Target test accuracy per --adaptation as `paper` reports it.
    paper_target_accuracy: Mapping[str, float] = dataclasses.field(default_factory=dict)
    paper: str = ""
    # Further published results: (where, adaptation, target test accuracy).
    other_results: tuple[tuple[str, str, float], ...] = ()

    def __post_init__(self):
        # Rows are shared by every caller in the process: nobody may edit the numbers.
        object.__setattr__(self, "paper_target_accuracy",
                           types.MappingProxyType(dict(self.paper_target_accuracy)))
        object.__setattr__(self, "image_shape", tuple(int(d) for d in self.image_shape))


BUILT_IN = (
    Pair(name="mnist_mnistm",
         description=pair_mnist_mnistm.DESCRIPTION,
         load_source=pair_mnist_mnistm.load_source,
         load_target=pair_mnist_mnistm.load_target,
         image_shape=pair_mnist_mnistm.MODEL_IMAGE_SHAPE,
         num_classes=pair_mnist_mnistm.CLASSES,
         paper_target_accuracy={"source_only": 0.5225, "dann": 0.7666, "target_only": 0.9596},
         paper="Ganin et al., Domain-Adversarial Training of Neural Networks, JMLR 2016, "
               "table 2",
         other_results=(("Ganin & Lempitsky, Unsupervised Domain Adaptation by "
                         "Backpropagation, ICML 2015, table 1", "dann", 0.8149),)),
)

_REGISTRY: dict[str, Pair] = {}


def register(pair: Pair) -> Pair:
    """Adds a row; a name already taken is a ValueError (unregister it first)."""
    if not pair.name or not pair.name.replace("_", "").isalnum():
        raise ValueError(f"pair name {pair.name!r}: use letters, digits and '_' (a flag value)")
    if len(pair.image_shape) != 3 or min(pair.image_shape) < 1:
        raise ValueError(f"pair {pair.name}: image_shape {pair.image_shape} is not (H, W, C)")
    if pair.num_classes < 2:
        raise ValueError(f"pair {pair.name}: num_classes {pair.num_classes} is below 2")
    if pair.name in _REGISTRY:
        raise ValueError(f"pair {pair.name} is registered already")
    _REGISTRY[pair.name] = pair
    return pair


def unregister(name: str) -> None:
    if name == DEFAULT_PAIR:
        raise ValueError(f"pair {name} is the default; it cannot be unregistered")
    _REGISTRY.pop(name, None)


@contextlib.contextmanager
def registered(pair: Pair) -> Iterator[Pair]:
    """register(pair) for the duration of a with-block (tests)."""
    register(pair)
    try:
        yield pair
    finally:
        unregister(pair.name)


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get(name: str) -> Pair:
    """The row of `name`; DataError listing the registered pairs if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DataError(f"--pair={name}: no such dataset pair; registered pairs: "
                        f"{', '.join(names())}") from None


def of(options) -> Pair:
    """The pair a Config or parsed flags ask for (--pair; the default without the field)."""
    return get(pair_name(options))


for _pair in BUILT_IN:
    register(_pair)
