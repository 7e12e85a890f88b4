"""Another Keras than the one the multi-worker patch was written for: one line before any training."""

import os

from conftest import TINY, cli, error_line


def test_multiworker_fit_on_another_keras_is_refused_before_training(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    line = error_line(cli("fit", "--stage", "baseline", "--distribute", "multiworker", "--data", tiny_data,
                          "--run-dir", run_dir, *TINY, "--no-evaluate", fault="keras-version:3.16.0"), 2)
    assert "Keras 3.16.0 is installed" in line and "keras==3.15.*" in line, line
    assert not os.path.exists(run_dir / "baseline")
