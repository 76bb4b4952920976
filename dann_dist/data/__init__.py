"""Data sources for DANN: MNIST (labelled source) and MNIST-M (unlabelled target).

Importing this package defines no flags and touches no disk; see
`python -m dann_dist.data --help` for where the data come from.
"""

from dann_dist.data.domain import Domain
from dann_dist.data.errors import DataError
from dann_dist.data.flags import define_flags
from dann_dist.data.mnist import load_mnist
from dann_dist.data.mnistm import load_mnistm

__all__ = ["Domain", "DataError", "define_flags", "load_mnist", "load_mnistm"]
