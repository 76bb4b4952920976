"""The registry of dataset pairs, and load_domains going through it."""

import types

import numpy as np
import pytest

from dann_dist.data import pairs, sample_grid, summary
from dann_dist.data.domain import Domain, make_domain
from dann_dist.data.errors import DataError
from dann_dist.data.load import load_domains

from data_fixtures import tiny_mnist_arrays
from synthetic import SYNTHETIC_PAIR, registered_synthetic_pair, synthetic_pair


def test_the_default_pair_is_the_papers_mnist_to_mnistm():
    pair = pairs.get("mnist_mnistm")
    assert "mnist_mnistm" in pairs.names()
    assert pair.image_shape == (28, 28, 3) and pair.num_classes == 10
    assert dict(pair.paper_target_accuracy) == {"source_only": 0.5225, "dann": 0.7666,
                                                "target_only": 0.9596}
    assert "JMLR 2016" in pair.paper
    assert [(a, acc) for _, a, acc in pair.other_results] == [("dann", 0.8149)]
    with pytest.raises(TypeError):  # shared by the whole process: read-only
        pair.paper_target_accuracy["dann"] = 1.0


def test_an_unknown_pair_names_the_registered_ones():
    with pytest.raises(DataError, match=r"--pair=svhn_mnist: no such dataset pair; "
                                        r"registered pairs: .*mnist_mnistm"):
        pairs.get("svhn_mnist")


def test_objects_without_a_pair_field_get_the_default():
    assert pairs.of(types.SimpleNamespace()).name == "mnist_mnistm"
    assert pairs.of(types.SimpleNamespace(pair="")).name == "mnist_mnistm"


def test_load_domains_returns_a_registered_synthetic_pair():
    with registered_synthetic_pair() as pair:
        assert SYNTHETIC_PAIR in pairs.names()
        source, target = load_domains(types.SimpleNamespace(pair=SYNTHETIC_PAIR))
        assert pair.image_shape == (16, 16, 3) and pair.num_classes == 4
        assert source.x_train.shape[1:] == (16, 16, 1) and target.x_train.shape[1:] == (16, 16, 3)
        assert source.num_classes == target.num_classes == 4
        assert set(source.y_train) == set(target.y_test) == {0, 1, 2, 3}
    assert SYNTHETIC_PAIR not in pairs.names()
    with pytest.raises(DataError, match="no such dataset pair"):
        load_domains(types.SimpleNamespace(pair=SYNTHETIC_PAIR))


def test_load_domains_of_the_default_pair_reads_the_data_options(files, tmp_path):
    """The registry row loads what the data fields name, as load_domains did before it."""
    mnist = tiny_mnist_arrays(n_train=12, n_test=6)
    colour = {k: (np.repeat(v, 3, axis=-1) if k.startswith("x_") else v)
              for k, v in mnist.items()}
    config = types.SimpleNamespace(
        data_dir=str(tmp_path / "data"), mnist_path=str(files.mnist_npz(mnist)),
        mnist_download=False, mnistm_path=str(files.mnistm_npz(colour)), bsds_path="",
        mnistm_seed=42, mnistm_version=1)  # no pair field: the default pair
    source, target = load_domains(config)
    np.testing.assert_array_equal(source.x_train, mnist["x_train"])
    np.testing.assert_array_equal(target.x_test, colour["x_test"])
    assert (source.name, target.name) == ("mnist", "mnistm")


@pytest.mark.parametrize("change,problem", [
    (dict(size=12), r"returned synthetic_tiny_source images of 12x12x1, but the pair's row "
                    r"says 16x16 with 1 or 3 channels"),
    (dict(num_classes=6), r"returned synthetic_tiny_source with 6 classes \(largest label 5\), "
                          r"but the pair's row says 4"),
])
def test_a_row_that_does_not_match_its_loaders_is_refused(change, problem):
    honest = synthetic_pair()
    wrong = synthetic_pair(**change)
    row = pairs.Pair(name=SYNTHETIC_PAIR, description="rows disagree with loaders",
                     load_source=wrong.load_source, load_target=wrong.load_target,
                     image_shape=honest.image_shape, num_classes=honest.num_classes)
    with pairs.registered(row), pytest.raises(DataError, match=f"pair {SYNTHETIC_PAIR}: its "
                                                                f"source loader {problem}"):
        load_domains(types.SimpleNamespace(pair=SYNTHETIC_PAIR))


@pytest.mark.parametrize("change,problem", [
    (dict(name="mnist_mnistm"), "registered already"),
    (dict(name="has space"), "letters, digits and '_'"),
    (dict(image_shape=(16, 16)), r"is not \(H, W, C\)"),
    (dict(num_classes=1), "below 2"),
])
def test_register_refuses_bad_rows(change, problem):
    base = synthetic_pair()
    fields = dict(name=base.name, description="", load_source=base.load_source,
                  load_target=base.load_target, image_shape=base.image_shape,
                  num_classes=base.num_classes)
    with pytest.raises(ValueError, match=problem):
        pairs.register(pairs.Pair(**{**fields, **change}))
    assert SYNTHETIC_PAIR not in pairs.names()


def test_the_default_pair_cannot_be_unregistered():
    with pytest.raises(ValueError, match="default"):
        pairs.unregister("mnist_mnistm")


def test_grid_and_summary_follow_the_domains_shape_and_classes():
    """No 28 or 10 in the sample grid or the summary: a 16x16 pair of 4 classes gets 16 px
    tiles (scaled 2x) in 4 columns, its summary 4 class counts."""
    source, target = synthetic_pair().load_source(None), synthetic_pair().load_target(None, None)
    canvas = sample_grid.grid([source, target], rows_per_domain=1)
    tile, gap = 16 * sample_grid.SCALE, sample_grid.GAP
    assert canvas.shape == (2 * (tile + gap) + gap + 2 * gap, 4 * (tile + gap) + gap, 3)
    first = source.x_train[np.flatnonzero(source.y_train == 0)[0], :, :, 0]
    np.testing.assert_array_equal(canvas[gap:gap + tile:2, gap:gap + tile:2, 0], first)
    text = summary.describe(source)
    assert "16x16x1 uint8" in text and "train class counts: 0:16 1:16 2:16 3:16\n" in text


def test_make_domain_checks_the_shape_and_classes_it_is_given():
    arrays = synthetic_pair().load_target(None, None).arrays()
    domain = make_domain("t", "d", arrays, (16, 16, 3), 4, source="test")
    assert isinstance(domain, Domain) and domain.image_shape == (16, 16, 3)
    with pytest.raises(DataError, match=r"test: train images have shape \[64, 16, 16, 3\], "
                                        r"expected \[N, 28, 28, 3\]"):
        make_domain("t", "d", arrays, (28, 28, 3), 4, source="test")
    with pytest.raises(DataError, match=r"train label #3 is 3, labels must be 0\.\.2"):
        make_domain("t", "d", arrays, (16, 16, 3), 3, source="test")
