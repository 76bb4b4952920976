"""FLOPs of one train step, counted from the models' Conv2D and Dense layers."""

from __future__ import annotations

import math

import keras

from dann_dist.models import DannModels, build_models


def layer_macs(model: keras.Model) -> list[int]:
    """Multiply-accumulates per example of each Conv2D / Dense layer, in order."""
    macs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            out = layer.output.shape
            kernel = layer.kernel.shape
            macs.append(math.prod(out[1:]) * math.prod(kernel[:-1]))
        elif isinstance(layer, keras.layers.Dense):
            macs.append(math.prod(layer.kernel.shape))
    return macs


def analytic_flops(models: DannModels, batch: int) -> dict:
    """FLOPs of one train step on `batch` pairs, counted from the layers: 2 FLOPs per
    multiply-accumulate of every Conv2D and Dense, for the forward pass, the weight
    gradient and the input gradient (none for the extractor's first layer: images need
    no gradient). The extractor and discriminator see 2*batch images, the classifier
    batch. Not counted: bias, activations, pooling, BatchNorm, losses, optimizer updates
    (together a few percent). Both the origin's step and ours do this arithmetic."""
    forward = train = 0
    for model, examples in ((models.extractor, 2 * batch), (models.classifier, batch),
                            (models.discriminator, 2 * batch)):
        macs = layer_macs(model)
        forward += 2 * examples * sum(macs)
        train += 2 * examples * (3 * sum(macs) - (macs[0] if model is models.extractor else 0))
    return {"train_step": train, "forward": forward}


def origin_architecture() -> DannModels:
    """The origin's architecture (BN heads) built through the package: the baseline's
    FLOPs when --configs leaves out `origin`."""
    return build_models("bn", "bn")
