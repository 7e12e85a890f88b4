"""Market-1501 / DukeMTMC-reID file names, split listing, relabelling, fingerprints."""

import json
import os
import shutil

import numpy as np
import pytest

from aaa_keras.data.layouts import load_dataset
from aaa_keras.data.names import (
    SPLITS, ImageRecord, ReidDataset, dataset_fingerprint, list_split, name_format, parse_name, relabel)
from aaa_keras.errors import DatasetError, UserError


def make_dataset(root, train=(), query=(), gallery=(), extra=()):
    """Empty files with the given names; names are enough for list_split."""
    for split, names in (("train", train), ("query", query), ("gallery", gallery)):
        directory = root / SPLITS[split]
        directory.mkdir(parents=True, exist_ok=True)
        for name in tuple(names) + tuple(extra):
            (directory / name).write_bytes(b"")
    return root


@pytest.mark.parametrize("name, expected", [
    ("0002_c1s1_000451_03.jpg", (2, 1)),
    ("1501_c6s4_001902_02.jpg", (1501, 6)),
    ("-1_c1s1_000401_03.jpg", (-1, 1)),
    ("0000_c1s1_000151_01.jpg", (0, 1)),
    ("0001_c2_f0046182.jpg", (1, 2)),
    ("7140_c8_f0152137.jpg", (7140, 8)),
    ("0002_c3s2_000451_03.PNG", (2, 3)),
    ("0002_c3s2_000451_03.jpeg", (2, 3)),
])
def test_parse_name_reads_pid_and_one_based_camera(name, expected):
    assert parse_name(name) == expected
    assert parse_name(os.path.join("some", "dir", name)) == expected


def test_name_format_tells_market_from_duke():
    assert name_format("0002_c1s1_000451_03.jpg") == "market"
    assert name_format("-1_c1s1_000401_03.jpg") == "market"
    assert name_format("0001_c2_f0046182.jpg") == "duke"


@pytest.mark.parametrize("name", [
    "Thumbs.jpg",
    "0002_c1_000451.jpg",
    "0002c1s1_000451_03.jpg",
    "0002_c1s1_000451.jpg",
    "0001_c2_0046182.jpg",
    "abcd_c1s1_000451_03.jpg",
    "-2_c1s1_000401_03.jpg",
    "0002_c1s1_000451_03_extra.jpg",
])
def test_bad_name_raises_one_line_error_naming_file_and_patterns(name):
    path = os.path.join("data", "query", name)
    with pytest.raises(DatasetError) as caught:
        parse_name(path)
    message = str(caught.value)
    assert path in message
    assert "0002_c1s1_000451_03.jpg" in message and "0001_c2_f0046182.jpg" in message
    assert "\n" not in message
    assert isinstance(caught.value, UserError)


def test_list_split_sorts_by_name_and_ignores_non_images(tmp_path):
    root = make_dataset(tmp_path, gallery=[
        "0003_c2s1_000100_01.jpg", "-1_c1s1_000401_03.jpg", "0000_c1s1_000151_01.jpg",
        "0001_c1s1_000001_01.png", "Thumbs.db", "notes.txt", "._0001_c1s1_000001_01.jpg"])
    (tmp_path / SPLITS["gallery"] / "subdir.jpg").mkdir()
    records = list_split(str(tmp_path), "gallery")
    names = [os.path.basename(r.path) for r in records]
    assert names == ["-1_c1s1_000401_03.jpg", "0000_c1s1_000151_01.jpg",
                     "0001_c1s1_000001_01.png", "0003_c2s1_000100_01.jpg"]
    assert [(r.pid, r.camid) for r in records] == [(-1, 1), (0, 1), (1, 1), (3, 2)]
    assert all(os.path.isfile(r.path) for r in records)


def test_list_split_missing_directory_names_it(tmp_path):
    with pytest.raises(DatasetError, match="bounding_box_train") as caught:
        list_split(str(tmp_path), "train")
    assert str(tmp_path / "bounding_box_train") in str(caught.value)
    assert "missing" in str(caught.value)


def test_list_split_without_images_names_directory(tmp_path):
    root = make_dataset(tmp_path, query=["Thumbs.db", "readme.txt"])
    with pytest.raises(DatasetError, match="no images") as caught:
        list_split(str(root), "query")
    assert str(tmp_path / "query") in str(caught.value)


def test_list_split_reports_the_bad_file(tmp_path):
    root = make_dataset(tmp_path, train=["0001_c1s1_000001_01.jpg", "person1.jpg"])
    with pytest.raises(DatasetError) as caught:
        list_split(str(root), "train")
    assert str(tmp_path / "bounding_box_train" / "person1.jpg") in str(caught.value)


def test_list_split_rejects_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        list_split(str(tmp_path), "test")


def test_load_dataset_missing_root_names_it(tmp_path):
    missing = tmp_path / "no-such-dataset"
    with pytest.raises(DatasetError, match="does not exist") as caught:
        load_dataset(str(missing))
    assert str(missing) in str(caught.value)


def _small_dataset(tmp_path):
    return make_dataset(
        tmp_path / "Market-mini",
        train=["0007_c1s1_000001_01.jpg", "0002_c2s1_000001_01.jpg", "0007_c3s1_000026_01.jpg",
               "0042_c1s1_000001_01.jpg", "-1_c1s1_000001_01.jpg", "0000_c2s1_000001_01.jpg"],
        query=["0005_c1s1_000001_01.jpg"],
        gallery=["0005_c2s1_000001_01.jpg", "0000_c1s1_000051_01.jpg"])


def test_train_identities_exclude_junk_and_distractors(tmp_path):
    dataset = load_dataset(str(_small_dataset(tmp_path)))
    assert len(dataset.train) == 6
    identities = dataset.train_identities()
    assert sorted(r.pid for r in identities) == [2, 7, 7, 42]
    assert dataset.num_classes == 3


def test_relabel_is_contiguous_in_sorted_pid_order(tmp_path):
    dataset = load_dataset(str(_small_dataset(tmp_path)))
    labels, pid_to_label = dataset.relabel()
    assert pid_to_label == {2: 0, 7: 1, 42: 2}
    assert labels.dtype == np.int64
    records = dataset.train_identities()
    assert [pid_to_label[r.pid] for r in records] == labels.tolist()
    assert sorted(set(labels.tolist())) == list(range(dataset.num_classes))


def test_relabel_refuses_junk_and_distractors():
    records = [ImageRecord("a.jpg", 3, 1), ImageRecord("b.jpg", -1, 1), ImageRecord("c.jpg", 0, 2)]
    with pytest.raises(ValueError, match=r"\[-1, 0\]"):
        relabel(records)


def test_relabel_of_explicit_records():
    records = [ImageRecord("a.jpg", 30, 1), ImageRecord("b.jpg", 10, 2),
               ImageRecord("c.jpg", 30, 2)]
    labels, pid_to_label = ReidDataset("root", records, [], []).relabel(records)
    assert labels.tolist() == [1, 0, 1]
    assert pid_to_label == {10: 0, 30: 1}


def test_fingerprint_survives_json_and_moving_the_root(tmp_path):
    root = _small_dataset(tmp_path / "a")
    fingerprint = dataset_fingerprint(load_dataset(str(root)))
    assert fingerprint["name"] == "Market-mini"
    assert fingerprint["num_train_ids"] == 3
    assert fingerprint["num_train_images"] == 4
    assert json.loads(json.dumps(fingerprint)) == fingerprint
    moved = tmp_path / "b" / "Market-mini"
    shutil.copytree(root, moved)
    assert dataset_fingerprint(load_dataset(str(moved) + os.sep)) == fingerprint


def test_fingerprint_changes_with_the_training_images(tmp_path):
    root = _small_dataset(tmp_path)
    before = dataset_fingerprint(load_dataset(str(root)))
    (root / SPLITS["train"] / "0009_c1s1_000001_01.jpg").write_bytes(b"")
    after = dataset_fingerprint(load_dataset(str(root)))
    assert after != before
    assert after["num_train_ids"] == before["num_train_ids"] + 1


def test_names_imports_no_module_built_on_it():
    """``names`` is the bottom of the data modules: reading a dataset (``layouts.load_dataset``) lives
    above it, so no import of layouts, check or source, even inside a function (no import cycle)."""
    import ast

    import aaa_keras.data.names as names

    tree = ast.parse(open(names.__file__, encoding="utf-8").read())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    above = {m for m in imported if m.startswith(("aaa_keras.data.layouts", "aaa_keras.data.check",
                                                  "aaa_keras.data.source", "aaa_keras.data.pipeline"))}
    assert not above
    from aaa_keras.data import load_dataset as from_package
    from aaa_keras.data.layouts import load_dataset as from_layouts

    assert from_package is from_layouts
