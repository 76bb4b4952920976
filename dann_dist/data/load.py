"""The two domains a Config asks for: the source and target of its dataset pair."""

from __future__ import annotations

from dann_dist.data import pairs
from dann_dist.data.domain import Domain
from dann_dist.data.errors import DataError


def load_domains(config) -> tuple[Domain, Domain]:
    """(source, target) of the pair a dann_dist Config names (`pair`; mnist_mnistm for
    objects without it, such as parsed data flags), loaded with the config's data fields
    and checked against the pair's row."""
    pair = pairs.of(config)
    source = pair.load_source(config)
    target = pair.load_target(config, source)
    for role, domain in (("source", source), ("target", target)):
        check_domain(pair, role, domain)
    return source, target


def check_domain(pair: pairs.Pair, role: str, domain: Domain) -> None:
    """DataError unless `domain` has the pair's image size, gray or the pair's channels,
    and labels within the pair's classes: a row that does not match its loaders would
    otherwise fail inside the model, far from the cause."""
    height, width, channels = pair.image_shape
    shape = domain.image_shape
    if shape[:2] != (height, width) or shape[2] not in (1, channels):
        raise DataError(f"pair {pair.name}: its {role} loader returned {domain.name} images of "
                        f"{'x'.join(map(str, shape))}, but the pair's row says {height}x{width} "
                        f"with 1 or {channels} channels")
    top = max(int(domain.y_train.max()), int(domain.y_test.max()))
    if domain.num_classes != pair.num_classes or top >= pair.num_classes:
        raise DataError(f"pair {pair.name}: its {role} loader returned {domain.name} with "
                        f"{domain.num_classes} classes (largest label {top}), but the pair's "
                        f"row says {pair.num_classes}")
