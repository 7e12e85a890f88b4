"""``check_dataset``: counts, hard errors naming the file, warnings and --strict."""

import os
import shutil

import cv2
import numpy as np
import pytest

from aaa_keras.data.check import check_dataset, format_report
from aaa_keras.data.names import SPLITS
from aaa_keras.data.synth import synthesize_market
from aaa_keras.errors import DatasetError

NUM_IDS, NUM_CAMS = 8, 3


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    out = tmp_path_factory.mktemp("check") / "market"
    return synthesize_market(str(out), num_ids=NUM_IDS, num_cams=NUM_CAMS, seed=0,
                             images_per_id_per_cam=2)


@pytest.fixture
def root(pristine, tmp_path):
    """A private copy of the synthetic dataset that a test may damage."""
    return shutil.copytree(pristine, tmp_path / "market")


def split_files(root, split):
    directory = os.path.join(root, SPLITS[split])
    return sorted(os.path.join(directory, name) for name in os.listdir(directory))


def raised_message(root, **kwargs):
    with pytest.raises(DatasetError) as caught:
        check_dataset(str(root), **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def write_jpeg(path, value=128):
    ok, data = cv2.imencode(".jpg", np.full((16, 8, 3), value, np.uint8))
    assert ok
    with open(path, "wb") as f:
        f.write(data.tobytes())


def test_counts_on_a_synthetic_dataset(root):
    report = check_dataset(str(root))
    assert report.ok and report.naming == "Market-1501" and report.decoded
    for split in SPLITS:
        names = [os.path.basename(p) for p in split_files(root, split)]
        stats = report.splits[split]
        assert stats.num_images == len(names)
        assert stats.num_junk == sum(n.startswith("-1_") for n in names)
        assert stats.num_distractors == sum(n.startswith("0000_") for n in names)
        assert set(stats.cameras) <= set(range(1, NUM_CAMS + 1))
        assert stats.min_size == stats.max_size == (128, 64)
    assert report.splits["train"].num_ids == NUM_IDS // 2
    assert report.splits["query"].num_ids == report.splits["gallery"].num_ids == NUM_IDS // 2
    assert report.splits["train"].num_junk == report.splits["train"].num_distractors == 0
    assert report.splits["gallery"].num_junk > 0 and report.splits["gallery"].num_distractors > 0


def test_format_report_is_a_table_with_the_counts(root):
    report = check_dataset(str(root))
    text = format_report(report)
    lines = text.splitlines()
    assert str(root) in lines[0] and "Market-1501" in lines[0]
    assert lines[1].split() == ["split", "directory", "images", "ids", "cameras", "junk",
                                "distractors", "size"]
    gallery = report.splits["gallery"]
    gallery_row = next(line for line in lines if line.startswith("gallery"))
    assert gallery_row.split()[:7] == [
        "gallery", "bounding_box_test/", str(gallery.num_images), str(gallery.num_ids),
        str(gallery.num_cameras), str(gallery.num_junk), str(gallery.num_distractors)]
    assert lines[-1].startswith("OK")


def test_malformed_name_is_named(root):
    bad = os.path.join(root, SPLITS["gallery"], "person_17.jpg")
    write_jpeg(bad)
    message = raised_message(root)
    assert bad in message and "does not parse" in message


def test_corrupt_image_is_named(root):
    corrupt = split_files(root, "query")[0]
    with open(corrupt, "wb") as f:
        f.write(b"this is not a JPEG at all" * 10)
    message = raised_message(root)
    assert corrupt in message and "does not decode" in message


def test_empty_image_file_is_named(root):
    empty = split_files(root, "train")[3]
    open(empty, "wb").close()
    message = raised_message(root)
    assert empty in message and "empty" in message


def test_decode_false_checks_names_only(root):
    corrupt = split_files(root, "gallery")[0]
    with open(corrupt, "wb") as f:
        f.write(b"\x00" * 100)
    report = check_dataset(str(root), decode=False)
    assert report.splits["gallery"].min_size is None
    assert "images not decoded" in format_report(report)


def test_empty_split_is_named(root):
    for path in split_files(root, "query"):
        os.remove(path)
    open(os.path.join(root, SPLITS["query"], "Thumbs.db"), "wb").close()
    message = raised_message(root)
    assert os.path.join(str(root), "query") in message and "no images" in message


def test_missing_split_is_named(root):
    shutil.rmtree(os.path.join(root, SPLITS["gallery"]))
    message = raised_message(root)
    assert os.path.join(str(root), "bounding_box_test") in message and "missing" in message


def test_missing_root_is_named(tmp_path):
    message = raised_message(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in message


def _add_unmatched_queries(root):
    """Id 9001 is in the query only; id 9002 is in the gallery, but from the query's camera."""
    write_jpeg(os.path.join(root, SPLITS["query"], "9001_c1s1_000001_01.jpg"))
    write_jpeg(os.path.join(root, SPLITS["query"], "9002_c2s1_000001_01.jpg"))
    write_jpeg(os.path.join(root, SPLITS["gallery"], "9002_c2s1_000026_01.jpg"))


def test_query_without_cross_camera_match_is_a_warning(root):
    _add_unmatched_queries(root)
    report = check_dataset(str(root))
    assert not report.ok and len(report.warnings) == 1
    warning = report.warnings[0]
    assert os.path.join(str(root), "query") in warning
    assert "9001 (camera 1)" in warning and "9002 (camera 2)" in warning
    assert "2 of" in warning
    assert "9001" in format_report(report)


def test_strict_turns_the_warning_into_an_error(root):
    _add_unmatched_queries(root)
    message = raised_message(root, strict=True)
    assert "strict" in message and "9001" in message and "9002" in message


def test_strict_passes_a_clean_dataset(root):
    assert check_dataset(str(root), strict=True).ok


def test_junk_in_training_and_shared_ids_are_warnings(root):
    write_jpeg(os.path.join(root, SPLITS["train"], "-1_c1s1_000001_01.jpg"))
    query_pid = os.path.basename(split_files(root, "query")[0]).split("_")[0]
    write_jpeg(os.path.join(root, SPLITS["train"], f"{query_pid}_c1s1_009999_01.jpg"))
    warnings = check_dataset(str(root)).warnings
    assert any("junk" in w and "-1_c1s1_000001_01.jpg" in w for w in warnings)
    assert any("also appear in query/gallery" in w and query_pid in w for w in warnings)


def _make_duke(root):
    names = {
        "train": ["0001_c1_f0000001.jpg", "0001_c2_f0000101.jpg", "0003_c5_f0000201.jpg",
                  "0003_c8_f0000301.jpg"],
        "query": ["0005_c1_f0001001.jpg", "0006_c7_f0001101.jpg"],
        "gallery": ["0005_c2_f0002001.jpg", "0006_c6_f0002101.jpg", "0006_c7_f0002201.jpg",
                    "0000_c3_f0002301.jpg", "-1_c4_f0002401.jpg"],
    }
    for split, files in names.items():
        directory = root / SPLITS[split]
        directory.mkdir(parents=True)
        for name in files:
            write_jpeg(str(directory / name))
    return root


def test_reads_duke_names(tmp_path):
    report = check_dataset(str(_make_duke(tmp_path / "DukeMTMC-reID")))
    assert report.ok and report.naming == "DukeMTMC-reID"
    assert report.splits["train"].num_ids == 2 and report.splits["train"].cameras == [1, 2, 5, 8]
    assert report.splits["query"].num_images == 2
    gallery = report.splits["gallery"]
    assert (gallery.num_images, gallery.num_ids, gallery.num_junk, gallery.num_distractors) == (
        5, 2, 1, 1)
    assert gallery.min_size == (16, 8)


def test_mixed_naming_is_a_warning(tmp_path):
    root = _make_duke(tmp_path / "mixed")
    write_jpeg(str(root / SPLITS["train"] / "0002_c1s1_000451_03.jpg"))
    report = check_dataset(str(root))
    assert report.naming == "mixed"
    assert any("mix Market-1501 and DukeMTMC-reID" in w for w in report.warnings)


# === verify_images: the check before training and evaluation ===

def truncate(path, keep=0.5):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def test_a_truncated_jpeg_that_opencv_accepts_is_named(root):
    """The check decodes with TensorFlow's decoder: libjpeg via OpenCV only warns on a cut file."""
    truncated = split_files(root, "train")[1]
    truncate(truncated)
    assert cv2.imread(truncated) is not None  # why the check must not use OpenCV
    message = raised_message(root)
    assert truncated in message and "jpeg" in message.lower()


def test_verify_images_names_every_bad_file_and_the_flag(root, tmp_path):
    from aaa_keras.data.check import verify_images
    from aaa_keras.data.layouts import load_dataset

    bad = [split_files(root, "train")[0], split_files(root, "query")[0]]
    truncate(bad[0])
    open(bad[1], "wb").close()
    with pytest.raises(DatasetError) as caught:
        verify_images(load_dataset(str(root)), ("train", "query", "gallery"), str(tmp_path))
    message = str(caught.value)
    assert "\n" not in message and "--skip-bad-images" in message and "2 images do not decode" in message
    assert all(path in message for path in bad)

    lines = []
    kept = verify_images(load_dataset(str(root)), ("train", "query", "gallery"), str(tmp_path),
                         skip_bad=True, log=lines.append)
    assert not {r.path for r in kept.train + kept.query} & set(bad)
    assert len(kept.train) == len(split_files(root, "train")) - 1
    assert "left out 2 images" in lines[-1] and "train 1, query 1, gallery 0" in lines[-1]


def test_verify_images_caches_by_size_and_mtime(root, tmp_path, monkeypatch):
    from aaa_keras.data import check
    from aaa_keras.data.layouts import load_dataset

    decoded = []
    real = check.decode_files
    monkeypatch.setattr(check, "decode_files", lambda paths: (decoded.extend(paths), real(paths))[1])
    dataset = load_dataset(str(root))
    check.verify_images(dataset, ("train", "query"), str(tmp_path))
    assert len(decoded) == len(dataset.train) + len(dataset.query)
    assert os.path.isfile(tmp_path / check.IMAGE_CHECK_FILE)

    decoded.clear()
    check.verify_images(dataset, ("train", "query"), str(tmp_path))
    assert decoded == []  # the second run pays nothing

    changed = dataset.train[2].path
    truncate(changed, 0.3)
    with pytest.raises(DatasetError, match="1 image does not decode"):
        check.verify_images(dataset, ("train", "query"), str(tmp_path))
    assert decoded == [changed]  # only the changed file is decoded again
