"""k-reciprocal re-ranking: the blocked version equals the reference and stays small."""

import tracemalloc

import numpy as np
import pytest

from aaa_keras.errors import UserError
from aaa_keras.evaluation import euclidean_distance, l2_normalize, re_ranking, re_ranking_reference


def clustered_features(seed, num_query, num_gallery, dim, num_ids, noise=0.7):
    """L2-normalised features around identity centres, so neighbour sets overlap."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim)).astype(np.float32)

    def sample(count):
        ids = rng.integers(0, num_ids, count)
        return l2_normalize(centres[ids] + noise * rng.normal(size=(count, dim)).astype(np.float32))

    return sample(num_query), sample(num_gallery)


def reference_from_features(qf, gf, k1, k2, lambda_value):
    return re_ranking_reference(
        euclidean_distance(qf, gf),
        euclidean_distance(qf, qf),
        euclidean_distance(gf, gf),
        k1,
        k2,
        lambda_value,
    )


@pytest.mark.parametrize(
    "seed, num_query, num_gallery, dim, k1, k2, lambda_value, block_size",
    [
        (0, 40, 150, 32, 20, 6, 0.3, None),
        (1, 25, 180, 16, 20, 6, 0.3, 7),
        (2, 60, 120, 64, 10, 3, 0.5, 33),
        (3, 30, 200, 8, 5, 1, 0.3, 3),
        (4, 15, 90, 24, 7, 9, 0.0, 50),
        (5, 50, 160, 12, 20, 6, 1.0, 64),
    ],
)
def test_blocked_equals_reference(seed, num_query, num_gallery, dim, k1, k2, lambda_value, block_size):
    qf, gf = clustered_features(seed, num_query, num_gallery, dim, num_ids=max(3, num_gallery // 8))
    expected = reference_from_features(qf, gf, k1, k2, lambda_value)
    result = re_ranking(qf, gf, k1, k2, lambda_value, block_size=block_size)
    assert result.shape == (num_query, num_gallery)
    assert result.dtype == np.float32
    assert np.abs(result - expected).max() < 1e-5


def test_blocked_equals_reference_with_exact_ties():
    qf, gf = clustered_features(6, 30, 120, 16, num_ids=15, noise=0.5)
    gf[60:80] = gf[40:60]  # duplicated gallery images: equal distances everywhere
    qf[:5] = gf[:5]  # queries identical to gallery images: zero distances
    expected = reference_from_features(qf, gf, 20, 6, 0.3)
    result = re_ranking(qf, gf, block_size=9)
    assert np.abs(result - expected).max() < 1e-5


@pytest.mark.parametrize("block_size", [None, 16])
def test_blocked_equals_reference_when_ties_straddle_every_neighbour_boundary(block_size):
    """Small-integer features: every distance is an exact integer whatever the order of the
    sums, so the many equal distances are exact ties in both implementations, and which of
    the tied images count among the k nearest is decided by index alone (the reference's
    stable argsort). Groups of 30 identical gallery images exceed k1 + 1."""
    rng = np.random.default_rng(11)
    distinct = rng.integers(0, 3, size=(6, 8)).astype(np.float32)
    gf = np.concatenate([np.repeat(distinct, 30, axis=0), rng.integers(0, 3, size=(20, 8))])
    gf = gf[rng.permutation(len(gf))].astype(np.float32)
    qf = rng.integers(0, 3, size=(12, 8)).astype(np.float32)
    expected = reference_from_features(qf, gf, 20, 6, 0.3)
    result = re_ranking(qf, gf, block_size=block_size)
    assert np.abs(result - expected).max() < 1e-5


def test_blocked_equals_reference_when_most_weights_are_not_cached(monkeypatch):
    """With no candidates kept beyond max(k1 + 1, k2), many pairs of the expanded sets R* are
    not among a row's cached distances and are computed from the features instead."""
    from aaa_keras.evaluation import rerank

    monkeypatch.setattr(rerank, "_CANDIDATE_MARGIN", 0)
    computed = []
    pair_distances = rerank._pair_distances
    monkeypatch.setattr(rerank, "_pair_distances",
                        lambda *args: computed.append(len(args[2])) or pair_distances(*args))
    qf, gf = clustered_features(12, 40, 160, 16, num_ids=20)
    expected = reference_from_features(qf, gf, 20, 6, 0.3)
    result = re_ranking(qf, gf, block_size=32)
    assert computed and computed[0] > 100
    assert np.abs(result - expected).max() < 1e-5


def test_reranking_helps_on_clustered_data():
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(30, 32))
    q_ids, g_ids = rng.integers(0, 30, 60), rng.integers(0, 30, 300)
    qf = l2_normalize(centres[q_ids] + 1.2 * rng.normal(size=(60, 32)))
    gf = l2_normalize(centres[g_ids] + 1.2 * rng.normal(size=(300, 32)))

    def top1_accuracy(distances):
        return np.mean(g_ids[np.argmin(distances, axis=1)] == q_ids)

    assert top1_accuracy(re_ranking(qf, gf)) > top1_accuracy(euclidean_distance(qf, gf))


def test_peak_memory_stays_far_below_full_matrices():
    num_query, num_gallery, dim, block_size = 600, 3000, 256, 256
    qf, gf = clustered_features(8, num_query, num_gallery, dim, num_ids=150, noise=1.0)
    num_all = num_query + num_gallery
    # The reference holds at least original_dist, V, V_qe (float32) and
    # initial_rank (int32), (q+g)^2 each, plus an int64 argsort while ranking:
    # 24 (q+g)^2 bytes, 311 MB here. A single float64 (q+g)^2 matrix is
    # 8 (q+g)^2 bytes (104 MB). The blocked version holds the output (7.2 MB),
    # one square distance block of the upper triangle (here all 3600 x 3600 at
    # the default edge of 2048 would be too much, so the test passes 256: 0.25
    # MiB) with its mask, the candidate keys (a few MB), sparse V and a 256-row
    # dense Jaccard chunk: about 30 MB. Bound: half of one float64 (q+g)^2
    # matrix, a sixth of what the reference needs at minimum.
    bound_bytes = 8 * num_all**2 / 2
    tracemalloc.start()
    try:
        result = re_ranking(qf, gf, block_size=block_size)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.shape == (num_query, num_gallery)
    assert np.isfinite(result).all()
    assert peak_bytes < bound_bytes, f"peak {peak_bytes / 2**20:.1f} MiB"


def test_invalid_arguments_are_named():
    qf, gf = clustered_features(9, 5, 10, 4, num_ids=3)
    with pytest.raises(UserError, match="at least 21 images"):
        re_ranking(qf, gf, k1=20)
    with pytest.raises(UserError, match="feature dimension"):
        re_ranking(qf, gf[:, :3], k1=3)
    with pytest.raises(UserError, match="lambda_value"):
        re_ranking(qf, gf, k1=3, lambda_value=2.0)
    with pytest.raises(UserError, match="block_size"):
        re_ranking(qf, gf, k1=3, block_size=0)
    with pytest.raises(UserError, match="g_g_dist"):
        re_ranking_reference(np.zeros((5, 10)), np.zeros((5, 5)), np.zeros((9, 9)), k1=3)
