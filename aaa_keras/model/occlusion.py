"""Occlusion of feature maps: the 4x4 grid search of paper 3.2 and the top-third mask of 3.3.

Stage 3 ranks positions by one of three scores (``--mask``): the attention
map ``M_att`` (AAA-Net), the feature response (paper Table 4, "without
fine-tuning": the channel mean of ``f``) or uniform noise (the random-third
control).

Shapes: ``f`` is ``(B, H, W, C)``; masks and attention maps are ``(B, H, W, 1)``.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf


def grid_cells(height: int, width: int, grid_size: int = 4) -> np.ndarray:
    """Indicator maps of the ``grid_size**2`` non-overlapping cells, ``(K, H, W)`` float32.

    Cell boundaries are ``floor(i * H / grid)``, so uneven sizes are spread
    evenly and the cells partition the map exactly. On maps smaller than the
    grid some cells are empty; occluding an empty cell changes nothing.
    """
    rows = [i * height // grid_size for i in range(grid_size + 1)]
    cols = [j * width // grid_size for j in range(grid_size + 1)]
    cells = np.zeros((grid_size * grid_size, height, width), np.float32)
    for i in range(grid_size):
        for j in range(grid_size):
            cells[i * grid_size + j, rows[i]:rows[i + 1], cols[j]:cols[j + 1]] = 1.0
    return cells


def true_class_probability(logits, labels):
    """``softmax(logits)[y]`` per row, in float32."""
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    return tf.gather(probabilities, tf.cast(labels, tf.int32), axis=-1, batch_dims=1)


def occluded_copies(features, cells):
    """``(B, H, W, C)`` x ``(K, H, W)`` -> the K occluded copies, ``(B*K, H, W, C)`` sample-major."""
    keep = tf.cast(1.0 - cells, features.dtype)[None, :, :, :, None]  # (1, K, H, W, 1)
    copies = features[:, None] * keep  # (B, K, H, W, C)
    shape = tf.shape(features)
    return tf.reshape(copies, tf.concat([[-1], shape[1:]], axis=0))


def hardest_occlusion(logits_fn, features, labels, grid_size: int = 4, cells_per_call: int | None = None):
    """The hardest grid occlusion of paper Algorithm 1 (lines 1-4), with no gradient.

    All ``grid_size**2`` occluded copies of ``features`` go through
    ``logits_fn`` (the frozen tail) in one batched call; with
    ``cells_per_call`` < K they go in K / cells_per_call calls of that many
    cells each (a memory knob, never a loop per cell).

    Returns ``(m_occ, cell_probabilities, hardest_cell)``: the target map
    ``M_occ`` ``(B, H, W, 1)`` (1 inside cell ``k*``), the true-class
    probability of every occluded copy ``(B, K)``, and ``k* = argmin_k p_k``
    ``(B,)`` (the first cell on ties).
    """
    features = tf.stop_gradient(features)
    height, width = features.shape[1], features.shape[2]
    cells = tf.constant(grid_cells(height, width, grid_size))
    num_cells = grid_size * grid_size
    per_call = cells_per_call or num_cells
    batch = tf.shape(features)[0]
    probabilities = []
    for start in range(0, num_cells, per_call):  # one iteration unless memory-limited
        group = cells[start:start + per_call]
        logits = logits_fn(occluded_copies(features, group))
        group_labels = tf.repeat(labels, group.shape[0])
        p = true_class_probability(logits, group_labels)
        probabilities.append(tf.reshape(p, (batch, group.shape[0])))
    cell_probabilities = tf.concat(probabilities, axis=1)  # (B, K)
    hardest_cell = tf.argmin(cell_probabilities, axis=1, output_type=tf.int32)
    m_occ = tf.gather(cells, hardest_cell)[..., None]  # (B, H, W, 1)
    return tf.stop_gradient(m_occ), tf.stop_gradient(cell_probabilities), hardest_cell


def occlusion_target_where(logits_fn, features, labels, needed, reading: str = "bce",
                           grid_size: int = 4, cells_per_call: int | None = None):
    """``M_occ`` of eq. 2 for the samples where ``needed`` is true, zeros elsewhere, no gradient.

    The grid search (:func:`hardest_occlusion`) runs on the ``needed`` samples
    only (one gather, possibly of none), so its cost scales with their
    number; their targets are those of a search over the whole batch (the
    tail runs in inference mode: a sample's copies do not depend on the
    others). Stage 3 passes the open gates of eq. 4: the target of a closed
    gate is multiplied by 0 (docs/decisions.md, "Stage 3's grid search only
    where the gate is open").

    Returns ``(m_occ (B, H, W, 1), cell_probabilities (B, K))``; the rows of
    samples not ``needed`` are 0 in both.
    """
    features = tf.stop_gradient(features)
    height, width = features.shape[1], features.shape[2]
    rows = tf.where(tf.cast(needed, tf.bool))  # (n, 1), int64
    index = rows[:, 0]
    cell_probabilities, hardest_cell = hardest_occlusion(
        logits_fn, tf.gather(features, index), tf.gather(labels, index), grid_size, cells_per_call)[1:]
    target = occlusion_target(reading, cell_probabilities, hardest_cell, height, width, grid_size)
    batch = tf.shape(features, out_type=tf.int64)[0]
    m_occ = tf.scatter_nd(rows, target, tf.stack([batch, height, width, 1]))
    probabilities = tf.scatter_nd(rows, cell_probabilities,
                                  tf.stack([batch, tf.cast(tf.shape(cell_probabilities)[1], tf.int64)]))
    return tf.stop_gradient(m_occ), tf.stop_gradient(probabilities)


def sample_open_gates(gate, count: int, seed):
    """At most ``count`` of the open gates, drawn uniformly without replacement, and their weights.

    Returns ``(drawn, weight)``, both ``(B,)`` float32: ``drawn`` is 1 for the drawn samples,
    ``weight`` is ``drawn / P(drawn)`` with ``P(drawn) = min(1, count / open)``, so that
    ``E[weight] = gate`` for every sample and a loss term multiplied by ``weight`` has, in
    expectation, the gradient of the same term multiplied by the gate (stage 3's sampled search,
    ``--adversarial-targets sampled``; docs/decisions.md). With ``open <= count`` every open gate
    is drawn with weight 1: ``weight == gate`` exactly. ``seed``: a ``keras.random.SeedGenerator``
    (a fresh draw per call) or an int. Per replica under ``tf.distribute``.
    """
    import keras

    gate = tf.cast(gate, tf.float32)
    batch = tf.shape(gate)[0]
    keys = tf.where(gate > 0, keras.random.uniform(tf.shape(gate), seed=seed), -1.0)  # open gates first
    chosen = tf.math.top_k(keys, k=tf.minimum(count, batch), sorted=False).indices
    drawn = tf.reduce_sum(tf.one_hot(chosen, batch, dtype=tf.float32), axis=0) * gate
    probability = tf.minimum(1.0, float(count) / tf.maximum(tf.reduce_sum(gate), 1.0))
    return tf.stop_gradient(drawn), tf.stop_gradient(drawn / probability)


def top_fraction_mask(attention_map, fraction: float = 1.0 / 3.0):
    """The 0-1 mask ``B`` of paper 3.3 / Algorithm 2 line 1, with no gradient.

    0 at the ``ceil(fraction * H * W)`` positions of highest attention per
    sample, 1 elsewhere. Ties go to the lower flat index (``tf.math.top_k`` is
    stable), so the mask is deterministic.
    """
    height, width = attention_map.shape[1], attention_map.shape[2]
    positions = height * width
    k = math.ceil(fraction * positions)
    flat = tf.reshape(tf.cast(attention_map, tf.float32), (-1, positions))
    top = tf.math.top_k(flat, k=k, sorted=False).indices  # (B, k)
    occluded = tf.reduce_sum(tf.one_hot(top, positions, dtype=tf.float32), axis=1)  # (B, HW)
    mask = tf.reshape(1.0 - occluded, (-1, height, width, 1))
    return tf.stop_gradient(mask)


def feature_response(features):
    """The channel mean of ``f``, ``(B, H, W, 1)`` float32: Table 4's "highest response"."""
    return tf.reduce_mean(tf.cast(features, tf.float32), axis=-1, keepdims=True)


def smooth_noise(uniform_grid, uniform_fine, height: int, width: int):
    """Scores whose top third is a random third of the map in regions, not scattered positions.

    ``uniform_grid`` ``(B, g, g, 1)`` noise is resized (bilinear) to ``H x W``,
    and a 1e-3 share of ``uniform_fine`` ``(B, H, W, 1)`` breaks ties. Its top
    third has exactly the stage-3 mask's size and, like an attention mask,
    covers blobs: scattered single positions would act like dropout, which a
    network shrugs off (or even profits from), so they are no fair control.
    """
    coarse = tf.image.resize(tf.cast(uniform_grid, tf.float32), (height, width), method="bilinear")
    return coarse + 1e-3 * tf.cast(uniform_fine, tf.float32)


def random_scores(features, seed, grid_size: int = 4):
    """Random scores with the shape of an attention map (:func:`smooth_noise`), for ``--mask random``.

    ``seed`` is a ``keras.random.SeedGenerator`` (a fresh draw per call) or an int.
    """
    import keras

    batch = tf.shape(features)[0]
    height, width = features.shape[1], features.shape[2]
    grid = keras.random.uniform(tf.stack([batch, grid_size, grid_size, 1]), seed=seed)
    fine = keras.random.uniform(tf.stack([batch, height, width, 1]), seed=seed)
    return smooth_noise(grid, fine, height, width)


def occlusion_target(reading: str, cell_probabilities, hardest_cell, height: int, width: int,
                     grid_size: int = 4):
    """The target ``M_occ`` ``(B, H, W, 1)`` of eq. 2, with no gradient.

    ``l1`` / ``bce``: 1 inside the hardest cell ``k*``, 0 elsewhere (paper
    Algorithm 1, line 4). ``soft``: every cell ``k`` gets
    ``(max_j p_j - p_k) / (max_j p_j - min_j p_j)``, 1 at ``k*`` and 0 at the
    cell whose occlusion hurts least, so the map is taught the order of all
    cells (the probability drop, relative to the least harmful occlusion).
    """
    cells = tf.constant(grid_cells(height, width, grid_size))
    if reading == "soft":
        p = tf.cast(cell_probabilities, tf.float32)
        highest = tf.reduce_max(p, axis=1, keepdims=True)
        spread = highest - tf.reduce_min(p, axis=1, keepdims=True)
        weights = tf.math.divide_no_nan(highest - p, spread)  # (B, K); all 0 if no cell matters
        target = tf.einsum("bk,khw->bhw", weights, cells)[..., None]
    else:
        target = tf.gather(cells, hardest_cell)[..., None]
    return tf.stop_gradient(target)
