"""The attention diagnostics (hit rate, argmax agreement, rank correlation, efficacy, liveness)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from aaa_keras.model.attention import build_attention_branch
from aaa_keras.model.backbone import build_parts
from aaa_keras.model.diagnostics import _random_masks, attention_diagnostics, summarize
from aaa_keras.model.occlusion import grid_cells

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(3)
    parts = build_parts(NUM_CLASSES, (64, 32), "tiny_resnet", "conv3", dropout=0.5)
    attention = build_attention_branch(parts.stem.output.shape[1:], filters=8, seed=0)
    # small logits: a random network's softmax saturates to 0 or 1 in float32, where the order of
    # the 16 cell probabilities (the rank correlation) would be rounding noise
    classifier = parts.tail.get_layer("classifier")
    kernel, bias = classifier.get_weights()
    classifier.set_weights([kernel * 0.1, bias])
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (6, 64, 32, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, 6).astype(np.int32)
    return parts, attention, images, labels


def _probability(parts, features, label):
    logits = parts.tail(features[None], training=False)[1].numpy()[0].astype(np.float64)
    e = np.exp(logits - logits.max())
    return e[label] / e.sum()


def _slow_reference(parts, attention, images, labels, draws, seed):
    """Every diagnostic by loops over images and cells, in numpy where possible."""
    features = parts.stem(images, training=False).numpy()
    maps = attention(features, training=False).numpy()[..., 0]
    _, height, width, _ = features.shape
    cells = grid_cells(height, width)
    randoms = _random_masks((len(images), height, width), 1 / 3, draws, seed)[..., 0]
    k = math.ceil(height * width / 3)
    hits, agree, corr, p_fulls, p_masks, p_randoms = [], [], [], [], [], []
    for i, (f, label) in enumerate(zip(features, labels)):
        p_full = _probability(parts, f, label)
        p_cells = np.array([_probability(parts, f * (1 - c)[..., None], label) for c in cells])
        hardest = int(np.argmin(p_cells))
        order = np.argsort(-maps[i].ravel(), kind="stable")[:k]
        mask = np.ones(height * width)
        mask[order] = 0
        mask = mask.reshape(height, width)
        hits.append(((1 - mask) * cells[hardest]).sum() / cells[hardest].sum())
        means = np.array([maps[i][c > 0].mean() for c in cells])
        agree.append(np.argmax(means) == hardest)
        corr.append(stats.spearmanr(means, p_full - p_cells).statistic)
        p_fulls.append(p_full)
        p_masks.append(_probability(parts, f * mask[..., None], label))
        p_randoms.append(np.mean([_probability(parts, f * r[i][..., None], label) for r in randoms]))
    return {"hit_rate": np.mean(hits), "argmax_agreement": np.mean(agree),
            "cell_rank_correlation": np.mean(corr), "p_full": np.mean(p_fulls),
            "p_masked": np.mean(p_masks), "p_random": np.mean(p_randoms)}


def test_diagnostics_equal_a_slow_numpy_computation(tiny):
    parts, attention, images, labels = tiny
    fast = attention_diagnostics(parts.stem, parts.tail, images, labels, "attention", attention,
                                 random_draws=3, seed=5, chunk=4)
    slow = _slow_reference(parts, attention, images, labels, draws=3, seed=5)
    # the fast path draws the random thirds per chunk (seed + start): the probabilities under them
    # are compared with one chunk of every image below
    for name in ("hit_rate", "argmax_agreement", "cell_rank_correlation"):
        assert fast[name] == pytest.approx(slow[name], rel=1e-4, abs=1e-6), name
    whole = attention_diagnostics(parts.stem, parts.tail, images, labels, "attention", attention,
                                  random_draws=3, seed=5, chunk=len(images))
    for name in ("p_full", "p_masked", "p_random"):
        assert whole[name] == pytest.approx(slow[name], rel=1e-4), name
    drop_random = slow["p_full"] - slow["p_random"]
    if drop_random > 1e-6:
        assert whole["efficacy"] == pytest.approx((slow["p_full"] - slow["p_masked"]) / drop_random, rel=1e-3)
    else:  # random thirds do not hurt this random network: efficacy is undefined
        assert np.isnan(whole["efficacy"])
    assert 0.0 <= fast["positive_fraction"] <= 1.0 and fast["attention_spread"] > 0


def test_liveness_does_not_change_batchnorm_statistics(tiny):
    parts, attention, images, labels = tiny
    before = [v.numpy().copy() for v in attention.non_trainable_variables]
    attention_diagnostics(parts.stem, parts.tail, images, labels, "attention", attention, random_draws=1)
    for old, variable in zip(before, attention.non_trainable_variables):
        np.testing.assert_array_equal(old, variable.numpy())


def test_summary_of_a_perfect_and_an_inverted_map():
    cells = grid_cells(8, 8)  # 16 cells of 2x2
    probabilities = np.linspace(0.1, 0.8, 16)[None, :]  # cell 0 hurts most when occluded
    p_full = np.array([0.9])
    perfect = np.einsum("k,khw->hw", -probabilities[0], cells)[None]  # high where occlusion hurts
    mask = np.ones((1, 8, 8))
    mask[0, :3, :] = 0  # occludes rows 0-2: cells 0-3 fully (cell 0 = the hardest)
    p_random = np.full((4, 1), 0.7)
    result = summarize(perfect, mask, probabilities, [0], p_full, np.array([0.5]), p_random, cells)
    assert result["hit_rate"] == 1.0 and result["argmax_agreement"] == 1.0
    assert result["cell_rank_correlation"] == pytest.approx(1.0)
    assert result["efficacy"] == pytest.approx((0.9 - 0.5) / (0.9 - 0.7))
    inverted = summarize(-perfect, 1 - mask, probabilities, [0], p_full, np.array([0.85]), p_random,
                         cells)
    assert inverted["hit_rate"] == 0.0 and inverted["argmax_agreement"] == 0.0
    assert inverted["cell_rank_correlation"] == pytest.approx(-1.0)
    assert inverted["efficacy"] < 1.0


def _planted_parts(num_classes, size, planted):
    """A frozen stem (identity) and a tail that reads identity only from grid cell ``planted``."""
    from aaa_keras.model.backbone import ReidParts

    cell = grid_cells(size, size)[planted][..., None]
    images = keras.Input((size, size, num_classes), name="image")
    stem = keras.Model(images, keras.layers.Identity(name="features")(images), name="stem")
    features = keras.Input((size, size, num_classes), name="feature_map")
    only_cell = keras.layers.Rescaling(1.0, name="only_cell")(features) * keras.ops.convert_to_tensor(cell)
    pooled = keras.layers.GlobalAveragePooling2D(name="embedding")(only_cell)
    dropped = keras.layers.Dropout(0.0, name="dropout")(pooled)
    classifier = keras.layers.Dense(num_classes, name="classifier", use_bias=False,
                                    kernel_initializer=keras.initializers.Identity(gain=200.0))
    tail = keras.Model(features, [pooled, classifier(dropped)], name="tail")
    network = keras.Model(images, tail(stem(images)), name="network")
    return ReidParts(stem=stem, tail=tail, network=network, embedding_dim=num_classes)


def _planted_data(num_classes, size, planted, count, seed):
    """Noise everywhere; the class signature (its channel raised) only inside cell ``planted``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, count).astype(np.int32)
    data = rng.uniform(0, 1, (count, size, size, num_classes)).astype(np.float32)
    cell = grid_cells(size, size)[planted] > 0
    for x, label in zip(data, labels):
        x[cell, label] += 3.0
    return data, labels


def test_on_a_planted_problem_the_default_loss_finds_the_cell():
    """Only one cell carries the identity: stage 2 with the default loss must point at it."""
    from aaa_keras.config import RunConfig
    from aaa_keras.model.stages import AttentionAssignmentModel

    num_classes, size, planted = 4, 8, 5
    keras.utils.set_random_seed(0)
    parts = _planted_parts(num_classes, size, planted)
    attention = build_attention_branch((size, size, num_classes), filters=8, seed=0)
    model = AttentionAssignmentModel(parts, attention, attention_loss=RunConfig().attention_loss)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    data, labels = _planted_data(num_classes, size, planted, 256, seed=1)
    probe, probe_labels = _planted_data(num_classes, size, planted, 32, seed=2)
    model.fit(data, labels, batch_size=16, epochs=6, verbose=0, shuffle=False)
    result = attention_diagnostics(parts.stem, parts.tail, probe, probe_labels, "attention", attention)
    assert result["hit_rate"] >= 0.9, result
    assert result["argmax_agreement"] >= 0.9, result
    assert result["efficacy"] > 1.5, result
