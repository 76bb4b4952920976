"""MNIST -> MNIST-M, the paper's digits pair: labelled MNIST digits as the source, the same
digits blended into colour photo crops as the target (Ganin et al., JMLR 2016, 5.2.2).

The loaders of the registry row "mnist_mnistm" (pairs.py). Each takes the data options (a
Config, or parsed data flags: data_dir, mnist_path, mnist_download, mnistm_path,
bsds_path, mnistm_seed, mnistm_version); see mnist.py and mnistm.py for the sources.
"""

from __future__ import annotations

from dann_dist.data.domain import Domain
from dann_dist.data.mnist import NUM_CLASSES, load_mnist
from dann_dist.data.mnistm import IMAGE_SHAPE, load_mnistm
from dann_dist.data.options import data_dir

DESCRIPTION = ("MNIST (labelled source) -> MNIST-M (target: MNIST digits blended into colour "
               "photo crops; generated unless --mnistm_path gives the published set)")
# The models see RGB: MNIST's gray digits are repeated over three channels.
MODEL_IMAGE_SHAPE = IMAGE_SHAPE
CLASSES = NUM_CLASSES


def load_source(options) -> Domain:
    return load_mnist(data_dir(options), options.mnist_path or None, options.mnist_download)


def load_target(options, source: Domain) -> Domain:
    # MNIST-M is built from (or labelled by) the source's digits, hence the source.
    return load_mnistm(data_dir(options), source, options.mnistm_path or None,
                       options.bsds_path or None, options.mnistm_seed,
                       version=options.mnistm_version)
