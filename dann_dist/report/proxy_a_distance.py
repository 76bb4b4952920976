"""Proxy A-distance between two sets of features (Ben-David et al., 2007; used in Ganin
et al., JMLR 2016, section 5.1.5, to compare source-only and DANN representations).

A linear classifier learns to tell the two domains apart on half of the examples; its
error `err` on the other half gives PAD = 2 (1 - 2 err): about 0 when the domains are
indistinguishable to a linear probe, 2 when they are perfectly separable. The paper uses
a linear SVM; here it is an L2-regularised logistic regression on standardised features
(numpy, truncated Newton), whose L2 strength is chosen on a validation quarter of the
training half. `err` is the balanced error (mean of the two domains' error rates, so a
constant guess scores 0.5 whatever the set sizes), clipped to <= 0.5.
"""

from __future__ import annotations

import functools

import numpy as np

DEFAULT_L2_GRID = (1.0, 0.1, 0.01, 0.001)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _conjugate_gradient(hess_vec, b: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """Approximately solves H x = b for a positive definite H given as a product."""
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = float(r @ r)
    stop = tol * tol * rr
    for _ in range(max_iter):
        if rr <= stop:
            break
        hp = hess_vec(p)
        alpha = rr / float(p @ hp)
        x += alpha * p
        r -= alpha * hp
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def _hessian_vector_product(xb: np.ndarray, curvature: np.ndarray, penalty: np.ndarray,
                            v: np.ndarray) -> np.ndarray:
    """H v for the log-loss Hessian at the current weights (curvature = p (1 - p) / n);
    the tiny ridge keeps H positive definite along the unpenalised bias."""
    return xb.T @ (curvature * (xb @ v)) + (penalty + 1e-10) * v


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, w0: np.ndarray | None = None,
                 max_iter: int = 100, tol: float = 1e-9) -> np.ndarray:
    """Minimises mean log-loss + l2/2 |w|^2 over weights and an unpenalised bias (the
    last entry of the returned vector) by truncated Newton steps (Hessian-vector products
    with conjugate gradients, so no d x d matrix is formed) and a backtracking line
    search. x: [n, d], y in {0, 1}."""
    n, d = x.shape
    xb = np.concatenate([x, np.ones((n, 1))], axis=1)
    penalty = np.full(d + 1, float(l2))
    penalty[-1] = 0.0
    w = np.zeros(d + 1) if w0 is None else np.array(w0, np.float64)

    def objective(weights):
        z = xb @ weights
        return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(penalty * weights ** 2))

    f = objective(w)
    for _ in range(max_iter):
        p = _sigmoid(xb @ w)
        grad = xb.T @ (p - y) / n + penalty * w
        # Bound now, not looked up later: each Newton step uses its own curvature.
        hess_vec = functools.partial(_hessian_vector_product, xb, p * (1.0 - p) / n, penalty)
        grad_norm = float(np.sqrt(grad @ grad))
        step = _conjugate_gradient(hess_vec, grad, tol=min(0.5, np.sqrt(grad_norm)),
                                   max_iter=2 * (d + 1))
        decrement = float(grad @ step)
        if decrement / 2 < tol:
            break
        t = 1.0
        while True:  # backtracking (Armijo) line search
            candidate = w - t * step
            f_new = objective(candidate)
            if f_new <= f - 1e-4 * t * decrement or t < 1e-6:
                break
            t *= 0.5
        w, f = candidate, f_new
    return w


def _standardiser(x: np.ndarray):
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-8] = 1.0  # constant features (e.g. dead ReLUs) stay constant: 0
    return lambda a: (a - mean) / std


def balanced_error(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    predicted = (x @ w[:-1] + w[-1]) > 0
    wrong = predicted != y.astype(bool)
    return float(np.mean([wrong[y == label].mean() for label in (0, 1)]))


def _split(n: int, rng: np.random.Generator, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    cut = int(round(n * fraction))
    return perm[:cut], perm[cut:]


def proxy_a_distance(source: np.ndarray, target: np.ndarray, *, seed: int = 0,
                     l2_grid: tuple[float, ...] = DEFAULT_L2_GRID) -> dict:
    """PAD between feature sets source [n_s, ...] and target [n_t, ...] (flattened).
    Returns pad, error (balanced test error after clipping), raw_error, the chosen l2,
    the validation error of each l2, and the train / test sizes."""
    source = np.asarray(source, np.float64).reshape(len(source), -1)
    target = np.asarray(target, np.float64).reshape(len(target), -1)
    if source.shape[1] != target.shape[1]:
        raise ValueError(f"feature sizes differ: {source.shape[1]} vs {target.shape[1]}")
    if min(len(source), len(target)) < 8:
        raise ValueError("proxy A-distance needs at least 8 examples per domain")
    rng = np.random.default_rng(seed)
    # Halves split per domain, so that both halves hold both domains in proportion.
    s_train, s_test = _split(len(source), rng, 0.5)
    t_train, t_test = _split(len(target), rng, 0.5)

    def stack(s_idx, t_idx):
        x = np.concatenate([source[s_idx], target[t_idx]])
        y = np.concatenate([np.zeros(len(s_idx)), np.ones(len(t_idx))])
        return x, y

    # L2 strength: fit on three quarters of the training half, score on the last quarter,
    # strongest penalty first, each fit warm-started from the previous one.
    s_fit, s_val = _split(len(s_train), rng, 0.75)
    t_fit, t_val = _split(len(t_train), rng, 0.75)
    x_fit, y_fit = stack(s_train[s_fit], t_train[t_fit])
    x_val, y_val = stack(s_train[s_val], t_train[t_val])
    scale = _standardiser(x_fit)
    x_fit, x_val = scale(x_fit), scale(x_val)
    validation, w = {}, None
    for l2 in sorted(l2_grid, reverse=True):
        w = fit_logistic(x_fit, y_fit, l2, w0=w)
        validation[l2] = balanced_error(w, x_val, y_val)
    best_l2 = min(validation, key=lambda l2: (validation[l2], -l2))  # tie: stronger penalty

    x_train, y_train = stack(s_train, t_train)
    x_test, y_test = stack(s_test, t_test)
    scale = _standardiser(x_train)
    w = fit_logistic(scale(x_train), y_train, best_l2)
    raw_error = balanced_error(w, scale(x_test), y_test)
    error = min(raw_error, 0.5)
    return {
        "pad": 2.0 * (1.0 - 2.0 * error),
        "error": error,
        "raw_error": raw_error,
        "l2": best_l2,
        "validation_error": {str(k): v for k, v in validation.items()},
        "train_size": int(len(y_train)),
        "test_size": int(len(y_test)),
    }
