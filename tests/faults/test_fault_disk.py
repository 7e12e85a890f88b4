"""A full or read-only disk: one line, exit 1, never a segfault; earlier stages' files intact."""

import contextlib
import csv
import hashlib
import json
import math
import os
import subprocess

import pytest

from conftest import TINY, cli, error_line, succeeded


def digest(directory):
    return {name: hashlib.sha1((directory / name).read_bytes()).hexdigest()
            for name in sorted(os.listdir(directory)) if (directory / name).is_file()}


@contextlib.contextmanager
def tmpfs(path, *options):
    """A small tmpfs at ``path``, or a skip where mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    os.makedirs(path)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_write_error_at_the_final_save_keeps_earlier_stages_and_the_backup(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    args = ["fit", "--stage", "attention", "--data", tiny_data, "--run-dir", run_dir, *TINY, "--no-evaluate"]
    line = error_line(cli(*args, fault="enospc:attention.weights.h5"), 1)
    attention = run_dir / "attention"
    assert line.startswith(f"Error: no space left on {attention} while writing attention.weights.h5")
    assert f"the last good checkpoint is {attention / 'backup'} (stage attention after epoch 1" in line
    assert not [n for n in os.listdir(attention) if n.startswith("_partial_")]
    assert not os.path.exists(attention / "done.json")
    baseline = digest(run_dir / "baseline")
    assert {"done.json", "network.weights.h5"} <= set(baseline)

    output = succeeded(cli(*args))
    assert "Stage baseline: already trained" in output
    assert digest(run_dir / "baseline") == baseline
    assert os.path.isfile(attention / "attention.weights.h5") and os.path.isfile(attention / "done.json")
    assert not os.path.exists(attention / "backup")  # removed once the stage is saved
    # the rerun trained no epoch (all restored from the backup): done.json has the last epoch's metrics
    final = json.loads((attention / "done.json").read_text())["final_metrics"]
    with open(attention / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and final, final  # one epoch, logged once, by the first run
    # as History has them: CSVLogger's val_ columns of a fit without validation data (NA) are not metrics
    logged = {name: value for name, value in rows[-1].items() if name != "epoch" and value != "NA"}
    assert set(final) == set(logged) and "loss" in final, (final, logged)
    for name, value in logged.items():
        assert (math.isnan(final[name]) if value == "nan" else final[name] == float(value)), (name, final, logged)


def test_free_space_is_checked_before_a_stage(tiny_data, tmp_path):
    line = error_line(cli("fit", "--stage", "baseline", "--data", tiny_data, "--run-dir", tmp_path / "run",
                          *TINY, "--no-evaluate", fault="free-bytes:1000000"), 1)
    assert "not enough free space on" in line and "two checkpoints + logs" in line
    assert "1.0 MiB free" in line or "0.9 MiB free" in line
    assert not os.path.exists(tmp_path / "run" / "baseline" / "backup")  # refused before training


def test_a_disk_that_really_fills_up_is_one_line_and_exit_1_not_a_segfault(tiny_data, tmp_path):
    """3 MiB of tmpfs, the free-space estimate bypassed: HDF5 hits ENOSPC while writing."""
    with tmpfs(tmp_path / "small", "size=3m") as disk:
        run_dir = disk / "run"
        result = cli("fit", "--stage", "baseline", "--data", tiny_data, "--run-dir", run_dir, *TINY,
                     "--no-evaluate", fault="no-space-check")
        line = error_line(result, 1)  # before the guard: h5py tracebacks, then exit 139
        assert f"no space left on {run_dir / 'baseline'} while writing" in line
        assert "No space left on device" in line and "the last good checkpoint is" in line
        assert os.path.isfile(run_dir / "config.json")


def test_a_read_only_run_dir_is_one_line(tiny_data, tmp_path):
    with tmpfs(tmp_path / "ro", "size=1m", "ro") as disk:
        line = error_line(cli("fit", "--stage", "baseline", "--data", tiny_data, "--run-dir", disk / "run",
                              *TINY, "--no-evaluate"), 1)
        assert f"run dir {disk / 'run'} is not writable (Read-only file system)" in line


def test_write_error_inside_fit_at_the_backup_names_the_last_finished_stage(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    succeeded(cli("fit", "--stage", "baseline", "--data", tiny_data, "--run-dir", run_dir, *TINY,
                  "--no-evaluate"))
    baseline = digest(run_dir / "baseline")
    line = error_line(cli("fit", "--stage", "attention", "--data", tiny_data, "--run-dir", run_dir, *TINY,
                          "--no-evaluate", fault="enospc:latest.weights.h5"), 1)  # BackupAndRestore's file
    assert f"no space left on {run_dir / 'attention'} while writing latest.weights.h5" in line
    assert f"the last good checkpoint is {run_dir / 'baseline' / 'network.weights.h5'} (stage baseline" in line
    assert digest(run_dir / "baseline") == baseline
