"""Portable run dirs: a built-in dataset is stored by its name and re-made on demand; a moved real
dataset gets one line naming --data; old run dirs holding a built-in cache's absolute path still work."""

import json
import os
import shutil

import pytest

from aaa_keras.data import source, synth
from aaa_keras.errors import UserError
from test_cli import TINY, assert_user_error, run


def test_config_names_a_builtin_dataset_and_a_directory_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert source.portable_data("") == "builtin:demo"
    assert source.portable_data("builtin:ablate") == "builtin:ablate"
    assert source.portable_data("market") == str(tmp_path / "market")
    with pytest.raises(UserError, match="builtin:nope"):
        source.portable_data("builtin:nope")


def test_a_folder_or_csv_spec_is_stored_with_its_absolute_path_and_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "crops").mkdir()
    (tmp_path / "list.csv").write_text("")
    assert source.portable_data("folder:crops") == f"folder:{tmp_path / 'crops'}"
    assert source.portable_data("csv:list.csv?seed=2") == f"csv:{tmp_path / 'list.csv'}?seed=2"
    spec = source.portable_data(r"folder:crops?camera-pattern=a%26b_c(?P<cam>\d+)&test-fraction=0.25")
    assert spec == f"folder:{tmp_path / 'crops'}?camera-pattern=a%26b_c(?P<cam>\\d+)&test-fraction=0.25"
    assert source.resolve_run_data(None, spec, "runs/x") == spec  # the same split is read again
    with pytest.raises(UserError, match="--data: folder:nowhere"):
        source.resolve_data("folder:nowhere")
    moved = f"folder:{tmp_path / 'moved'}?seed=1"
    with pytest.raises(UserError, match="pass --data") as caught:
        source.resolve_run_data(None, moved, "runs/x")
    assert moved in str(caught.value)


def _config_data(run_dir):
    return json.loads((run_dir / "config.json").read_text())["data"]


def test_a_run_on_builtin_data_evaluates_and_exports_with_the_cache_gone(tmp_path, monkeypatch):
    first_cache, second_cache = tmp_path / "cache-of-the-gpu-box", tmp_path / "cache-of-the-laptop"
    monkeypatch.setenv("AAA_KERAS_CACHE", str(first_cache))
    run_dir = tmp_path / "run"
    code, output = run("fit", "--stage", "baseline", "--run-dir", run_dir, *TINY, "--image-size", "64x32",
                       "--no-evaluate")  # no --data: the built-in demo dataset
    assert code == 0, output
    assert _config_data(run_dir) == "builtin:demo"
    old_path = synth.default_synthetic_dir(**synth.BUILTIN_SIZES["demo"])
    assert old_path.startswith(str(first_cache))

    # the run dir travels to a machine without that cache: the dataset is made again there
    copied = tmp_path / "copied-run"
    shutil.copytree(run_dir, copied)
    shutil.rmtree(first_cache)
    monkeypatch.setenv("AAA_KERAS_CACHE", str(second_cache))
    code, output = run("evaluate", "--run-dir", copied, "--json", tmp_path / "eval.json")
    assert code == 0, output
    assert json.loads((tmp_path / "eval.json").read_text())["euclidean"]["num_query"] > 0
    assert os.path.isdir(synth.default_synthetic_dir(**synth.BUILTIN_SIZES["demo"]))
    code, output = run("export", "--run-dir", copied, "--out", tmp_path / "models", "--format", "tflite",
                       "--quantize", "float32", "--representative-count", "4")
    assert code == 0, output
    assert list((tmp_path / "models").rglob("*.tflite")), output

    # a run dir written before names were stored holds the built-in cache's absolute path
    values = json.loads((copied / "config.json").read_text())
    (copied / "config.json").write_text(json.dumps({**values, "data": old_path}))
    shutil.rmtree(second_cache)
    code, output = run("evaluate", "--run-dir", copied)
    assert code == 0, output
    assert "Rank-1" in output or "rank1" in output


def test_a_moved_dataset_gets_one_line_naming_data(tmp_path, tiny_data):
    root = tmp_path / "market"
    shutil.copytree(tiny_data, root)
    run_dir = tmp_path / "run"
    code, output = run("fit", "--stage", "baseline", "--data", root, "--run-dir", run_dir, *TINY, "--no-evaluate")
    assert code == 0, output
    assert _config_data(run_dir) == str(root)
    moved = tmp_path / "moved"
    root.rename(moved)
    for command in (["evaluate", "--run-dir", run_dir], ["visualize", "--run-dir", run_dir, "--what", "ranks"],
                    ["export", "--run-dir", run_dir, "--out", tmp_path / "models", "--format", "tflite"]):
        code, output = run(*command)
        assert_user_error(code, output, str(root), "pass --data")
    code, output = run("evaluate", "--run-dir", run_dir, "--data", moved)
    assert code == 0, output
