"""Training configuration: one frozen dataclass, its absl flags, and validation.

Every field of `Config` is a flag of the same name (the data flags are registered
by `dann_dist.data.define_flags`). Defaults are the paper's MNIST -> MNIST-M recipe
(Ganin et al., JMLR 2016, section 5.2); `configs/*.cfg` override them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from absl import flags

from dann_dist.config_checks import (
    ConfigError,
    check_bounds,
    check_budget,
    check_floats,
    check_refinement,
    check_writable,
    steps_for_budget,
)
from dann_dist.data.options import DATA_DEFAULTS, DATA_FLAGS, DEFAULT_PAIR, PAIR_HELP
from dann_dist.data.options import define_flags as define_data_flags
from dann_dist.methods import registry

ADAPTATIONS = registry.names()
ADVERSARIAL_LOSSES = ("grl", "flipped_labels")
HEADS = ("paper", "bn")
INPUT_NORMS = ("none", "image", "channel")
AUGMENTATIONS = ("none", "colour")
OPTIMIZERS = ("sgd", "nesterov", "adam")
LR_SCHEDULES = ("annealed", "constant")
LR_SCALINGS = ("none", "linear", "sqrt")
EMA_SCALINGS = ("none", "batch")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("auto", "horovod", "mirrored", "multi_worker", "single")


def _field(default: Any, help_text: str, choices: tuple[str, ...] | None = None):
    return dataclasses.field(default=default, metadata={"help": help_text, "choices": choices})


@dataclasses.dataclass(frozen=True)
class Config:
    # Where things go.
    model_dir: str = _field("runs/dann", "Checkpoints, TensorBoard events and the export. "
                            "Running the same command again resumes from here.")
    # Data (flags registered by dann_dist.data.define_flags).
    data_dir: str = _field(DATA_DEFAULTS["data_dir"], "see dann_dist.data")
    mnist_path: str = _field(DATA_DEFAULTS["mnist_path"], "see dann_dist.data")
    mnist_download: bool = _field(DATA_DEFAULTS["mnist_download"], "see dann_dist.data")
    mnistm_path: str = _field(DATA_DEFAULTS["mnistm_path"], "see dann_dist.data")
    bsds_path: str = _field(DATA_DEFAULTS["bsds_path"], "see dann_dist.data")
    mnistm_seed: int = _field(DATA_DEFAULTS["mnistm_seed"], "see dann_dist.data")
    mnistm_version: int = _field(DATA_DEFAULTS["mnistm_version"], "see dann_dist.data")
    pair: str = _field(DEFAULT_PAIR, PAIR_HELP)

    # What is trained.
    adaptation: str = _field("dann", "The method (dann_dist/methods/): dann: adversarial "
                             "adaptation (the paper); source_only: lambda=0 (the paper's lower "
                             "bound); target_only: train on labelled target (the paper's upper "
                             "bound); cdan: conditional adversarial adaptation with entropy "
                             "weights (Long et al. 2018); vada: DANN + target entropy + "
                             "virtual adversarial training (Shu et al. 2018); dirtt: VADA, then "
                             "--refine_steps of DIRT-T refinement on the target alone (Shu et "
                             "al. 2018).", ADAPTATIONS)
    adversarial_loss: str = _field("grl", "grl: gradient reversal layer (paper); flipped_labels: "
                                   "the extractor minimises the domain loss with swapped domain "
                                   "labels (origin script, GAN-style).", ADVERSARIAL_LOSSES)
    classifier_head: str = _field("paper", "paper: dense 100-100-10; bn: the origin script's "
                                  "BatchNorm/LeakyReLU head.", HEADS)
    discriminator_head: str = _field("paper", "paper: dense 100-1; bn: the origin script's "
                                     "deeper BatchNorm MLP (256-128-64-32-1).", HEADS)
    sync_batchnorm: bool = _field(False, "Synchronise BatchNorm statistics across replicas "
                                  "(tf.distribute backends; Horovod keeps per-rank statistics).")
    # The strong recipe's additions (configs/mnist_mnistm_strong.cfg; results/strong.md).
    input_norm: str = _field("none", "none: pixels minus the training mean (paper); image: "
                             "each image standardised over its pixels and channels (removes "
                             "brightness and contrast); channel: each colour channel of each "
                             "image standardised (instance norm; also removes colour).",
                             INPUT_NORMS)
    extractor_bn: bool = _field(False, "BatchNorm after each convolution of the extractor, "
                                "with statistics over the joint source+target batch (the "
                                "extractor sees both domains in one call).")
    extractor_width: float = _field(1.0, "Multiplies the extractor's 32/48 filters (2: 64/96). "
                                    "Its cost grows about as the square.")
    source_augment: str = _field("none", "none; colour: every source image gets a random "
                                 "contrast and offset per colour channel and is inverted with "
                                 "probability 1/2 (MNIST-M digits are coloured photo patches "
                                 "on photo backgrounds). Keyed by seed and step: the same on "
                                 "every backend.", AUGMENTATIONS)
    target_entropy_weight: float = _field(0.0, "Weight of the mean prediction entropy on the "
                                          "target batch (conditional entropy, as in VADA), "
                                          "ramped with lambda_p; 0: off. Uses no target "
                                          "labels.")
    # VADA's virtual adversarial training (--adaptation=vada; dann_dist/vat.py).
    vat_source_weight: float = _field(1.0, "Weight of the VAT penalty on the source batch.")
    vat_target_weight: float = _field(0.1, "Weight of the VAT penalty on the target batch, "
                                      "ramped with lambda_p like --target_entropy_weight.")
    vat_epsilon: float = _field(3.5, "Radius of VAT's perturbation, an L2 norm over each whole "
                                "input image (3.5 is the radius the VADA authors' code uses "
                                "on instance-normalised 32x32x3 digits).")
    vat_xi: float = _field(1.0, "Finite-difference step of VAT's power iteration (L2 norm per "
                           "image). Not VAT's usual 1e-6: each pixel would move by ~2e-8, "
                           "which bfloat16's first layer (~4e-3 relative) rounds away.")
    # DIRT-T's refinement phase (--adaptation=dirtt; dann_dist/methods/dirtt.py).
    refine_steps: int = _field(0, "--adaptation=dirtt: the last this many of --train_steps "
                               "refine the VADA model on target images alone (conditional "
                               "entropy, target VAT and the teacher's trust region); the "
                               "schedules (learning rate, lambda_p, warm-up) span the steps "
                               "before them. 0 for every other method.")
    refine_kl_weight: float = _field(0.01, "beta of DIRT-T: weight of KL(teacher || model) on "
                                     "the target batch, the trust region that keeps each "
                                     "refinement step near the teacher.")
    refine_teacher_every: int = _field(1000, "Steps between the teacher's updates during "
                                       "refinement: the teacher is the model as it was at the "
                                       "start of refinement and every this many steps after "
                                       "(each trust-region problem is solved approximately "
                                       "with this many steps).")

    # Optimisation (paper: SGD momentum 0.9, mu_p = mu_0 / (1 + alpha p)^beta).
    train_steps: int = _field(12000, "Total optimisation steps; p = step / train_steps. "
                              "Set by --train_pairs instead when that is given.")
    train_pairs: int = _field(0, "Training budget in examples per domain (source/target pairs "
                              "seen): train_steps = ceil(train_pairs / batch_size), so one "
                              "flagfile trains the same recipe on 1 or 64 devices. 0: use "
                              "--train_steps. Giving both is an error.")
    batch_size: int = _field(64, "GLOBAL batch per domain: each step sees batch_size source and "
                             "batch_size target images, split evenly over all replicas.")
    optimizer: str = _field("sgd", "Optimizer of every model: sgd (with --momentum), "
                            "nesterov (SGD with Nesterov momentum), adam.", OPTIMIZERS)
    learning_rate: float = _field(0.01, "mu_0, the initial learning rate.")
    momentum: float = _field(0.9, "SGD momentum.")
    lr_schedule: str = _field("annealed", "annealed: mu_0 / (1 + alpha p)^beta per step; "
                              "constant: mu_0.", LR_SCHEDULES)
    lr_alpha: float = _field(10.0, "alpha of the annealed learning rate.")
    lr_beta: float = _field(0.75, "beta of the annealed learning rate.")
    lr_scaling: str = _field("none", "How mu_0 follows the global batch: none, linear "
                             "(mu_0 * batch_size / lr_base_batch) or sqrt "
                             "(mu_0 * sqrt(batch_size / lr_base_batch)).", LR_SCALINGS)
    lr_base_batch: int = _field(64, "Reference batch for --lr_scaling.")
    warmup_fraction: float = _field(0.0, "Linear learning-rate warm-up from 0 over this "
                                    "fraction of the run (a fraction, so that it covers the "
                                    "same number of examples at every batch size); the "
                                    "schedule (annealed or constant) multiplies it.")
    ema_momentum: float = _field(0.0, "Evaluate and export an exponential moving average of the "
                                 "weights (Polyak averaging) with this momentum, e.g. 0.999; 0: "
                                 "the raw weights. Smooths DANN's step-to-step swings in target "
                                 "accuracy without looking at target labels.")
    clip_norm: float = _field(0.0, "Clip the global norm of the gradient of all three models "
                              "(of the mean loss over the global batch) to this value; 0: off. "
                              "A safety net for large global batches, where a DANN run with "
                              "the sqrt rule diverged to NaN (results/scaling.md).")
    ema_scaling: str = _field("none", "none: --ema_momentum per step as given; batch: "
                              "ema_momentum ** (batch_size / lr_base_batch), so that the average "
                              "spans the same number of examples at every global batch (0.999 "
                              "at 64 is 0.984 at 1024).", EMA_SCALINGS)
    warmup_ramp_steps: int = _field(0, "Linear learning-rate warm-up over this many steps "
                                    "(counted in steps, the same at every batch size); 0: "
                                    "use --warmup_fraction. Giving both is an error.")
    disc_learning_rate: float = _field(0.0, "The adversary's own initial learning rate (two "
                                       "time-scales, as TTUR and DomainBed's DANN); scaled and "
                                       "annealed like --learning_rate. 0: --learning_rate.")
    disc_momentum: float = _field(-1.0, "The adversary's own momentum (sgd/nesterov); -1: "
                                  "--momentum. Positive momentum can hurt in games (Gidel et "
                                  "al. 2019).")
    scale_adversary: bool = _field(True, "Whether --lr_scaling also scales the adversarial "
                                   "path. false: the adversary's learning rate and the "
                                   "reversed gradient (lambda_p / k at learning rate x k) keep "
                                   "their size at --lr_base_batch, while the extractor and "
                                   "classifier step grows with the batch.")
    lambda_ramp_steps: int = _field(0, "The adaptation factor's ramp counted in steps: "
                                    "p = step / lambda_ramp_steps (clipped to 1) in lambda_p; "
                                    "0: p = step / train_steps (the paper).")
    gamma: float = _field(10.0, "gamma of the adaptation factor "
                          "lambda_p = 2/(1+exp(-gamma p)) - 1.")
    lambda_max: float = _field(1.0, "Upper value of lambda_p (the paper uses 1).")
    domain_loss_weight: float = _field(1.0, "Weight of the domain loss, a mean over the "
                                       "2 * batch_size images of both domains, against the "
                                       "label loss, a mean over batch_size source images. "
                                       "2 is the paper's eq. 10 taken literally (the source "
                                       "mean plus the target mean); it trained worse here "
                                       "(results/ablation.md).")

    # Run mechanics.
    seed: int = _field(0, "Seed of weights, shuffles and dropout.")
    strategy: str = _field("auto", "auto: horovod if launched by horovodrun/mpirun, mirrored if "
                           "several GPUs are visible, else single.", STRATEGIES)
    precision: str = _field("auto", "auto: mixed_bfloat16 on a CPU with native bfloat16 "
                            "(avx512_bf16/amx), else float32; mixed_bfloat16 (CPU/TPU/Ampere+); "
                            "mixed_float16 (GPU, with dynamic loss scaling).", PRECISIONS)
    jit_compile: bool = _field(False, "Compile the train step with XLA.")
    deterministic: bool = _field(False, "tf.config.experimental.enable_op_determinism(): "
                                 "bit-identical reruns and resumes, slower.")
    log_every: int = _field(200, "Steps between progress lines and train summaries.")
    eval_every: int = _field(2000, "Steps between evaluations on both test sets "
                             "(0: only at the end).")
    noise_scale_batches: int = _field(8, "At each evaluation, estimate the gradient noise "
                                      "scale B_simple (McCandlish et al. 2018) of the "
                                      "classification path and of the reversed domain gradient "
                                      "from this many batches (two halves of each replica's "
                                      "batch against the global batch; about one train step of "
                                      "compute per batch; training is unaffected). 0: off.")
    eval_batch_size: int = _field(1000, "Batch of the evaluation forward passes.")
    checkpoint_every: int = _field(1000, "Steps between checkpoints.")
    keep_checkpoints: int = _field(3, "How many checkpoints to keep.")
    elastic: bool = _field(False, "Elastic Horovod: run under `horovodrun --min-np/--max-np "
                           "--host-discovery-script` (launch/horovod_elastic.sh); when a process "
                           "dies or hosts come and go, the others roll back to the last commit, "
                           "re-form with the new size and continue. Needs --strategy=horovod|auto.")
    elastic_commit_every: int = _field(50, "With --elastic: steps between commits of the whole "
                                       "training state to memory (also when host changes are "
                                       "checked); a lost process costs at most this many steps.")
    export: bool = _field(True, "Export extractor+classifier as a SavedModel at the end.")
    source_holdout: int = _field(5000, "Hold out the last N MNIST training images as a source "
                                 "validation set (label-free model selection; 0: none).")
    selection_images: int = _field(5000, "Unlabelled target training images on which each "
                                   "evaluation measures prediction entropy (label-free selection).")
    max_train_examples: int = _field(0, "Use only the first N training images of each domain "
                                     "(0: all). For smoke tests.")
    max_test_examples: int = _field(0, "Evaluate on only the first N test images (0: all).")
    allow_config_change: bool = _field(False, "Resume a run although flags that change the "
                                       "model, objective, data or schedule differ from its "
                                       "run.json (a deliberate change; the differences are "
                                       "logged and run.json is rewritten).")
    # Test hooks: Config fields that define_flags() does not register, so they stay out of
    # --help; tests set them on the Config, or register them (define_test_hook_flags).
    debug_nan_step: int = _field(-1, "[test hook] Make the label loss NaN at this optimizer "
                                 "step, to test the NaN guard.")

    @property
    def effective_learning_rate(self) -> float:
        ratio = self.batch_size / self.lr_base_batch
        scale = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[self.lr_scaling]
        return self.learning_rate * scale

    @property
    def effective_ema_momentum(self) -> float:
        if self.ema_scaling == "batch":
            return self.ema_momentum ** (self.batch_size / self.lr_base_batch)
        return self.ema_momentum

    @property
    def warmup_steps(self) -> int:
        if self.warmup_ramp_steps:
            return self.warmup_ramp_steps
        return int(round(self.warmup_fraction * self.schedule_steps))

    @property
    def schedule_steps(self) -> int:
        """The steps the schedules span: all of them, less a refinement phase."""
        return self.train_steps - self.refine_steps


TEST_HOOKS = ("debug_nan_step",)


def define_flags() -> None:
    """Registers one absl flag per Config field (call once, before app.run)."""
    define_data_flags()
    for field in dataclasses.fields(Config):
        if field.name in DATA_FLAGS or field.name in TEST_HOOKS:
            continue
        help_text, choices = field.metadata["help"], field.metadata["choices"]
        if choices:
            flags.DEFINE_enum(field.name, field.default, list(choices), help_text)
        elif field.type == "bool":
            flags.DEFINE_bool(field.name, field.default, help_text)
        elif field.type == "int":
            flags.DEFINE_integer(field.name, field.default, help_text)
        elif field.type == "float":
            flags.DEFINE_float(field.name, field.default, help_text)
        else:
            flags.DEFINE_string(field.name, field.default, help_text)


def define_test_hook_flags() -> None:
    """Registers the test hooks as flags too (tests/run_synthetic.py; never the CLI)."""
    for name in TEST_HOOKS:
        field = next(f for f in dataclasses.fields(Config) if f.name == name)
        flags.DEFINE_integer(name, field.default, field.metadata["help"])


def from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> Config:
    values = {}
    for field in dataclasses.fields(Config):
        if field.name not in flag_values:  # a test hook nobody registered
            continue
        value = flag_values[field.name].value
        values[field.name] = "" if value is None and field.type == "str" else value
    pairs = values["train_pairs"]
    if pairs and flag_values["train_steps"].present:
        raise ConfigError(
            f"--train_steps={values['train_steps']} and --train_pairs={pairs} both set the "
            "length of the run (on the command line or in a flagfile): give one. To count in "
            "steps with a flagfile that sets --train_pairs, add --train_pairs=0.")
    if pairs > 0:
        values["train_steps"] = steps_for_budget(pairs, values["batch_size"])
    return validate(Config(**values))


def validate(config: Config) -> Config:
    """Rejects settings that would fail later, naming the flag and the fix."""
    positive = ("train_steps", "batch_size", "log_every", "eval_batch_size", "checkpoint_every",
                "keep_checkpoints", "lr_base_batch", "elastic_commit_every",
                "refine_teacher_every")
    for name in positive:
        if getattr(config, name) <= 0:
            raise ConfigError(f"--{name}={getattr(config, name)}: must be a positive integer.")
    for name in ("eval_every", "noise_scale_batches", "warmup_ramp_steps", "lambda_ramp_steps",
                 "refine_steps",
                 "max_train_examples", "max_test_examples", "source_holdout", "selection_images"):
        if getattr(config, name) < 0:
            raise ConfigError(f"--{name}={getattr(config, name)}: must be >= 0.")
    check_bounds(config)
    check_floats(config)
    check_budget(config)
    if config.warmup_ramp_steps and config.warmup_fraction:
        raise ConfigError(f"--warmup_ramp_steps={config.warmup_ramp_steps} and "
                          f"--warmup_fraction={config.warmup_fraction} both set the warm-up: "
                          "give one (the other 0).")
    check_refinement(config)
    if config.disc_momentum != -1.0 and not 0.0 <= config.disc_momentum < 1.0:
        raise ConfigError(f"--disc_momentum={config.disc_momentum}: must be in [0, 1), or -1 "
                          "for --momentum.")
    if not config.model_dir:
        raise ConfigError("--model_dir is empty: give a directory for checkpoints and summaries.")
    for field in dataclasses.fields(Config):
        choices = field.metadata["choices"]
        if choices and getattr(config, field.name) not in choices:
            raise ConfigError(f"--{field.name}={getattr(config, field.name)!r}: "
                              f"choose one of {', '.join(choices)}.")
    if config.elastic and config.strategy not in ("horovod", "auto"):
        raise ConfigError(f"--elastic works with Horovod only, not --strategy={config.strategy}: "
                          "use --strategy=horovod (or auto) under horovodrun, see "
                          "launch/horovod_elastic.sh.")
    check_writable(config.model_dir, "--model_dir")
    if config.data_dir:
        check_writable(config.data_dir, "--data_dir")
    for name in ("mnist_path", "mnistm_path", "bsds_path"):
        path = getattr(config, name)
        if path and not os.path.exists(path):
            raise ConfigError(f"--{name}={path}: no such file or directory.")
    return config


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)
