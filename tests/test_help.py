"""--help / -h list each command's own flags and exit 0; --helpfull lists every flag."""

import subprocess
import sys

import pytest

from dann_dist import cli

from distributed_helpers import ROOT, env


def _help(command, *args):
    return subprocess.run([sys.executable, "-m", f"dann_dist.{command}", *args], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command, flag, own, usage", [
    ("train", "-h", ["--learning_rate", "--model_dir", "--[no]allow_config_change",
                     "--data_dir"], "Train DANN on MNIST -> MNIST-M"),
    ("train", "--help", ["--train_steps", "--adaptation"], "resumes from the newest checkpoint"),
    ("evaluate", "-h", ["--checkpoint", "--model_dir", "--max_test_examples", "--mnist_path"],
     "Evaluate a trained run"),
    ("report", "-h", ["--report_dir", "--seeds", "--train_flagfile"],
     "The paper's table over several seeds"),
    ("bench", "-h", ["--steps", "--configs", "--[no]baseline"], "Speed benchmark"),
    ("report.choice", "-h", ["--pilots", "--recipes_report", "--guard"],
     "The label-free choice between a study's candidates"),
])
def test_help_lists_the_commands_own_flags_and_exits_0(command, flag, own, usage):
    proc = _help(command, flag)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in own:
        assert f"\n  {name}: " in proc.stdout, name
    assert usage in proc.stdout
    # absl's own flags are left to --helpfull.
    assert "--verbosity" not in proc.stdout and "--helpfull" in proc.stdout


def test_helpfull_lists_every_flag_and_exits_0():
    proc = _help("evaluate", "--helpfull", "--model_dir=ignored")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--checkpoint" in proc.stdout and "--verbosity" in proc.stdout


def test_a_help_flag_after_the_separator_belongs_to_the_trainer():
    assert cli.help_requested(["report", "--seeds=1", "--", "-h"]) == ""
    assert cli.help_requested(["report", "-h", "--", "--x"]) == "short"
    assert cli.help_requested(["train", "--model_dir=d", "--helpfull"]) == "full"
    assert cli.help_requested(["train", "--model_dir=-h-"]) == ""
