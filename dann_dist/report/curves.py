"""curves.png: accuracies, domain accuracy, lambda and learning rate against the step,
one row per adaptation, one line per seed."""

from __future__ import annotations

import math

from dann_dist.report.feature_plots import figure_png
from dann_dist.report.options import NAMES, ORDER, PAPER_TARGET_ACCURACY

STYLE = dict(lw=1.0, alpha=0.8, marker=".", ms=3)


def _series(history: list[dict], key: str) -> list[float]:
    return [e.get(key, math.nan) for e in history]


def _plot_seed(axes, lr_ax, seed: int, history: list[dict], first: bool) -> None:
    """One seed's lines; only the first seed labels its quantities (one legend entry each)."""
    accuracy_ax, domain_ax, lambda_ax = axes
    steps = [e["step"] for e in history]

    def label(text):
        return text if first else None

    accuracy_ax.plot(steps, _series(history, "source_accuracy"), color="C0",
                     label=label("source test"), **STYLE)
    accuracy_ax.plot(steps, _series(history, "target_accuracy"), color="C3",
                     label=label("target test"), **STYLE)
    if any("source_val_accuracy" in e for e in history):
        accuracy_ax.plot(steps, _series(history, "source_val_accuracy"), color="C0", ls="--",
                         label=label("source validation"), **STYLE)
    domain_ax.plot(steps, _series(history, "domain_accuracy"), label=f"seed {seed}", **STYLE)
    lambda_ax.plot(steps, _series(history, "lambda"), color="C4", label=label("lambda"), **STYLE)
    lr_ax.plot(steps, _series(history, "learning_rate"), color="C1", ls="--",
               label=label("learning rate"), **STYLE)


def _decorate(axes, lr_ax, adaptation: str) -> None:
    accuracy_ax, domain_ax, lambda_ax = axes
    name = NAMES[adaptation]
    if adaptation in PAPER_TARGET_ACCURACY:   # the methods the DANN paper ran
        accuracy_ax.axhline(PAPER_TARGET_ACCURACY[adaptation], color="C3", lw=0.8, ls=":",
                            label="paper, target")
    accuracy_ax.set(title=f"{name}: accuracy", xlabel="step", ylabel="accuracy", ylim=(0, 1.02))
    domain_ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    domain_ax.set(title=f"{name}: domain accuracy (discriminator)", xlabel="step",
                  ylim=(0, 1.02))
    lambda_ax.set(title=f"{name}: lambda and learning rate", xlabel="step", ylabel="lambda")
    lr_ax.set_ylabel("learning rate")
    for ax in axes:
        ax.grid(alpha=0.3)
    accuracy_ax.legend(loc="lower right", fontsize=8)
    domain_ax.legend(loc="lower right", fontsize=8)
    lambda_ax.legend(loc="center left", fontsize=8)
    lr_ax.legend(loc="center right", fontsize=8)


def curves_png(runs: dict) -> bytes:
    """One row per adaptation: accuracies, domain accuracy, lambda and learning rate."""
    # Imported here, not at the top: matplotlib's start-up is paid only when drawing.
    from matplotlib.figure import Figure

    adaptations = [a for a in ORDER if any(k[0] == a and r["result"] for k, r in runs.items())]
    fig = Figure(figsize=(16, 3.4 * max(1, len(adaptations))), layout="constrained")
    axes = fig.subplots(max(1, len(adaptations)), 3, squeeze=False)
    for row, adaptation in zip(axes, adaptations):
        lr_ax = row[2].twinx()
        histories = [(seed, run["result"]["history"]) for (a, seed), run in sorted(runs.items())
                     if a == adaptation and run["result"] and run["result"]["history"]]
        for index, (seed, history) in enumerate(histories):
            _plot_seed(row, lr_ax, seed, history, first=index == 0)
        _decorate(row, lr_ax, adaptation)
    return figure_png(fig)
