"""The range checks behind config.validate: every number finite and in range, the
budget consistent, the directories writable. Each failure names the flag and the fix."""

from __future__ import annotations

import math
import os


class ConfigError(ValueError):
    """A flag value that cannot work; raised before any heavy work starts."""


def steps_for_budget(train_pairs: int, batch_size: int) -> int:
    """The steps that show every replica count the same examples: ceil(pairs / batch)."""
    return -(-train_pairs // batch_size) if batch_size > 0 else 0


# (low, high, high inclusive): every float flag must be finite and in its range. NaN or
# Inf in a schedule constant once trained a NaN model to the end and exited 0.
_FLOAT_RANGES = {
    "learning_rate": (0.0, 10.0, True),      # > 0
    "momentum": (0.0, 1.0, False),
    "ema_momentum": (0.0, 1.0, False),
    "lr_alpha": (0.0, 1e4, True),
    "lr_beta": (0.0, 10.0, True),
    "gamma": (0.0, 1e4, True),
    "lambda_max": (0.0, 100.0, True),
    "domain_loss_weight": (0.0, 100.0, True),  # > 0
    "warmup_fraction": (0.0, 1.0, False),
    "clip_norm": (0.0, 1e6, True),
    "extractor_width": (0.0, 8.0, True),       # > 0
    "target_entropy_weight": (0.0, 100.0, True),
    "vat_source_weight": (0.0, 100.0, True),
    "vat_target_weight": (0.0, 100.0, True),
    "vat_epsilon": (0.0, 1e3, True),           # > 0
    "vat_xi": (0.0, 1e3, True),                # > 0
    "disc_learning_rate": (0.0, 10.0, True),   # 0: --learning_rate
    "disc_momentum": (-1.0, 1.0, False),       # -1: --momentum; checked in validate
    "refine_kl_weight": (0.0, 1e3, True),
}
_POSITIVE_FLOATS = ("learning_rate", "domain_loss_weight", "extractor_width", "vat_epsilon",
                    "vat_xi")


def check_floats(config) -> None:
    for name, (low, high, high_inclusive) in _FLOAT_RANGES.items():
        value = getattr(config, name)
        if not math.isfinite(value):
            raise ConfigError(f"--{name}={value}: must be a finite number.")
        if name in _POSITIVE_FLOATS and value <= low:
            raise ConfigError(f"--{name}={value}: must be > 0.")
        if value < low or value > high or (value == high and not high_inclusive):
            right = "]" if high_inclusive else ")"
            raise ConfigError(f"--{name}={value}: must be in [{low:g}, {high:g}{right}.")


# Upper bounds of integer flags: past them TensorFlow fails deep inside (int32 seeds, int64
# step arithmetic) with a traceback instead of naming the flag.
_INT_MAXIMA = {"seed": 2 ** 31 - 1, "train_steps": 10 ** 9, "train_pairs": 10 ** 12,
               "batch_size": 2 ** 20, "refine_steps": 10 ** 9,
               "refine_teacher_every": 10 ** 9}
# A checkpoint shard's name adds ~60 characters to --model_dir; Linux paths end at 4096.
_MAX_MODEL_DIR = 3800


def check_bounds(config) -> None:
    for name, high in _INT_MAXIMA.items():
        value = getattr(config, name)
        if not 0 <= value <= high:
            raise ConfigError(f"--{name}={value}: must be in [0, {high}].")
    model_dir = os.path.abspath(config.model_dir)
    glob_chars = sorted(set(config.model_dir) & set("[]*?"))
    if glob_chars:
        raise ConfigError(f"--model_dir={config.model_dir}: contains {' '.join(glob_chars)}, "
                          "which TensorFlow reads as a file pattern in checkpoint paths (the run "
                          "could not resume, and old checkpoints would not be deleted): choose "
                          "a directory name without [ ] * ?.")
    if len(model_dir) > _MAX_MODEL_DIR:
        raise ConfigError(f"--model_dir is {len(model_dir)} characters long as an absolute "
                          f"path; at most {_MAX_MODEL_DIR} leave room for the checkpoint files' "
                          "names (paths end at 4096): choose a shorter one.")


def check_budget(config) -> None:
    if config.train_pairs < 0:
        raise ConfigError(f"--train_pairs={config.train_pairs}: must be >= 0.")
    if not config.train_pairs:
        return
    steps = steps_for_budget(config.train_pairs, config.batch_size)
    budget = f"--train_pairs={config.train_pairs} at --batch_size={config.batch_size}"
    if config.train_steps != steps:
        raise ConfigError(f"--train_steps={config.train_steps} disagrees with {budget} "
                          f"({steps} steps): give one of the two.")
    if config.eval_every > steps:
        raise ConfigError(f"{budget} gives {steps} steps, fewer than one evaluation interval "
                          f"(--eval_every={config.eval_every}): lower --eval_every, set it to 0 "
                          "(evaluate at the end only), or raise the budget.")


def check_writable(path: str, flag: str) -> None:
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"{flag}={path}: {existing} exists and is not a directory.")
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"{flag}={path}: {existing} is not writable; choose another directory.")


def check_refinement(config) -> None:
    """--refine_steps belongs to --adaptation=dirtt, which needs it inside the run."""
    if config.adaptation != "dirtt":
        if config.refine_steps:
            raise ConfigError(f"--refine_steps={config.refine_steps} is DIRT-T's refinement "
                              f"phase, but --adaptation={config.adaptation}: use "
                              "--adaptation=dirtt, or --refine_steps=0.")
        return
    if not 0 < config.refine_steps < config.train_steps:
        raise ConfigError(f"--adaptation=dirtt needs 0 < --refine_steps < --train_steps "
                          f"(the last refine_steps steps refine the VADA model), got "
                          f"--refine_steps={config.refine_steps} with --train_steps="
                          f"{config.train_steps}.")
