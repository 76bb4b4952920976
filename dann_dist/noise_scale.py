"""The simple gradient noise scale B_simple = tr(Sigma) / |G|^2, estimated during training.

Sources (facts only):
- McCandlish, Kaplan, Amodei and the OpenAI Dota Team, "An empirical model of large-batch
  training", arXiv:1812.06162 (2018), define B_simple = tr(Sigma) / |G|^2, with G the
  full-data gradient and Sigma the covariance of one example's gradient, and (Appendix A,
  Methods) estimate both terms from the gradient norms at two batch sizes b_s < b_b, using
  E|G_b|^2 = |G|^2 + tr(Sigma) / b for the mean gradient of b i.i.d. examples:
      |G|^2     ~ (b_b |G_b|^2 - b_s |G_s|^2) / (b_b - b_s)
      tr(Sigma) ~ (|G_s|^2 - |G_b|^2) / (1/b_s - 1/b_b)
  Each estimate is unbiased; their ratio is not, and a single step's |G|^2 estimate is
  often negative, so numerator and denominator are averaged separately over steps before
  dividing.
- GPT-NeoX (EleutherAI, megatron/gradient_noise_scale/gradient_noise_scale.py) uses these
  formulas, averages each term with a zero-initialised exponential moving average
  (beta = 0.99) divided by 1 - beta^(i+1), and skips steps with non-finite gradients.

Here: under data parallelism with R replicas of b examples each, G_s is a replica's own
gradient (b_s = b; |G_s|^2 averaged over the replicas, which keeps it unbiased) and G_b the
all-reduced one (b_b = R b). On one device, G_s is each half of the batch's gradient
(b_s = B/2) and G_b their mean (b_b = B). Gradients must be of the *mean* loss over the
batch: a summed loss scales |G_b|^2 by b_b^2 and breaks the identity above.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

DEFAULT_DECAY = 0.99  # GPT-NeoX's beta


@dataclasses.dataclass(frozen=True)
class NoiseEstimate:
    """One two-batch estimate; fields are floats, numpy arrays or TF tensors alike."""

    grad_sq: Any  # |G|^2
    trace_sigma: Any  # tr(Sigma)
    b_simple: Any  # trace_sigma / grad_sq; nan where grad_sq <= 0


def simple_noise_scale(trace_sigma, grad_sq):
    """tr(Sigma) / |G|^2, nan where |G|^2 <= 0 (a noisy estimate can be; no scale then)."""
    if tf.is_tensor(grad_sq) or tf.is_tensor(trace_sigma):
        grad_sq = tf.convert_to_tensor(grad_sq)
        trace_sigma = tf.cast(trace_sigma, grad_sq.dtype)
        positive = grad_sq > 0
        safe = tf.where(positive, grad_sq, tf.ones_like(grad_sq))
        return tf.where(positive, trace_sigma / safe, tf.fill(tf.shape(grad_sq), math.nan))
    grad_sq = np.asarray(grad_sq, dtype=np.float64)
    trace_sigma = np.asarray(trace_sigma, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(grad_sq > 0, trace_sigma / grad_sq, np.nan)
    return ratio if ratio.ndim else float(ratio)


def two_batch_estimate(small_sq_norm, big_sq_norm, b_small: float,
                       b_big: float) -> NoiseEstimate:
    """|G|^2, tr(Sigma) and B_simple from |G_s|^2 at batch b_small and |G_b|^2 at b_big.

    Plain arithmetic on the norms: floats, numpy arrays (one estimate per element) and TF
    tensors (also inside a tf.function) all work."""
    if not b_big > b_small > 0:
        raise ValueError(f"need b_big > b_small > 0, got b_small={b_small}, b_big={b_big}")
    grad_sq = (b_big * big_sq_norm - b_small * small_sq_norm) / (b_big - b_small)
    trace_sigma = (small_sq_norm - big_sq_norm) / (1.0 / b_small - 1.0 / b_big)
    return NoiseEstimate(grad_sq, trace_sigma, simple_noise_scale(trace_sigma, grad_sq))


def _squared_norm(grads: Sequence) -> tf.Tensor:
    # float32 whatever the gradients' dtype: squares of bfloat16/float16 values lose the
    # small difference |G_s|^2 - |G_b|^2 that tr(Sigma) is made of.
    terms = [tf.reduce_sum(tf.square(tf.cast(tf.convert_to_tensor(g), tf.float32)))
             for g in grads if g is not None]
    return tf.add_n(terms) if terms else tf.constant(0.0)


def squared_norms(grads_small_list: Sequence[Sequence], grads_big: Sequence
                  ) -> tuple[tf.Tensor, tf.Tensor]:
    """(mean over k of |G_s,k|^2, |G_b|^2) for one group of variables, as float32 scalars.

    grads_small_list: K small-batch gradients (K replicas, or the two halves of a batch),
    each a list of tensors over the same variables as grads_big, the large-batch gradient.
    None entries (variables outside the group's path) count as zero. Under Horovod a rank
    holds only its own replica's gradient: pass [local_grads] and average the first value
    over the ranks (hvd.allreduce, op=Average) before two_batch_estimate."""
    if not grads_small_list:
        raise ValueError("squared_norms needs at least one small-batch gradient")
    small = tf.add_n([_squared_norm(g) for g in grads_small_list]) / len(grads_small_list)
    return small, _squared_norm(grads_big)


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


class NoiseScaleEMA:
    """Exponential moving averages of the |G|^2 and tr(Sigma) estimates, divided only when
    read: B_simple = EMA(tr Sigma) / EMA(|G|^2). Zero-initialised and bias-corrected
    (divided by 1 - decay^n after n updates, as GPT-NeoX), so the first reading is the first
    estimate. Its state is plain floats (state() / from_state()) for a checkpoint or JSON."""

    def __init__(self, decay: float = DEFAULT_DECAY):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self._grad_sq = 0.0
        self._trace = 0.0
        self._count = 0

    def update(self, grad_sq, trace_sigma) -> bool:
        """Adds one estimate (host scalars or 0-d tensors); a non-finite one is skipped,
        as one overflowing step would otherwise poison the averages for good. Returns
        whether it was used."""
        grad_sq, trace_sigma = float(grad_sq), float(trace_sigma)
        if not (math.isfinite(grad_sq) and math.isfinite(trace_sigma)):
            return False
        self._grad_sq = self.decay * self._grad_sq + (1.0 - self.decay) * grad_sq
        self._trace = self.decay * self._trace + (1.0 - self.decay) * trace_sigma
        self._count += 1
        return True

    def update_estimate(self, estimate: NoiseEstimate) -> bool:
        return self.update(estimate.grad_sq, estimate.trace_sigma)

    def _corrected(self, average: float) -> float:
        if not self._count:
            return math.nan
        return average / (1.0 - self.decay ** self._count)

    @property
    def count(self) -> int:
        return self._count

    @property
    def grad_sq(self) -> float:
        return self._corrected(self._grad_sq)

    @property
    def trace_sigma(self) -> float:
        return self._corrected(self._trace)

    @property
    def b_simple(self) -> float:
        if not self._count:
            return math.nan
        return simple_noise_scale(self.trace_sigma, self.grad_sq)

    def state(self) -> dict[str, float]:
        return {"decay": self.decay, "grad_sq_average": self._grad_sq,
                "trace_sigma_average": self._trace, "count": float(self._count)}

    @classmethod
    def from_state(cls, state: dict) -> NoiseScaleEMA:
        values = [state.get(k) for k in ("decay", "grad_sq_average", "trace_sigma_average",
                                         "count")]
        if not all(_finite(v) for v in values) or float(state["count"]) < 0:
            raise ValueError(f"not a NoiseScaleEMA state: {state}")
        ema = cls(float(state["decay"]))
        ema._grad_sq = float(state["grad_sq_average"])
        ema._trace = float(state["trace_sigma_average"])
        ema._count = int(state["count"])
        return ema
