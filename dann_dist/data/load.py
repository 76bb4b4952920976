"""The two domains a Config asks for: MNIST (source) and the MNIST-M target."""

from __future__ import annotations

from dann_dist.data.domain import Domain
from dann_dist.data.flags import default_data_dir
from dann_dist.data.mnist import load_mnist
from dann_dist.data.mnistm import load_mnistm


def load_domains(config) -> tuple[Domain, Domain]:
    """(source, target) from the data fields of a dann_dist Config (or any object with
    data_dir, mnist_path, mnist_download, mnistm_path, bsds_path, mnistm_seed and
    mnistm_version)."""
    data_dir = config.data_dir or default_data_dir()
    source = load_mnist(data_dir, config.mnist_path or None, config.mnist_download)
    target = load_mnistm(data_dir, source, config.mnistm_path or None,
                         config.bsds_path or None, config.mnistm_seed,
                         version=config.mnistm_version)
    return source, target
