"""A truncated JPEG in training, a zero-byte query image: named before any epoch, never mid-epoch."""

import os

from conftest import TINY, cli, error_line, succeeded


def truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def test_bad_images_are_named_before_training_and_evaluation(data_copy, tmp_path):
    train = sorted(os.listdir(data_copy / "bounding_box_train"))
    truncated = str(data_copy / "bounding_box_train" / train[5])
    truncate(truncated)  # OpenCV decodes it with a warning; TensorFlow's decoder fails mid-epoch
    empty = str(data_copy / "query" / sorted(os.listdir(data_copy / "query"))[0])
    open(empty, "wb").close()
    run_dir = tmp_path / "run"

    line = error_line(cli("fit", "--stage", "baseline", "--data", data_copy, "--run-dir", run_dir,
                          *TINY, "--no-evaluate"), 2)
    assert truncated in line and empty in line and "--skip-bad-images" in line
    assert "2 images do not decode" in line
    assert not os.path.exists(run_dir / "baseline")  # stopped before any training

    output = succeeded(cli("fit", "--stage", "baseline", "--data", data_copy, "--run-dir", run_dir,
                           *TINY, "--no-evaluate", "--skip-bad-images"))
    assert "left out 2 images that did not decode (train 1, query 1, gallery 0)" in output
    assert os.path.isfile(run_dir / "baseline" / "done.json")

    # evaluate names the zero-byte query image; the check reuses fit's cache (not rewritten)
    cache = run_dir / "image_check.json"
    stamp = os.stat(cache).st_mtime_ns
    line = error_line(cli("evaluate", "--run-dir", run_dir), 2)
    assert empty in line and "empty file, 0 bytes" in line and "--skip-bad-images" in line
    assert truncated not in line  # the training split is not in use for a Euclidean evaluation
    assert os.stat(cache).st_mtime_ns == stamp  # nothing decoded again
    output = succeeded(cli("evaluate", "--run-dir", run_dir, "--skip-bad-images"))
    assert f"Skipping a bad query image: {empty}" in output and "Rank-1" in output
