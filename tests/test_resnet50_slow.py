"""ResNet-50, the product backbone, through all three stages and evaluation (slow)."""

import json

import pytest
from click.testing import CliRunner

from cli import cli


@pytest.mark.slow
def test_resnet50_fit_adversarial_then_evaluate_all_metrics(tmp_path, tiny_data):
    run_dir = tmp_path / "resnet50"
    runner = CliRunner()
    result = runner.invoke(cli, [
        "fit", "--stage", "adversarial", "--data", tiny_data, "--run-dir", str(run_dir), "--recipe", "paper",
        "--backbone", "resnet50", "--image-size", "64x32", "--batch-size", "8", "--epochs", "1",
        "--steps-per-epoch", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for stage in ("baseline", "attention", "adversarial"):
        assert (run_dir / stage / "done.json").is_file()
    result = runner.invoke(cli, ["evaluate", "--run-dir", str(run_dir), "--metric", "all", "--rerank",
                                 "--json", str(run_dir / "eval.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    results = json.loads((run_dir / "eval.json").read_text())
    assert len(results) == 6
    for entry in results.values():
        assert set(entry) == {"rank1", "rank5", "rank10", "mAP", "mINP", "num_query"}
