"""BatchNorm statistics outside a plain training step: precise BatchNorm (recomputed over batches
with the final weights), settling a random network, and batch statistics that leave the moving
averages alone (stage 3's occluded pass)."""

from __future__ import annotations

import contextlib

import keras
import numpy as np


def settle_batchnorm(parts, images):
    """Moving statistics := one training-mode pass's batch statistics.

    At initialisation (moving mean 0, variance 1) a randomly initialised
    MobileNetV3 embeds at ~1e-10 and EfficientNet at ~1e-5 in inference mode;
    settled, every layer sees activations of a trained network's scale.
    """
    recompute_batchnorm(parts.network, [images])


def batchnorm_layers(model: keras.Model) -> list:
    """Every BatchNormalization layer of ``model``, nested models included."""
    return [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]


@contextlib.contextmanager
def batch_statistics_only(model: keras.Model):
    """Calls of ``model`` with ``training=True`` inside this block normalise with the batch's own
    statistics and leave every moving mean / variance as it was.

    Keras' BatchNormalization updates ``moving = moving * momentum + batch * (1 - momentum)``,
    reading ``momentum`` when the call is traced; at momentum 1 the update writes back
    ``moving * 1 + batch * 0``, the same value bit for bit (for a finite batch statistic). Stage 3's
    occluded pass uses it (issue 20.3): its statistics are those of occluded features, which
    inference never sees.
    """
    norms = batchnorm_layers(model)
    momenta = [layer.momentum for layer in norms]
    try:
        for layer in norms:
            layer.momentum = 1.0
        yield
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum


def recompute_batchnorm(network: keras.Model, batches) -> float | None:
    """Precise BatchNorm: every BatchNorm's moving mean / variance := the average of its batch
    statistics over ``batches`` (training-mode passes with the current weights), as pycls' and
    Detectron2's ``PreciseBN`` (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).

    The running averages (momentum 0.99) lag ~100 steps behind weights that move fast; a short
    from-scratch run of MobileNetV3 ends with moving variances ~3-10x its batch variances and
    embeds every image identically in inference mode (docs/decisions.md, "Precise BatchNorm").
    Returns the median over channels of old / new moving variance (1.0: the averages were
    right), or None when the network has no BatchNorm or ``batches`` is empty.
    """
    norms = batchnorm_layers(network)
    if not norms:
        return None
    momenta = [layer.momentum for layer in norms]
    before = [np.asarray(layer.moving_variance) for layer in norms]
    count = 0
    try:
        for count, images in enumerate(batches, 1):
            for layer in norms:  # a running average with weight 1/count: the plain mean over batches
                layer.momentum = (count - 1) / count
            network(images, training=True)
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum
    if not count:
        return None
    ratios = np.concatenate([old / np.maximum(np.asarray(layer.moving_variance), 1e-12)
                             for old, layer in zip(before, norms)])
    return float(np.median(ratios))
