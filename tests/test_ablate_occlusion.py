"""ablate with clean and occluded queries (ablate/occlusion.py, ablate/report.py): verdicts on the
occluded queries, the per-query "loses less to occlusion" claim, the side-by-side report. Planted
per-query values, no training (the end-to-end run is measured in docs, not here)."""

import numpy as np
import pytest

from aaa_keras import ablate
from aaa_keras.ablate import grid

CONFIGS = [v.name for v in grid.select_variants("occlusion")]
NUM_QUERIES = 200


def entry(ap, hits):
    ap = np.clip(ap, 0, 100)
    return {"rank1": float(np.mean(hits) * 100), "mAP": float(ap.mean()), "mINP": float(ap.mean() / 2),
            "num_query": len(ap),
            "per_query": {"query_index": list(range(len(ap))), "first_rank": [1 if h else 3 for h in hits],
                          "ap": ap.round(5).tolist(), "inp": (ap / 2).round(5).tolist()}}


def records(clean_mean, drop, seeds=2, source="dataset"):
    """Runs whose clean AP is ``clean_mean[config]`` and whose occluded AP is that minus ``drop[config]``
    (per query, with query and seed noise); the queries as given are the occluded ones."""
    rng = np.random.default_rng(0)
    hardness = rng.normal(0, 15, NUM_QUERIES)
    runs = []
    for seed in range(seeds):
        for name in CONFIGS:
            clean = clean_mean[name] + hardness + rng.normal(0, 5, NUM_QUERIES)
            occluded = clean - drop[name] + rng.normal(0, 5, NUM_QUERIES)
            sets = {"clean": {"euclidean": entry(clean, clean > 50)},
                    "occluded": {"euclidean": entry(occluded, occluded > 50)}}
            runs.append({"config": name, "seed": seed, "stage": "baseline", "train_seconds": 1.0,
                         "stage1_digest": f"d{seed}", "metrics": sets["occluded"], "query_sets": sets,
                         "occlusion": {"source": source, "seed": None, "mean_fraction": None}})
    return runs


def settings():
    return grid.grid_settings("demo", 1, grid.OCCLUDED_DATA, {})


def results_of(runs):
    return ablate.build_results(runs, settings(), "occlusion", 2, ("euclidean",), 1.0, n_boot=200)


def claim(results, name, measure="mAP"):
    return next(r for r in results["claims"]["euclidean"][measure] if r["claim"] == name)


LOSES_LESS = grid.DROP_CLAIMS[0][0]
CLEAN = dict.fromkeys(CONFIGS, 60.0)


@pytest.fixture(scope="module")
def aaa_drops_less():
    return results_of(records(CLEAN, {**dict.fromkeys(CONFIGS, 25.0), "aaa_conv3": 15.0}))


def test_the_occlusion_table_runs_the_claims_it_names(aaa_drops_less):
    assert set(CONFIGS) == {"baseline", "aaa_conv3", "baseline_random_erasing", "aaa_random_mask",
                            "baseline_2x_epochs", "aaa_pixel", "aaa_pixel_random_mask"}
    judged = {r["claim"] for r in aaa_drops_less["claims"]["euclidean"]["mAP"]}
    assert judged == {"AAA-Net > baseline", "AAA-Net > random erasing", "attention mask > random mask",
                      "attention mask > random mask, pixel space", "pixel > feature occlusion (attention mask)",
                      "AAA-Net > epoch control (baseline for stage 1 + 3's epochs)", LOSES_LESS}


def test_loses_less_holds_when_aaa_net_drops_less_and_is_not_shown_when_equal(aaa_drops_less):
    drop = dict.fromkeys(CONFIGS, 25.0)
    results = aaa_drops_less
    row = claim(results, LOSES_LESS)
    assert row["verdict"] == "holds" and row["mean"] == pytest.approx(10.0, abs=1.5)
    assert claim(results, "AAA-Net > baseline")["verdict"] == "holds"  # on the occluded queries
    summary = results["occlusion"]
    assert summary["drop"]["euclidean"]["aaa_conv3"]["mAP"]["mean"] == pytest.approx(15.0, abs=1.5)
    assert summary["clean"]["euclidean"]["baseline"]["mAP"]["mean"] == pytest.approx(60.0, abs=1.5)

    same = results_of(records(CLEAN, drop))
    assert claim(same, LOSES_LESS)["verdict"] == "not shown"
    assert claim(same, "AAA-Net > baseline")["verdict"] == "not shown"


def test_a_better_clean_result_with_the_same_occluded_result_loses_more():
    """Clean AP higher for AAA-Net, occluded the same: the verdicts are on the occluded queries
    (not shown) and AAA-Net loses more (reversed), so neither reads the clean queries by mistake."""
    clean = {**CLEAN, "aaa_conv3": 70.0}
    drop = {**dict.fromkeys(CONFIGS, 20.0), "aaa_conv3": 30.0}
    results = results_of(records(clean, drop))
    assert claim(results, "AAA-Net > baseline")["verdict"] == "not shown"
    assert claim(results, LOSES_LESS)["verdict"] == "reversed"


def test_report_shows_clean_and_occluded_side_by_side_and_names_the_baselines(aaa_drops_less):
    results = aaa_drops_less
    text = ablate.report_markdown(results, "python cli.py ablate --data builtin:occluded --table occlusion")
    assert "Occlusion: clean and occluded queries" in text
    assert "| configuration | clean Rank-1 (%) | clean mAP (%) | occluded Rank-1 (%) | occluded mAP (%) |" in text
    assert LOSES_LESS in text and "occluded queries" in text
    assert "baseline: random erasing in stage 1 off" in text
    assert "baseline_random_erasing: random erasing in stage 1 on" in text
    assert "clean twins" in text


def test_a_grid_without_occluded_queries_is_reported_as_before():
    runs = [{k: v for k, v in r.items() if k not in ("query_sets", "occlusion")}
            for r in records(CLEAN, dict.fromkeys(CONFIGS, 20.0))]
    results = results_of(runs)
    assert "occlusion" not in results
    assert LOSES_LESS not in {r["claim"] for r in results["claims"]["euclidean"]["mAP"]}
    assert "Occlusion: clean" not in ablate.report_markdown(results)


def test_the_grid_settings_keep_earlier_grids_and_know_where_a_pair_comes_from(tmp_path):
    from aaa_keras.ablate.run import _has_query_pair

    assert "occlude_queries" not in grid.grid_settings("demo", 1, grid.ABLATE_DATA, {})
    assert grid.grid_settings("demo", 1, grid.ABLATE_DATA, {}, occlude_queries=3)["occlude_queries"] == 3
    assert _has_query_pair(grid.OCCLUDED_DATA, None) and _has_query_pair(grid.ABLATE_DATA, 0)
    assert not _has_query_pair(grid.ABLATE_DATA, None) and not _has_query_pair(str(tmp_path), None)
    (tmp_path / "query_clean").mkdir()
    assert _has_query_pair(str(tmp_path), None)


def test_the_occlusion_table_without_occluded_queries_is_refused_before_training(tmp_path, tiny_data):
    from aaa_keras.errors import UserError

    with pytest.raises(UserError, match="--occlude-queries"):
        ablate.run_grid(str(tmp_path / "grid"), table="occlusion", seeds=1, epochs=1, data=tiny_data)
    assert not (tmp_path / "grid").exists()


@pytest.mark.slow
def test_a_tiny_grid_with_occluded_queries_end_to_end(tmp_path, tiny_data):
    """run_grid --occlude-queries on the tiny data: both query sets per run, the drop claim judged,
    and the occluded per-query mAP equal to `evaluate --occlude-queries`' for the same run."""
    from aaa_keras.evaluation.run import evaluate_run

    tiny = dict(backbone="tiny_resnet", batch_size=8, steps_per_epoch=2, image_height=64, image_width=32,
                attention_filters=16, diagnostic_images=0)
    lines = []
    results = ablate.run_grid(str(tmp_path / "grid"), seeds=2, epochs=1, data=tiny_data, overrides=tiny,
                              progress=lines.append, n_boot=200, configs=["baseline", "aaa_conv3"],
                              occlude_queries=5)
    assert all(set(r["query_sets"]) == {"clean", "occluded"} for r in results["runs"])
    assert results["occlusion"]["source"] == "occlude-queries" and results["occlusion"]["seed"] == 5
    assert LOSES_LESS in {r["claim"] for r in results["claims"]["euclidean"]["mAP"]}
    assert "occluded queries" in lines[1]
    record = next(r for r in results["runs"] if r["seed"] == 1 and r["config"] == "aaa_conv3")
    expected = evaluate_run(str(tmp_path / "grid" / "seed1" / "aaa_conv3"), "adversarial", log=lambda *_: None,
                            occlude_queries=5)["occlusion"]
    for which in ("clean", "occluded"):
        assert record["query_sets"][which]["euclidean"]["mAP"] == pytest.approx(
            expected[which]["euclidean"]["mAP"], abs=1e-4)


@pytest.mark.parametrize("kind", ["builtin", "directory"])
def test_occlude_queries_on_already_occluded_data_is_refused_before_training(kind, tmp_path, monkeypatch):
    """`ablate --data builtin:occluded --occlude-queries N` (or a directory with query_clean/): the
    one-line refusal of evaluate, raised by run_grid before any run trains."""
    from aaa_keras.ablate import run as ablate_run
    from aaa_keras.errors import UserError

    def no_training(*args, **kwargs):
        raise AssertionError("run_variant called: a configuration trained before the refusal")
    monkeypatch.setattr(ablate_run, "run_variant", no_training)
    data = "builtin:occluded"
    if kind == "directory":
        data = str(tmp_path / "data")
        for name in ("bounding_box_train", "bounding_box_test", "query", "query_clean"):
            (tmp_path / "data" / name).mkdir(parents=True)
    with pytest.raises(UserError, match="already occluded") as error:
        ablate_run.run_grid(str(tmp_path / "out"), seeds=1, epochs=1, data=data, configs=["baseline"],
                            occlude_queries=0, progress=lambda m: None)
    assert "\n" not in str(error.value) and data in str(error.value)


def test_configs_bring_the_runs_they_copy_a_stage_from_in_training_order():
    """--configs aaa_pixel alone also trains the baseline (stage 1) and aaa_conv3 (stage 2), first."""
    from aaa_keras.ablate.run import plan_variants

    assert [v.name for v in plan_variants("occlusion", ["aaa_pixel"])] == ["baseline", "aaa_conv3", "aaa_pixel"]
    assert [v.name for v in plan_variants("occlusion", ["aaa_pixel_random_mask"])] == [
        "baseline", "aaa_pixel_random_mask"]
    assert [v.name for v in plan_variants("controls", None)] == [v.name for v in grid.select_variants("controls")]


@pytest.mark.slow
def test_pixel_variants_share_stage_2_with_aaa_conv3_and_are_judged(tmp_path, tiny_data):
    """The pixel-space pair on the tiny data with occluded queries: aaa_pixel's stage 2 is aaa_conv3's
    (same weights), it trained stage 3 in pixel space, and both pixel claims are judged."""
    import json

    from aaa_keras.run_dir import load_trained

    tiny = dict(backbone="tiny_resnet", batch_size=8, steps_per_epoch=2, image_height=64, image_width=32,
                attention_filters=16, diagnostic_images=0)
    results = ablate.run_grid(str(tmp_path / "grid"), seeds=1, epochs=1, data=tiny_data, overrides=tiny,
                              progress=lambda *_: None, n_boot=200,
                              configs=["aaa_pixel", "aaa_pixel_random_mask"], occlude_queries=3)
    assert [r["config"] for r in results["runs"]] == ["baseline", "aaa_conv3", "aaa_pixel", "aaa_pixel_random_mask"]
    trained = {r["config"]: r["trained"] for r in results["runs"]}
    assert trained["aaa_pixel"] == ["adversarial"]  # stage 2 copied, not trained again
    seed0 = tmp_path / "grid" / "seed0"
    pixel, feature = (load_trained(str(seed0 / name), "attention").attention for name in ("aaa_pixel", "aaa_conv3"))
    for a, b in zip(pixel.weights, feature.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for name in ("aaa_pixel", "aaa_pixel_random_mask"):
        done = json.loads((seed0 / name / "adversarial" / "done.json").read_text())
        assert done["settings"]["occlusion_space"] == "pixel"
    claims = {r["claim"] for r in results["claims"]["euclidean"]["mAP"]}
    assert {"attention mask > random mask, pixel space", "pixel > feature occlusion (attention mask)"} <= claims


def test_an_occluded_grid_writes_its_own_blocks_beside_the_reference_grids(aaa_drops_less, tmp_path):
    """--write README.md / docs/results.md from a builtin:occluded grid: its own ablate:occluded blocks;
    the builtin:ablate grid's blocks (same paper recipe) are left as they are."""
    from aaa_keras.ablate import report

    summary_begin, summary_end = report.markers("ablate-summary")
    readme = tmp_path / "README.md"
    readme.write_text(f"# R\n\n{summary_begin}\nreference grid\n{summary_end}\n")
    results_doc = tmp_path / "results.md"
    results_doc.write_text(f"# Results\n\n{report.BEGIN}\nreference grid\n{report.END}\n")
    results = {**aaa_drops_less, "machine": "m", "wall_seconds": 1.0}
    (tmp_path / "grid").mkdir()
    report.write_report(results, str(tmp_path / "grid"), [str(readme), str(results_doc)])
    for path, kind in ((readme, "ablate-summary"), (results_doc, "ablate")):
        text = path.read_text()
        assert "reference grid" in text, path
        begin = report.markers(kind, "occluded")[0]
        assert text.count(begin) == 1 and "aaa_conv3" not in text.split(begin)[0], path
    assert (tmp_path / "ablation_claims_occluded.png").is_file()
    summary = readme.read_text().split(report.markers("ablate-summary", "occluded")[0])[1]
    assert "| configuration | clean Rank-1 (%) | clean mAP (%) | occluded Rank-1 (%) | occluded mAP (%) |" in summary
