"""evaluate_rank: hand-computed cases, a slow per-query reference, input errors; the match / junk
rule (protocol_masks, match_kind) and the top-k ranking (ranked_gallery) shared with the pictures."""

import numpy as np
import pytest

from aaa_keras.errors import UserError
from aaa_keras.evaluation import evaluate_rank
from aaa_keras.evaluation.rank import (evaluate_rank_per_query, match_kind, protocol_masks, ranked_gallery,
                                       stable_argsort_rows)


def reference_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Straightforward per-query loop (torchreid's eval_market1501 with a stable sort)."""
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(len(q_pids)):
        order = np.argsort(distmat[q], kind="stable")
        remove = ((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])) | (
            g_pids[order] == -1
        )
        raw_cmc = (g_pids[order] == q_pids[q])[~remove].astype(np.int64)
        if not raw_cmc.any():
            continue
        cumulative = raw_cmc.cumsum()
        last_match = np.max(np.where(raw_cmc == 1)[0])
        all_inp.append(cumulative[last_match] / (last_match + 1.0))
        hit = (cumulative > 0).astype(np.float64)
        if len(hit) < max_rank:  # gallery shorter than max_rank: stay at the last value
            hit = np.concatenate([hit, np.full(max_rank - len(hit), hit[-1])])
        all_cmc.append(hit[:max_rank])
        precision = cumulative / np.arange(1, len(raw_cmc) + 1)
        all_ap.append((precision * raw_cmc).sum() / raw_cmc.sum())
    return {
        "cmc": np.mean(all_cmc, axis=0),
        "mAP": float(np.mean(all_ap)),
        "mINP": float(np.mean(all_inp)),
        "num_valid": len(all_ap),
    }


def one_query(distances, g_pids, g_camids, q_pid=1, q_camid=0, **kwargs):
    return evaluate_rank(
        np.asarray([distances], dtype=np.float32),
        np.array([q_pid]),
        np.asarray(g_pids),
        np.array([q_camid]),
        np.asarray(g_camids),
        **kwargs,
    )


# === Hand-computed cases ===


def test_matches_at_ranks_three_and_four():
    # Sorted: pid2 (0.1), pid3 (0.2), pid1 (0.3), pid1 (0.5).
    result = one_query([0.3, 0.1, 0.5, 0.2], g_pids=[1, 2, 1, 3], g_camids=[1, 1, 1, 2], max_rank=5)
    np.testing.assert_allclose(result["cmc"], [0, 0, 1, 1, 1])
    assert result["mAP"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert result["mINP"] == pytest.approx(2 / 4)
    assert result["num_valid"] == 1


def test_ties_are_resolved_by_gallery_order():
    wrong_first = one_query([0.5, 0.5, 0.5], g_pids=[2, 1, 1], g_camids=[1, 1, 1], max_rank=3)
    assert wrong_first["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert wrong_first["mINP"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(wrong_first["cmc"], [0, 1, 1])

    right_first = one_query([0.5, 0.5, 0.5], g_pids=[1, 2, 1], g_camids=[1, 1, 1], max_rank=3)
    assert right_first["mAP"] == pytest.approx((1 + 2 / 3) / 2)
    np.testing.assert_allclose(right_first["cmc"], [1, 1, 1])


def test_junk_is_removed():
    result = one_query([0.1, 0.2], g_pids=[-1, 1], g_camids=[1, 1], max_rank=2)
    np.testing.assert_allclose(result["cmc"], [1, 1])
    assert result["mAP"] == pytest.approx(1.0)
    assert result["mINP"] == pytest.approx(1.0)


def test_same_person_same_camera_is_removed():
    result = one_query([0.1, 0.2], g_pids=[1, 1], g_camids=[0, 1], max_rank=2)
    assert result["cmc"][0] == 1.0
    assert result["mAP"] == pytest.approx(1.0)


def test_other_person_in_same_camera_stays_as_wrong_match():
    result = one_query([0.1, 0.2], g_pids=[2, 1], g_camids=[0, 1], max_rank=2)
    np.testing.assert_allclose(result["cmc"], [0, 1])
    assert result["mAP"] == pytest.approx(0.5)


def test_distractors_stay_as_wrong_matches():
    result = one_query([0.1, 0.2, 0.3], g_pids=[0, 1, 0], g_camids=[1, 2, 3], max_rank=3)
    np.testing.assert_allclose(result["cmc"], [0, 1, 1])
    assert result["mAP"] == pytest.approx(0.5)
    assert result["mINP"] == pytest.approx(0.5)


def test_query_without_cross_camera_match_is_skipped():
    distmat = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], dtype=np.float32)
    g_pids, g_camids = np.array([1, 2, 2]), np.array([1, 0, 0])
    result = evaluate_rank(distmat, np.array([1, 2]), g_pids, np.array([0, 0]), g_camids, max_rank=3)
    assert result["num_valid"] == 1
    assert result["mAP"] == pytest.approx(1.0)


def test_no_valid_query_raises_user_error():
    distmat = np.array([[0.1, 0.2]], dtype=np.float32)
    with pytest.raises(UserError, match="(?i)no query has a true match in another camera"):
        evaluate_rank(distmat, np.array([1]), np.array([1, -1]), np.array([0]), np.array([0, 1]))


def test_cmc_is_padded_when_max_rank_exceeds_gallery():
    result = one_query([0.3, 0.1, 0.2], g_pids=[1, 2, 1], g_camids=[1, 1, 1], max_rank=10)
    assert len(result["cmc"]) == 10
    np.testing.assert_allclose(result["cmc"], [0, 1, 1, 1, 1, 1, 1, 1, 1, 1])


# === Against the per-query reference on random problems ===


def random_problem(seed, num_query=37, num_gallery=211, num_ids=25, integer_distances=False):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, num_ids, num_query)
    g_pids = rng.integers(-1, num_ids, num_gallery)  # includes junk (-1) and distractors (0)
    q_camids = rng.integers(0, 4, num_query)
    g_camids = rng.integers(0, 4, num_gallery)
    if integer_distances:  # many ties
        distmat = rng.integers(0, 5, (num_query, num_gallery)).astype(np.float32)
    else:
        distmat = rng.random((num_query, num_gallery)).astype(np.float32)
        distmat -= 0.3 * (q_pids[:, None] == g_pids[None, :])
    return distmat, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 1000])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("integer_distances", [False, True])
def test_matches_per_query_reference(seed, chunk_size, integer_distances):
    problem = random_problem(seed, integer_distances=integer_distances)
    expected = reference_evaluate(*problem, max_rank=50)
    result = evaluate_rank(*problem, max_rank=50, chunk_size=chunk_size)
    assert result["num_valid"] == expected["num_valid"]
    np.testing.assert_allclose(result["cmc"], expected["cmc"], atol=1e-12)
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    assert result["mINP"] == pytest.approx(expected["mINP"], abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int16])
def test_matches_reference_for_other_dtypes(dtype):
    distmat, *labels = random_problem(4, integer_distances=dtype == np.int16)
    distmat = distmat.astype(dtype)
    expected = reference_evaluate(distmat, *labels, max_rank=20)
    result = evaluate_rank(distmat, *labels, max_rank=20, chunk_size=5)
    np.testing.assert_allclose(result["cmc"], expected["cmc"], atol=1e-12)
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)


def test_fast_row_argsort_equals_stable_argsort_on_special_values():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(20, 300)).astype(np.float32)
    values[:, ::7] = 0.0
    values[:, ::11] = -0.0
    values[:, ::13] = np.inf
    values[:, ::17] = -np.inf
    values[:, ::19] = np.float32(1e-45)  # subnormal
    values[:, ::23] = -np.float32(1e-45)
    np.testing.assert_array_equal(
        stable_argsort_rows(values), np.argsort(values, axis=1, kind="stable")
    )


def test_matches_reference_when_max_rank_exceeds_gallery():
    problem = random_problem(5, num_query=20, num_gallery=30, num_ids=6)
    expected = reference_evaluate(*problem, max_rank=50)
    result = evaluate_rank(*problem, max_rank=50, chunk_size=7)
    np.testing.assert_allclose(result["cmc"], expected["cmc"], atol=1e-12)


def test_cmc_is_monotone_fractions():
    result = evaluate_rank(*random_problem(3), max_rank=50)
    cmc = result["cmc"]
    assert cmc.shape == (50,)
    assert np.all(np.diff(cmc) >= 0)
    assert 0.0 <= cmc[0] and cmc[-1] <= 1.0
    assert 0.0 <= result["mINP"] <= result["mAP"] <= 1.0
    assert isinstance(result["mAP"], float) and isinstance(result["num_valid"], int)


# === Input errors name the argument ===


@pytest.mark.parametrize(
    "argument, replacement",
    [
        ("q_pids", np.array([1, 2, 3])),
        ("g_pids", np.array([1])),
        ("q_camids", np.array([0])),
        ("g_camids", np.zeros((4, 1), dtype=int)),
    ],
)
def test_shape_mismatch_names_argument(argument, replacement):
    arguments = {
        "distmat": np.zeros((2, 4), dtype=np.float32),
        "q_pids": np.array([1, 2]),
        "g_pids": np.array([1, 2, 1, 2]),
        "q_camids": np.array([0, 0]),
        "g_camids": np.array([1, 1, 1, 1]),
    }
    arguments[argument] = replacement
    with pytest.raises(UserError, match=argument):
        evaluate_rank(**arguments)


def test_bad_distmat_and_parameters_are_named():
    labels = (np.array([1]), np.array([1, 2]), np.array([0]), np.array([1, 1]))
    with pytest.raises(UserError, match="distmat"):
        evaluate_rank(np.zeros(2), *labels)
    with pytest.raises(UserError, match="NaN"):
        evaluate_rank(np.array([[np.nan, 0.0]]), *labels)
    with pytest.raises(UserError, match="max_rank"):
        evaluate_rank(np.zeros((1, 2)), *labels, max_rank=0)
    with pytest.raises(UserError, match="chunk_size"):
        evaluate_rank(np.zeros((1, 2)), *labels, chunk_size=0)
    with pytest.raises(UserError, match="q_pids"):
        evaluate_rank(np.zeros((1, 2)), np.array([1.5]), *labels[1:])


# === The match / junk rule and the top-k ranking ===


def test_match_kind_follows_the_protocol():
    query = {"path": "q.jpg", "pid": 5, "camid": 1}
    assert match_kind(query, {"pid": 5, "camid": 2}) == "match"
    assert match_kind(query, {"pid": 5, "camid": 1}) == "junk"  # same id, same camera
    assert match_kind(query, {"pid": -1, "camid": 2}) == "junk"
    assert match_kind(query, {"pid": 0, "camid": 2}) == "wrong"  # distractor
    assert match_kind(query, {"pid": 7, "camid": 2}) == "wrong"
    assert match_kind(query, {"pid": None, "camid": None}) == "unknown"
    assert match_kind({"path": "x.jpg", "pid": None, "camid": None}, {"pid": 5, "camid": 2}) == "unknown"
    # Unknown cameras are never the query's camera (as before the rule moved here).
    assert match_kind({"pid": 5, "camid": None}, {"pid": 5, "camid": None}) == "match"
    assert match_kind({"pid": None, "camid": None}, {"pid": -1, "camid": 1}) == "junk"


def test_protocol_masks_on_arrays_and_scalars():
    q_pids, q_camids = np.array([[1], [2]]), np.array([[0], [0]])
    g_pids, g_camids = np.array([1, 1, -1, 0, 2]), np.array([0, 1, 1, 1, 2])
    matches, junk = protocol_masks(q_pids, q_camids, g_pids, g_camids)
    np.testing.assert_array_equal(matches, [[0, 1, 0, 0, 0], [0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(junk, [[1, 0, 1, 0, 0], [0, 0, 1, 0, 0]])
    assert tuple(map(bool, protocol_masks(3, 1, 3, 2))) == (True, False)


def test_ranked_gallery_removes_junk_on_a_hand_made_example():
    # Sorted: g4 (0.05, id 1 cam 0: junk), g1 (id 2: wrong), g3 (id -1: junk), g0 (id 1 cam 1: match),
    # g2 (id 1 cam 0: junk).
    args = (np.array([[0.3, 0.1, 0.5, 0.2, 0.05]], np.float32), np.array([1]), np.array([1, 2, 1, -1, 1]),
            np.array([0]), np.array([1, 1, 0, 2, 0]))
    (ranking,) = ranked_gallery(*args)
    np.testing.assert_array_equal(ranking["indices"], [1, 0])
    np.testing.assert_array_equal(ranking["matches"], [False, True])
    assert not ranking["junk"].any()
    np.testing.assert_array_equal(ranked_gallery(*args, top=1)[0]["indices"], [1])
    (kept,) = ranked_gallery(*args, keep_junk=True)
    np.testing.assert_array_equal(kept["indices"], [4, 1, 3, 0, 2])
    np.testing.assert_array_equal(kept["junk"], [True, False, True, False, True])
    np.testing.assert_array_equal(kept["matches"], [False, False, False, True, False])


@pytest.mark.parametrize("integer_distances", [False, True])
def test_ranked_gallery_equals_the_stable_argsort_and_the_per_query_reference(integer_distances):
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(6, integer_distances=integer_distances)
    top = 10
    # keep_junk: what the ranked-list picture showed before (a stable argsort of each row, top 10).
    kept = ranked_gallery(distmat, q_pids, g_pids, q_camids, g_camids, top, keep_junk=True)
    expected = np.argsort(distmat, axis=1, kind="stable")[:, :top]
    np.testing.assert_array_equal([r["indices"] for r in kept], expected)
    removed = ranked_gallery(distmat, q_pids, g_pids, q_camids, g_camids)
    for q, ranking in enumerate(removed):  # the loop of reference_evaluate
        order = np.argsort(distmat[q], kind="stable")
        remove = ((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])) | (g_pids[order] == -1)
        np.testing.assert_array_equal(ranking["indices"], order[~remove])
        np.testing.assert_array_equal(ranking["matches"], (g_pids[order] == q_pids[q])[~remove])
    per_query = evaluate_rank_per_query(distmat, q_pids, g_pids, q_camids, g_camids)
    first = [np.flatnonzero(removed[q]["matches"])[0] + 1 for q in per_query["query_index"]]
    np.testing.assert_array_equal(first, per_query["first_rank"])


def test_ranked_gallery_sorts_nan_last_and_checks_top():
    labels = (np.array([1]), np.array([1, 2, 3]), np.array([0]), np.array([1, 1, 1]))
    (ranking,) = ranked_gallery(np.array([[np.nan, 0.2, 0.1]], np.float32), *labels)
    np.testing.assert_array_equal(ranking["indices"], [2, 1, 0])
    with pytest.raises(UserError, match="top"):
        ranked_gallery(np.zeros((1, 3)), *labels, top=-1)
