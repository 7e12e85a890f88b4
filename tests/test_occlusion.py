import math

import numpy as np
import pytest
import tensorflow as tf

from aaa_keras.model.occlusion import (grid_cells, hardest_occlusion, occluded_copies,
                                       top_fraction_mask, true_class_probability)


@pytest.mark.parametrize("height,width", [(8, 4), (16, 8), (7, 5), (9, 13), (4, 4)])
def test_grid_cells_partition_the_map(height, width):
    cells = grid_cells(height, width, 4)
    assert cells.shape == (16, height, width)
    np.testing.assert_array_equal(cells.sum(axis=0), np.ones((height, width)))  # each position in one cell
    assert set(np.unique(cells)) == {0.0, 1.0}


def test_grid_cells_are_rectangles_of_near_equal_size():
    cells = grid_cells(9, 13, 4)
    sizes = cells.sum(axis=(1, 2))
    assert sizes.min() >= 2 * 3 and sizes.max() <= 3 * 4
    for cell in cells:
        rows, cols = np.nonzero(cell)
        assert cell[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def _random_logits_fn(channels, classes, seed=0):
    weights = tf.constant(np.random.default_rng(seed).normal(size=(channels, classes)), tf.float32)

    def logits_fn(features):  # a nonlinear "tail": spatial max then a linear map
        return tf.reduce_max(features, axis=(1, 2)) @ weights
    return logits_fn


@pytest.mark.parametrize("cells_per_call", [16, 4, 1])
def test_batched_hardest_occlusion_equals_brute_force_loop(cells_per_call):
    rng = np.random.default_rng(1)
    features = tf.constant(rng.normal(size=(5, 8, 6, 3)), tf.float32)
    labels = tf.constant(rng.integers(0, 7, 5), tf.int32)
    logits_fn = _random_logits_fn(3, 7)
    m_occ, probabilities, hardest = hardest_occlusion(logits_fn, features, labels, 4, cells_per_call)

    cells = grid_cells(8, 6, 4)
    brute = np.zeros((5, 16), np.float32)
    for k in range(16):  # the reference: one occluded copy at a time
        occluded = features * (1.0 - cells[k])[None, :, :, None]
        brute[:, k] = true_class_probability(logits_fn(occluded), labels).numpy()
    np.testing.assert_allclose(probabilities.numpy(), brute, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(hardest.numpy(), brute.argmin(axis=1))
    np.testing.assert_array_equal(m_occ.numpy()[..., 0], cells[brute.argmin(axis=1)])


def test_occluded_copies_are_sample_major():
    features = tf.ones((2, 4, 4, 1))
    copies = occluded_copies(features, tf.constant(grid_cells(4, 4, 4)))
    assert copies.shape == (32, 4, 4, 1)
    # copy k of sample b zeroes exactly cell k (one position on a 4x4 map)
    assert copies[5].numpy().sum() == 15 and copies[5].numpy()[1, 1, 0] == 0
    assert copies[16 + 5].numpy()[1, 1, 0] == 0


def test_hardest_occlusion_has_no_gradient():
    features = tf.Variable(np.random.default_rng(0).normal(size=(2, 4, 4, 3)), dtype=tf.float32)
    with tf.GradientTape() as tape:
        m_occ, probabilities, _ = hardest_occlusion(_random_logits_fn(3, 4), features,
                                                    tf.constant([0, 1]))
        total = tf.reduce_sum(probabilities) + tf.reduce_sum(m_occ)
    assert tape.gradient(total, features) is None


@pytest.mark.parametrize("height,width", [(8, 4), (7, 5), (16, 8), (3, 1)])
def test_top_fraction_mask_zeros_exactly_a_third(height, width):
    attention = tf.constant(np.random.default_rng(2).normal(size=(4, height, width, 1)), tf.float32)
    mask = top_fraction_mask(attention).numpy()
    k = math.ceil(height * width / 3)
    assert mask.shape == (4, height, width, 1)
    np.testing.assert_array_equal((mask == 0).sum(axis=(1, 2, 3)), [k] * 4)
    for sample in range(4):  # the zeros sit on the highest attention values
        values = attention.numpy()[sample].ravel()
        zeroed = values[mask[sample].ravel() == 0]
        kept = values[mask[sample].ravel() == 1]
        assert zeroed.min() >= kept.max()


def test_top_fraction_mask_breaks_ties_deterministically_by_position():
    attention = tf.zeros((1, 3, 3, 1))  # all tied: the first ceil(9/3) = 3 positions go
    mask = top_fraction_mask(attention).numpy()[0, :, :, 0]
    np.testing.assert_array_equal(mask, [[0, 0, 0], [1, 1, 1], [1, 1, 1]])
    # One clear maximum (flat 4), then four tied values (flat 0, 1, 3, 5): the two lowest go.
    attention = tf.constant([[1, 1, 0], [1, 2, 1], [0, 0, 0]], tf.float32)[None, :, :, None]
    np.testing.assert_array_equal(top_fraction_mask(attention).numpy()[0, :, :, 0],
                                  [[0, 0, 1], [1, 0, 1], [1, 1, 1]])
