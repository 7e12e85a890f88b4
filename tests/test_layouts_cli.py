"""Your data through the real CLI: `fit --data folder:DIR` end to end on a folder-per-identity copy of
the built-in data, cross-dataset `evaluate --data` on an Occluded-REID layout (no training split, other
identities), `--same-camera-ok` on single-camera data, and one line for a bad row."""

import json

import pytest

import layout_files as files
from aaa_keras.data.layouts import load_dataset
from test_cli import TINY, assert_user_error, run


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, tiny_data):
    """A stage-1 run trained on ``folder:DIR``, a folder-per-identity (and camera) copy of tiny_data."""
    base = tmp_path_factory.mktemp("folder-run")
    dataset = load_dataset(tiny_data)
    root = files.folder_from_market(dataset.train + dataset.query + dataset.gallery, base / "crops")
    run_dir = base / "run"
    code, output = run("fit", "--stage", "baseline", "--data", f"folder:{root}", "--run-dir", run_dir, *TINY,
                       "--image-size", "64x32", "--no-evaluate")
    assert code == 0, output
    return root, run_dir


def test_fit_on_a_folder_per_identity_stores_the_spec_and_evaluates(folder_run, tmp_path):
    root, run_dir = folder_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"] == f"folder:{root}"  # absolute, portable as the other --data values
    # tiny_data's 8 ids, test fraction 0.5: each identity by its own hash draw, never all on one side
    assert config["num_classes"] == len({r.pid for r in load_dataset(config["data"]).train}) and \
        1 <= config["num_classes"] <= 7
    code, output = run("evaluate", "--run-dir", run_dir, "--json", tmp_path / "eval.json")
    assert code == 0, output
    entry = json.loads((tmp_path / "eval.json").read_text())["euclidean"]
    assert entry["num_query"] > 0 and "protocol" not in entry


def test_cross_dataset_evaluation_on_occluded_reid(folder_run, tmp_path):
    _, run_dir = folder_run
    occluded = files.occluded_reid(tmp_path / "Occluded_REID", ids=(11, 12, 13, 14))
    code, output = run("evaluate", "--run-dir", run_dir, "--data", occluded, "--json", tmp_path / "occ.json")
    assert code == 0, output
    assert "8 query, 8 gallery images" in output
    assert json.loads((tmp_path / "occ.json").read_text())["euclidean"]["num_query"] == 8


def test_single_camera_data_needs_same_camera_ok_and_says_so(folder_run, tmp_path):
    _, run_dir = folder_run
    single = files.folder_dataset(tmp_path / "one-camera", ids=4, cams=1, per_camera=3, camera_level=False)
    code, output = run("evaluate", "--run-dir", run_dir, "--data", f"folder:{single}")
    assert_user_error(code, output, "No query has a true match in another camera", "--same-camera-ok")
    code, output = run("evaluate", "--run-dir", run_dir, "--data", f"folder:{single}", "--same-camera-ok",
                       "--json", tmp_path / "same.json")
    assert code == 0, output
    assert "Protocol: same-camera-ok" in output
    entry = json.loads((tmp_path / "same.json").read_text())["euclidean"]
    assert entry["protocol"] == "same-camera-ok" and entry["num_query"] == 2


def test_data_check_prints_the_layout_and_a_bad_row_is_one_line(tmp_path):
    files.write_image(tmp_path / "a.jpg")
    (tmp_path / "list.csv").write_text("a.jpg,1,1\nb.jpg,2,1\n")
    code, output = run("data", "check", f"csv:{tmp_path / 'list.csv'}")
    assert_user_error(code, output, "list.csv line 2", "b.jpg does not exist")
    partial = files.partial_reid(tmp_path / "Partial_REID")
    code, output = run("data", "check", partial)
    assert code == 0, output
    assert "layout Partial-REID" in output and "every query is partial by definition" in output
    code, output = run("data", "check", partial, "--camera-pattern", r"_c(?P<cam>\d+)")
    assert_user_error(code, output, "--camera-pattern applies to --data folder:DIR or csv:FILE")
    crops = files.folder_dataset(tmp_path / "crops", ids=3, cams=2, per_camera=1)
    victim = tmp_path / "crops" / "0002" / "cam2" / "0002_c2_000.jpg"
    victim.write_bytes(b"\xff\xd8 not a jpeg")
    code, output = run("data", "check", f"folder:{crops}")
    assert_user_error(code, output, str(victim), "does not decode")
