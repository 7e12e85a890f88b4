"""The statistics of `cli.py ablate`: bootstrap intervals, paired tests, Holm, verdicts, per-query ranks."""

import numpy as np
import pytest

from aaa_keras.errors import UserError
from aaa_keras.evaluation.ablation_stats import (bootstrap_means, holm, judge_claims, mean_interval,
                                                 paired_difference, per_query_matrix, verdict)
from aaa_keras.evaluation.rank import evaluate_rank, evaluate_rank_per_query


def planted(difference, seeds=5, queries=400, seed_sd=1.0, query_sd=8.0, noise_sd=3.0, rng_seed=0):
    """Two paired (seeds, queries) arrays whose population mean difference is ``difference``.

    Each query has its own difficulty (shared by both configurations and every
    seed), each seed its own offset, and the effect varies by seed and query
    around ``difference``; the expected value of a[s, q] - b[s, q] is exactly
    ``difference``.
    """
    rng = np.random.default_rng(rng_seed)
    query_level = rng.normal(50, query_sd, queries)
    seed_level = rng.normal(0, seed_sd, (seeds, 1))
    b = query_level + seed_level + rng.normal(0, noise_sd, (seeds, queries))
    effect = difference + rng.normal(0, 1.0, (seeds, 1)) + rng.normal(0, 2.0, queries)
    a = b + effect + rng.normal(0, noise_sd, (seeds, queries))
    return a, b


def test_holm_equals_a_hand_computed_case():
    # sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> max(0.06, 0.04)
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    np.testing.assert_allclose(holm([0.02]), [0.02])  # one test: unchanged


def test_holm_rejects_bad_p_values():
    with pytest.raises(UserError, match="p-values"):
        holm([0.1, 1.5])


@pytest.mark.parametrize("design", ["crossed", "nested"])
def test_interval_of_a_planted_difference_covers_the_truth(design):
    hits = 0
    for trial in range(20):
        a, b = planted(2.0, rng_seed=trial)
        result = paired_difference(a, b, n_boot=1000, seed=trial, design=design)
        assert result["low"] < result["mean"] < result["high"]
        hits += result["low"] <= 2.0 <= result["high"]
    # A 95 % interval; with 5 seeds the percentile bootstrap is somewhat narrow, so ask for 80 %.
    assert hits >= 16, hits


def test_interval_shrinks_with_more_queries_and_a_mean_interval_is_centered():
    small = mean_interval(planted(0.0, queries=50)[0], n_boot=2000)
    large = mean_interval(planted(0.0, queries=2000)[0], n_boot=2000)
    assert (large["high"] - large["low"]) < (small["high"] - small["low"])
    values = planted(0.0)[0]
    result = mean_interval(values, n_boot=2000)
    assert result["mean"] == pytest.approx(values.mean())
    assert result["low"] < result["mean"] < result["high"]
    assert result["num_seeds"] == 5 and result["num_queries"] == 400


def test_bootstrap_replicates_are_reproducible_and_exact_on_constants():
    values = planted(0.0, seeds=3, queries=30)[0]
    np.testing.assert_array_equal(bootstrap_means(values, 100, seed=3), bootstrap_means(values, 100, seed=3))
    np.testing.assert_allclose(bootstrap_means(np.full((3, 7), 4.0), 50), 4.0)


def test_crossed_bootstrap_keeps_the_shared_query_noise():
    # Queries differ a lot, seeds not at all: the crossed design must see the query spread
    # (the same queries are in every seed); the nested one averages it over seeds.
    rng = np.random.default_rng(0)
    values = np.tile(rng.normal(0, 10, 200), (8, 1))
    crossed = bootstrap_means(values, 2000, design="crossed").std()
    nested = bootstrap_means(values, 2000, design="nested").std()
    assert crossed == pytest.approx(10 / np.sqrt(200), rel=0.15)
    assert nested < crossed / 2


def test_a_clear_improvement_holds_and_a_reversed_one_is_reversed():
    good_a, good_b = planted(3.0, rng_seed=1)
    bad_a, bad_b = planted(-3.0, rng_seed=2)
    null_a, null_b = planted(0.0, rng_seed=3, query_sd=8.0, noise_sd=6.0)
    data = {
        "aaa": {"euclidean": {"mAP": good_a}}, "base": {"euclidean": {"mAP": good_b}},
        "ft": {"euclidean": {"mAP": bad_a}}, "noft": {"euclidean": {"mAP": bad_b}},
        "x": {"euclidean": {"mAP": null_a}}, "y": {"euclidean": {"mAP": null_b}},
    }
    claims = [("AAA > baseline", "aaa", "base"), ("fine-tuning > without", "ft", "noft"),
              ("x > y", "x", "y"), ("missing > base", "nowhere", "base")]
    rows = {r["claim"]: r for r in judge_claims(claims, data, "mAP", "euclidean", n_boot=2000)}
    assert set(rows) == {"AAA > baseline", "fine-tuning > without", "x > y"}  # missing skipped
    assert rows["AAA > baseline"]["verdict"] == "holds"
    assert rows["fine-tuning > without"]["verdict"] == "reversed"
    assert rows["fine-tuning > without"]["high"] < 0
    assert rows["x > y"]["verdict"] == "not shown"
    for row in rows.values():  # Holm across the three claims judged
        assert row["p_holm"] >= row["p_value"]
    p = [rows[name]["p_value"] for name in ("AAA > baseline", "fine-tuning > without", "x > y")]
    np.testing.assert_allclose([rows[n]["p_holm"] for n in ("AAA > baseline", "fine-tuning > without",
                                                            "x > y")], holm(p))


def test_identical_configurations_are_not_shown_either_way():
    a, _ = planted(0.0)
    result = paired_difference(a, a.copy(), n_boot=500)
    assert result["mean"] == 0 and result["p_value"] == 1 and result["p_reversed"] == 1
    assert result["wilcoxon_p"] is None
    assert verdict(1.0, 1.0) == "not shown"
    assert verdict(0.01, 1.0) == "holds" and verdict(0.5, 0.01) == "reversed"


def test_mismatched_queries_are_a_user_error():
    with pytest.raises(UserError, match="same seeds and queries"):
        paired_difference(np.zeros((2, 5)), np.zeros((2, 6)))
    with pytest.raises(UserError, match="same length"):
        per_query_matrix([[1, 2, 3], [1, 2]])
    with pytest.raises(UserError, match="design"):
        bootstrap_means(np.zeros((2, 3)), 10, design="flat")


def test_per_query_values_average_to_evaluate_rank():
    rng = np.random.default_rng(0)
    q_pids = np.array([1, 2, 3, 4, 5, -1, 9])
    q_cams = np.array([0, 1, 0, 1, 0, 0, 0])
    g_pids = np.array([1, 1, 2, 3, 3, 4, 5, 0, -1, 9, 2])
    g_cams = np.array([1, 0, 0, 1, 2, 1, 0, 1, 1, 0, 2])
    dist = rng.random((len(q_pids), len(g_pids))).astype(np.float32)
    summary = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=2)
    per_query = evaluate_rank_per_query(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=2)
    # query 3 (pid 4, cam 1): its only gallery match is in cam 1 -> skipped; pid 5 cam 0 likewise;
    # the junk query (pid -1) and pid 9 (same camera only) too.
    np.testing.assert_array_equal(per_query["query_index"], [0, 1, 2])
    assert summary["num_valid"] == 3
    assert per_query["average_precision"].mean() == pytest.approx(summary["mAP"])
    assert per_query["inverse_penalty"].mean() == pytest.approx(summary["mINP"])
    assert np.mean(per_query["first_rank"] == 1) == pytest.approx(summary["cmc"][0])


def test_seeds_needed_gives_the_planned_power_by_the_exact_noncentral_t():
    """At the returned n the exact power of the one-sided paired t-test is about 80 %; at
    half of n it is well below, and no noise needs the minimum of two seeds."""
    from scipy import stats

    from aaa_keras.evaluation.ablation_stats import seeds_needed

    def power(n, sd, delta=1.0, alpha=0.05):
        critical = stats.t.ppf(1 - alpha, n - 1)
        return 1 - stats.nct.cdf(critical, n - 1, delta * np.sqrt(n) / sd)

    for sd in (0.7, 1.5, 3.0):
        n = seeds_needed(sd)
        assert 0.78 <= power(n, sd) and power(max(2, n // 2), sd) < 0.7
    assert seeds_needed(0.0) == 2
    assert seeds_needed(1.0) < seeds_needed(2.0) < seeds_needed(4.0)
    with pytest.raises(UserError):
        seeds_needed(1.0, delta=0.0)


def test_seed_spread_measures_the_paired_and_unpaired_spread_of_planted_runs():
    """Two configurations share a large per-seed offset (the stage-1 checkpoint): their own
    spread is large, the spread of their paired difference is only the planted small one."""
    from aaa_keras.evaluation.ablation_stats import seed_spread

    rng = np.random.default_rng(3)
    seeds, queries = 6, 50
    shared = rng.normal(0, 5.0, (seeds, 1))  # what a seed's stage-1 weights do to every query
    extra = np.array([[0.5], [-0.5], [1.0], [-1.0], [0.0], [0.0]])  # the paired difference, planted
    base = 40 + shared + rng.normal(0, 1, (1, queries))
    data = {"baseline": {"euclidean": {"mAP": base}},
            "aaa_conv3": {"euclidean": {"mAP": base + 2.0 + extra}}}
    spread = seed_spread(data, [("AAA > baseline", "aaa_conv3", "baseline")], "euclidean")
    row = spread["claims"][0]
    assert row["paired_sd"] == pytest.approx(np.std(extra, ddof=1))
    assert spread["configs"]["baseline"]["sd"] == pytest.approx(np.std(shared, ddof=1))
    assert row["unpaired_sd"] > 5 * row["paired_sd"]
    assert row["seeds_needed"] >= 2
