"""Every file the product reads back, damaged (truncated, empty, garbage bytes): one line naming the file,
what is wrong and what to do, exit 2, never a traceback; and `index --verify`."""

import glob
import os
import shutil

import pytest

from conftest import DAMAGES, TINY, cli, damage, error_line, succeeded


@pytest.fixture(scope="module")
def gallery_index(trained, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "gallery"
    succeeded(cli("index", "--model", trained["model"], "--gallery", os.path.join(tiny_data, "bounding_box_test"),
                  "--out", out))
    return out


def query_image(tiny_data):
    return sorted(glob.glob(os.path.join(tiny_data, "query", "*.jpg")))[0]


def test_index_verify_passes_on_a_sound_index(trained, gallery_index):
    output = succeeded(cli("index", "--verify", "--out", gallery_index))
    assert "43 rows = 43 vectors" in output and "present and consistent" in output and "parity.json readable" in output


def _slow_unless(kind, default_kind):
    """Each CLI call costs a TensorFlow start-up: the default suite damages each file one way (the
    three ways spread over the files), `-m slow` every way."""
    return pytest.param(kind, marks=() if kind == default_kind else pytest.mark.slow)


@pytest.mark.parametrize("kind", [_slow_unless(kind, "truncate") for kind in DAMAGES])
def test_a_damaged_index_is_one_line_in_search_and_verify(kind, trained, gallery_index, tiny_data, tmp_path):
    vectors_damaged, meta_damaged = tmp_path / "v", tmp_path / "m"
    shutil.copytree(gallery_index, vectors_damaged)
    shutil.copytree(gallery_index, meta_damaged)
    damage(vectors_damaged / "vectors.0.faiss", kind)
    damage(meta_damaged / "meta.sqlite", kind)

    line = error_line(cli("search", "--index", vectors_damaged, "--model", trained["model"], query_image(tiny_data)), 2)
    assert str(vectors_damaged / "vectors.0.faiss") in line and "the index's vectors (FAISS) is" in line, line
    assert "rebuild the index: `python cli.py index --model" in line
    line = error_line(cli("index", "--verify", "--out", meta_damaged), 2)
    assert str(meta_damaged / "meta.sqlite") in line and "the index's metadata (SQLite) is" in line, line
    assert "rebuild the index" in line


def test_index_verify_names_a_missing_model_and_a_damaged_parity_report(trained, gallery_index, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained["model"], model)
    damage(model / "assets.extra" / "parity.json", "garbage")
    line = error_line(cli("index", "--verify", "--out", gallery_index, "--model", model), 2)
    assert str(model / "assets.extra" / "parity.json") in line and "parity report is damaged" in line, line
    assert "export the model again" in line
    shutil.rmtree(model)
    line = error_line(cli("index", "--verify", "--out", gallery_index, "--model", model), 2)
    assert "is not there" in line and str(model) in line, line


# (file in the run dir, the command that reads it back, what the line calls it, the remedy)
RUN_FILES = {
    "config": ("config.json", ["evaluate"], "the run configuration", "train again in a new --run-dir"),
    "done": ("baseline/done.json", ["fit", "--stage", "baseline", *TINY, "--no-evaluate"],
             "the record of the finished stage baseline", "re-run the stage: delete"),
    "weights": ("baseline/network.weights.h5", ["evaluate"], "the baseline weights file", "re-run the stage: delete"),
    "log": ("baseline/log.csv", ["visualize", "--what", "curves"], "the training log", "delete it, or re-run"),
    "xqda": ("baseline/metrics/*/xqda.npz", ["evaluate", "--metric", "xqda"], "the fitted xqda model",
             "the next evaluation fits the model again"),
}


# the damage each file gets in the default suite (every damage runs with -m slow)
DEFAULT_DAMAGE = {"config": "garbage", "done": "empty", "weights": "truncate", "log": "garbage", "xqda": "empty"}


@pytest.mark.parametrize("which,kind", [
    pytest.param(which, kind, marks=() if DEFAULT_DAMAGE[which] == kind else pytest.mark.slow)
    for which in RUN_FILES for kind in DAMAGES])
def test_a_damaged_run_file_is_one_line_naming_it_and_what_to_do(which, kind, trained, tiny_data, tmp_path):
    pattern, command, what, remedy = RUN_FILES[which]
    run_dir = tmp_path / "run"
    shutil.copytree(trained["run_dir"], run_dir)
    (path,) = glob.glob(str(run_dir / pattern))
    damage(path, kind)
    if which == "log" and kind != "garbage":
        pytest.skip("an empty log, or one cut short, is valid CSV with fewer epochs: visualize plots those "
                    "(or says there are none to plot)")
    result = cli(*command[:1], "--run-dir", run_dir, *(["--data", tiny_data] if command[0] == "fit" else []),
                 *command[1:])
    line = error_line(result, 2)
    assert line.startswith(f"Error: {path}: {what} is "), line
    assert remedy in line, line
