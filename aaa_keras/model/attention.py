"""The attention branch of paper 3.2: a few stacked convolutions on ``f`` -> ``M_att``."""

from __future__ import annotations

import keras
from keras import layers


INITIAL_ATTENTION = 0.5
# The branch's width rule (docs/decisions.md, "The attention branch's width follows its input"):
# as many filters as the feature map it reads has channels, at least MIN and at most MAX. MAX is
# the width the paper preset has always used (the paper gives none: "several stacked convolutional
# layers"); ResNet-50's conv3 map has 512 channels, so the paper preset keeps 256.
MIN_ATTENTION_FILTERS = 64
MAX_ATTENTION_FILTERS = 256


def attention_width(feature_channels: int) -> int:
    """Filters of the branch's two 3x3 convolutions for a feature map of ``feature_channels``.

    ``clip(C, 64, 256)``: the branch maps ``f`` to one channel, so it need not be wider than
    ``f``; the floor keeps a thin map (tiny_resnet's conv3 has 32 channels) from a 32-wide
    bottleneck. ``attention_filters`` 0 (every preset's default) means this width, chosen when the
    branch is built on the backbone's feature map (run_dir.build_stage_parts).
    """
    return int(min(MAX_ATTENTION_FILTERS, max(MIN_ATTENTION_FILTERS, int(feature_channels))))


def build_attention_branch(feature_shape, filters: int = 256, seed: int | None = None) -> keras.Model:
    """``f (H, W, C)`` -> ``M_att (H, W, 1)``, linear output, same spatial size as ``f``.

    Two 3x3 conv-BN-ReLU blocks then a 1x1 convolution to one channel (SPEC
    section 2). The attention map is computed in float32 whatever the mixed
    precision policy, because the losses of eq. 2-3 sum over all positions.
    """
    # === Layers ===
    init = lambda offset: keras.initializers.HeNormal(seed=None if seed is None else seed + offset)
    features = keras.Input(feature_shape, name="feature_map")
    x = features
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=init(i),
                          name=f"attention_conv{i}")(x)
        x = layers.BatchNormalization(name=f"attention_bn{i}")(x)
        x = layers.Activation("relu", name=f"attention_relu{i}")(x)
    # Start slightly positive everywhere: eq. 2 only sends gradient through
    # positions where M_att > 0, so a map that starts (or overshoots) below
    # zero everywhere never recovers (docs/decisions.md, "attention collapse").
    attention_map = layers.Conv2D(
        1, 1, kernel_initializer=keras.initializers.RandomNormal(
            stddev=0.01, seed=None if seed is None else seed),
        bias_initializer=keras.initializers.Constant(INITIAL_ATTENTION),
        dtype="float32", name="attention_map")(x)
    # === Functional Model ===
    return keras.Model(features, attention_map, name="attention_branch")
