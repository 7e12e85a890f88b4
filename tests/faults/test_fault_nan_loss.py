"""A NaN in a batch: training stops at that step, names it, keeps the last good epoch; a rerun continues."""

import csv
import json
import math
import os

import h5py
import numpy as np

from conftest import TINY, cli, error_line, succeeded


def finite_weights(path):
    with h5py.File(path, "r") as f:
        arrays = []
        f.visititems(lambda _, item: arrays.append(item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays and all(np.isfinite(a).all() for a in arrays)


def test_nan_loss_stops_with_stage_epoch_step_and_the_rerun_continues(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    args = ["fit", "--stage", "baseline", "--data", tiny_data, "--run-dir", run_dir, *TINY,
            "--epochs", "2", "--no-evaluate"]
    stage = run_dir / "baseline"

    line = error_line(cli(*args, fault="nan:baseline:2:1", env={"INJECT_STEPS_PER_EPOCH": "2"}), 1)
    assert "stage baseline" in line and "epoch 2, step 1" in line and "non-finite" in line
    assert f"{stage / 'backup'} (stage baseline after epoch 1" in line
    assert not os.path.exists(stage / "network.weights.h5") and not os.path.exists(stage / "done.json")
    assert finite_weights(stage / "backup" / "latest.weights.h5")  # the NaN epoch was not backed up

    succeeded(cli(*args))
    with open(stage / "log.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == [0, 1]  # epoch 1 kept, epoch 2 trained once, by the rerun
    assert finite_weights(stage / "network.weights.h5")
    done = json.loads((stage / "done.json").read_text())
    assert math.isfinite(done["final_metrics"]["loss"])
