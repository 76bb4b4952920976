"""2-D PCA embeddings of source and target features, drawn as one PNG (matplotlib, Agg).

The paper shows t-SNE embeddings of the extractor's features (JMLR 2016, figure 2): before
adaptation the two domains form separate clouds, after DANN they overlap. PCA is linear
and deterministic: it shows the directions of largest variance, where a domain gap that
dominates the features is visible too, but finer cluster structure is not.
"""

from __future__ import annotations

import io

import numpy as np

SOURCE_COLOUR, TARGET_COLOUR = "#1f77b4", "#d62728"


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates [n, 2] on the first two principal axes, explained variance ratios [2])."""
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    x = x - x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x, full_matrices=False)
    total = float(np.sum(singular ** 2)) or 1.0
    ratios = singular[:2] ** 2 / total
    coords = x @ vt[:2].T
    # SVD signs are arbitrary: fix them so that reruns draw the same picture.
    signs = np.where(coords[np.argmax(np.abs(coords), axis=0), [0, 1]] < 0, -1.0, 1.0)
    return coords * signs, np.pad(ratios, (0, 2 - len(ratios)))


def figure_png(fig) -> bytes:
    """Renders a matplotlib Figure (no pyplot state) to PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def feature_panels_png(panels: list[dict]) -> bytes:
    """panels: [{"title": str, "source": [n_s, d] features, "target": [n_t, d] features}].
    One PCA per panel, fitted on both domains together; source and target coloured."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(panels), 5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        source, target = panel["source"], panel["target"]
        coords, ratios = pca_2d(np.concatenate([np.reshape(source, (len(source), -1)),
                                                np.reshape(target, (len(target), -1))]))
        ax.scatter(*coords[:len(source)].T, s=4, alpha=0.4, c=SOURCE_COLOUR,
                   label=f"source ({len(source)})", linewidths=0)
        ax.scatter(*coords[len(source):].T, s=4, alpha=0.4, c=TARGET_COLOUR,
                   label=f"target ({len(target)})", linewidths=0)
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel(f"PC1 ({ratios[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({ratios[1]:.0%} of variance)")
        ax.legend(loc="best", markerscale=3, fontsize=8)
    return figure_png(fig)
