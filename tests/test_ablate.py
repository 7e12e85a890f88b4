"""`cli.py ablate`: a 2-configuration x 2-seed grid with tiny settings (resume, pairing, outputs)."""

import hashlib
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from aaa_keras import ablate
from aaa_keras.errors import UserError

TINY = dict(backbone="tiny_resnet", batch_size=8, steps_per_epoch=2, image_height=64, image_width=32,
            attention_filters=16, diagnostic_images=0)
CONFIGS = ["baseline", "aaa_no_finetune"]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_tiny(out, data, lines, **kwargs):
    options = dict(seeds=2, epochs=1, data=data, overrides=TINY, progress=lines.append, n_boot=300,
                   configs=CONFIGS)
    options.update(kwargs)
    return ablate.run_grid(str(out), **options)


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("ablate") / "grid"
    lines = []
    results = run_tiny(out, tiny_data, lines)
    return out, results, lines


def test_every_configuration_of_a_seed_starts_from_the_same_stage1_weights(grid):
    out, results, _ = grid
    for seed in (0, 1):
        files = {name: sha256(out / f"seed{seed}" / name / "baseline" / "network.weights.h5")
                 for name in CONFIGS}
        assert len(set(files.values())) == 1, files
        digests = {r["config"]: r["stage1_digest"] for r in results["runs"] if r["seed"] == seed}
        assert len(set(digests.values())) == 1, digests
    # ... and the seeds are different trainings (the checksum can tell them apart)
    assert (sha256(out / "seed0" / "baseline" / "baseline" / "network.weights.h5")
            != sha256(out / "seed1" / "baseline" / "baseline" / "network.weights.h5"))
    trained = {(r["seed"], r["config"]): r["trained"] for r in results["runs"]}
    assert trained[(0, "aaa_no_finetune")] == ["adversarial"]  # stage 1 copied, not retrained
    assert results["stage1_shared_within_seed"] is True


def test_outputs_hold_every_run_per_query_and_the_tables(grid, tmp_path):
    out, results, lines = grid
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == 4
    run = saved["runs"][0]
    per_query = run["metrics"]["euclidean"]["per_query"]
    assert len(per_query["ap"]) == run["metrics"]["euclidean"]["num_query"] > 0
    assert np.mean(per_query["ap"]) == pytest.approx(run["metrics"]["euclidean"]["mAP"], abs=1e-3)
    entry = saved["summary"]["euclidean"]["aaa_no_finetune"]["mAP"]
    assert entry["low"] <= entry["mean"] <= entry["high"]
    assert len(entry["seed_means"]) == 2
    text = (out / "results.md").read_text()
    assert "Table 4: with and without fine-tuning" in text and "Per seed" in text
    assert len([line for line in lines if line.startswith("[")]) == 4
    assert "ETA" in lines[1]


def test_per_query_evaluation_agrees_with_evaluate_run(grid):
    from aaa_keras.evaluation.run import evaluate_run

    out, results, _ = grid
    record = next(r for r in results["runs"] if r["seed"] == 1 and r["config"] == "aaa_no_finetune")
    expected = evaluate_run(str(out / "seed1" / "aaa_no_finetune"), "adversarial", log=lambda *_: None)
    for measure in ("rank1", "mAP", "mINP"):
        assert record["metrics"]["euclidean"][measure] == pytest.approx(expected["euclidean"][measure],
                                                                          abs=1e-4)


def test_another_occlusion_point_gets_the_same_stage1_network(grid, tmp_path):
    from aaa_keras.config import load_config
    from aaa_keras.run_dir import load_trained

    out, _, _ = grid
    target = tmp_path / "conv5"
    ablate._stage1_from_baseline(str(out), 0, str(target), "conv5", log=lambda *_: None)
    assert load_config(str(target)).occlude_after == "conv5"
    assert ablate.stage1_digest(str(target)) == ablate.stage1_digest(str(out / "seed0" / "baseline"))
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 32, 3)).astype("float32")
    moved = load_trained(str(target), "baseline").parts
    original = load_trained(str(out / "seed0" / "baseline"), "baseline").parts
    np.testing.assert_allclose(moved.network(images, training=False)[0],
                               original.network(images, training=False)[0], rtol=1e-5, atol=1e-5)


def test_rerun_after_a_kill_trains_only_the_unfinished_run(grid, tiny_data):
    # Last in this module: it rewrites one run of the shared grid.
    out, _, _ = grid
    victim = out / "seed1" / "aaa_no_finetune"
    kept = {path: os.path.getmtime(path) for path in
            [out / f"seed{s}" / n / ablate.EVAL_FILE for s in (0, 1) for n in CONFIGS]
            if path.parent != victim}
    # A kill during stage 3: no evaluation and no done.json yet.
    (victim / ablate.EVAL_FILE).unlink()
    (victim / "adversarial" / "done.json").unlink()
    lines = []
    results = run_tiny(out, tiny_data, lines)
    progress = [line for line in lines if line.startswith("[")]
    assert [("reused" in line) for line in progress] == [True, True, True, False], progress
    assert "seed 1 aaa_no_finetune: trained adversarial" in progress[3]
    assert {path: os.path.getmtime(path) for path in kept} == kept
    assert len(results["runs"]) == 4
    with pytest.raises(UserError, match="other settings"):
        run_tiny(out, tiny_data, [], epochs=2)


def planted_results(difference_by_config, seeds=4, queries=300, recipe=None):
    """A results dict of planted per-query AP values (no training): config -> mean AP shift.

    The same configurations give the same draws, whatever the shifts and the recipe."""
    rng = np.random.default_rng(1)
    base = rng.uniform(10, 90, queries)
    runs = []
    for seed in range(seeds):
        noise = rng.normal(0, 2, queries)
        for name, shift in difference_by_config.items():
            ap = np.clip(base + noise + shift + rng.normal(0, 1, queries), 0, 100)
            first_rank = np.where(ap > 50, 1, 3)
            runs.append({"config": name, "seed": seed, "stage": "adversarial", "trained": [],
                         "train_seconds": 1.0, "stage1_digest": f"d{seed}",
                         "metrics": {"euclidean": {
                             "rank1": float(100 * np.mean(first_rank == 1)), "mAP": float(ap.mean()),
                             "mINP": float(ap.mean()), "num_query": queries,
                             "per_query": {"query_index": list(range(queries)),
                                           "first_rank": first_rank.tolist(), "ap": ap.tolist(),
                                           "inp": ap.tolist()}}}})
    settings = {"preset": "demo", "epochs_per_stage": 1, "data": "", "overrides": {"recipe": recipe} if recipe else {}}
    return ablate.build_results(runs, settings, "all", seeds, ("euclidean",), 1.0, n_boot=1000)


def test_report_shows_a_planted_reversal_and_regenerates_the_docs_block(tmp_path):
    from cli import cli

    results = planted_results({"baseline": 0.0, "aaa_conv3": 4.0, "aaa_no_finetune": 9.0,
                               "aaa_random_mask": 0.0})
    verdicts = {row["claim"]: row["verdict"] for row in results["claims"]["euclidean"]["mAP"]}
    assert verdicts == {"AAA-Net > baseline": "holds", "fine-tuning > without (Table 4)": "reversed",
                        "attention mask > random mask": "holds"}
    out = tmp_path / "grid"
    out.mkdir()
    (out / ablate.RESULTS_FILE).write_text(json.dumps(results))
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nOld table, kept.\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n\n{ablate.SUMMARY_BEGIN}\nold\n{ablate.SUMMARY_END}\n\nMore text.\n")
    for _ in range(2):  # the second run replaces the block instead of adding one
        outcome = CliRunner().invoke(cli, ["ablate", "--out", str(out), "--report-only", "--write", str(doc),
                                           "--write", str(readme), "--bootstrap", "1000"],
                                     catch_exceptions=False)
        assert outcome.exit_code == 0, outcome.output
    summary = readme.read_text()  # the short form, between the README's own markers
    assert summary.startswith("# Project\n\n") and summary.endswith("\n\nMore text.\n")
    assert summary.count(ablate.SUMMARY_BEGIN) == 1 and ablate.BEGIN not in summary and "\nold\n" not in summary
    assert "| AAA-Net, occlusion after conv3 (with fine-tuning) |" in summary
    assert "| fine-tuning > without (Table 4) |" in summary and "**reversed**" in summary
    text = doc.read_text()
    assert text.startswith("# Results\n\nOld table, kept.") and text.count(ablate.BEGIN) == 1
    assert "| fine-tuning > without (Table 4) |" in text and "**reversed**" in text
    assert (out / ablate.FIGURE_FILE).stat().st_size > 1000
    assert (tmp_path / "ablation_claims.png").is_file()
    assert "fine-tuning > without (Table 4): Δ mAP" in outcome.output and "reversed" in outcome.output


def test_compare_with_judges_baseline_and_aaa_under_both_recipes_and_keeps_each_grids_block(tmp_path):
    from cli import cli

    grids = {}
    for recipe, shifts in (("paper", {"baseline": 0.0, "aaa_conv3": 0.0}),
                           ("strong", {"baseline": 8.0, "aaa_conv3": 4.0})):
        grids[recipe] = tmp_path / recipe
        grids[recipe].mkdir()
        results = planted_results(shifts, recipe=None if recipe == "paper" else recipe)
        (grids[recipe] / ablate.RESULTS_FILE).write_text(json.dumps(results))
    comparison = ablate.compare_recipes(ablate.load_results(str(grids["strong"]), 1000),
                                        ablate.load_results(str(grids["paper"]), 1000))
    verdicts = {row["claim"]: row["verdict"] for row in comparison["claims"]["euclidean"]}
    assert verdicts == {"strong baseline > paper baseline": "holds",
                        "AAA-Net > baseline, paper recipe": "not shown",
                        "AAA-Net > baseline, strong recipe": "reversed",
                        "strong AAA-Net > paper AAA-Net": "holds"}
    doc = tmp_path / "results.md"
    for out, other in (("paper", None), ("strong", "paper"), ("strong", "paper")):
        arguments = ["ablate", "--out", str(grids[out]), "--report-only", "--write", str(doc), "--bootstrap", "1000"]
        outcome = CliRunner().invoke(cli, arguments + (["--compare-with", str(grids[other])] if other else []),
                                     catch_exceptions=False)
        assert outcome.exit_code == 0, outcome.output
    text = doc.read_text()
    strong_begin, _ = ablate.markers("ablate", "strong")
    recipes_begin, _ = ablate.markers("ablate-recipes")
    assert text.count(ablate.BEGIN) == text.count(strong_begin) == text.count(recipes_begin) == 1
    assert "| strong baseline > paper baseline |" in text and "| strong | Baseline (stage 1) |" in text
    assert (grids["strong"] / ablate.COMPARISON_FILE).is_file()
    # A grid of two configurations shows them once (Tables 3-5 would repeat the same two rows).
    assert text.count("| Baseline (stage 1) | ") == 2 + 2  # one table per grid, and the recipes table's two

    assert (tmp_path / "ablation_claims.png").is_file() and (tmp_path / "ablation_claims_strong.png").is_file()
    decisions = tmp_path / "decisions.md"  # only the cross-recipe block: the grid's own report stays out
    decisions.write_text(f"# Decisions\n\n{recipes_begin}\n{ablate.markers('ablate-recipes')[1]}\n\nEnd.\n")
    outcome = CliRunner().invoke(cli, ["ablate", "--out", str(grids["strong"]), "--report-only", "--bootstrap",
                                       "1000", "--compare-with", str(grids["paper"]), "--write", str(decisions)])
    assert outcome.exit_code == 0, outcome.output
    text = decisions.read_text()
    assert "| strong baseline > paper baseline |" in text and strong_begin not in text and text.endswith("End.\n")
    missing = CliRunner().invoke(cli, ["ablate", "--out", str(grids["paper"]), "--report-only",
                                       "--compare-with", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and f"--compare-with {tmp_path / 'nowhere'}: no readable results.json" \
        in missing.output and "Traceback" not in missing.output
    same = CliRunner().invoke(cli, ["ablate", "--out", str(grids["paper"]), "--report-only",
                                    "--compare-with", str(grids["paper"])])
    assert same.exit_code == 2 and "both grids use the paper recipe" in same.output


def test_report_only_without_results_is_a_user_error(tmp_path):
    from cli import cli

    outcome = CliRunner().invoke(cli, ["ablate", "--out", str(tmp_path), "--report-only"])
    assert outcome.exit_code == 2
    assert "results.json" in outcome.output and "Traceback" not in outcome.output


def test_help_shows_an_example():
    from cli import cli

    outcome = CliRunner().invoke(cli, ["ablate", "--help"])
    assert outcome.exit_code == 0
    assert "Example" in outcome.output and "python cli.py ablate" in outcome.output


def test_out_defaults_to_a_directory_named_after_the_data_and_recipe():
    from aaa_keras.ablate.grid import default_out

    assert default_out("builtin:ablate", None) == os.path.join("runs", "ablate")
    assert default_out("builtin:ablate", "strong") == os.path.join("runs", "ablate-strong")
    assert default_out("builtin:occluded", "paper") == os.path.join("runs", "ablate-occluded")
    assert default_out("/data/Market-1501-v15.09.15/", None) == os.path.join("runs", "ablate-Market-1501-v15.09.15")
    assert default_out("csv:/data/mine.csv", None) == os.path.join("runs", "ablate-mine")
    assert default_out("folder:/data/crops?camera-pattern=c(?P<cam>[0-9])", None) == os.path.join("runs", "ablate-crops")
    assert default_out("builtin:ablate", None, "paper") == os.path.join("runs", "ablate-paper")
    assert default_out("builtin:ablate", None, "demo", 0) == os.path.join("runs", "ablate-oq0")
    from aaa_keras.ablate.report import grid_key  # the generated blocks: the same name

    assert grid_key({"settings": {"data": "builtin:ablate", "preset": "demo", "overrides": {}, "occlude_queries": 0}}) == "oq0"
    assert grid_key({"settings": {"data": "builtin:ablate", "preset": "demo", "overrides": {}}}) == ""


def test_a_csv_or_folder_spec_keeps_its_prefix_in_the_grid(monkeypatch, tmp_path):
    """`ablate --data csv:FILE`: grid.json names the spec (absolute path), not cwd + "csv:..."."""
    import json

    from aaa_keras.ablate import run as ablate_run

    def first_run_only(*args, **kwargs):
        raise KeyboardInterrupt  # stop before anything trains

    monkeypatch.setattr(ablate_run, "run_variant", first_run_only)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.csv").write_text("path,pid,camid\n")
    with pytest.raises(KeyboardInterrupt):
        ablate_run.run_grid(str(tmp_path / "grid"), seeds=1, epochs=1, data="csv:mine.csv",
                            configs=["baseline"], progress=lambda *_: None, log=lambda *_: None)
    data = json.loads((tmp_path / "grid" / "grid.json").read_text())["data"]
    assert data.startswith("csv:") and data.endswith("mine.csv") and os.path.isabs(data[len("csv:"):])
