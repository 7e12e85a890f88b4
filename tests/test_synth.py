"""The built-in synthetic dataset: layout, names, determinism, query/gallery protocol, cache."""

import collections
import hashlib
import os

import cv2
import pytest

from aaa_keras.data import synth
from aaa_keras.data.names import SPLITS, load_dataset, name_format, parse_name
from aaa_keras.data.synth import default_synthetic_dir, ensure_synthetic, synthesize_market
from aaa_keras.errors import DatasetError, UserError

NUM_IDS, NUM_CAMS, PER_CAM = 10, 4, 3


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "market"
    return synthesize_market(str(out), num_ids=NUM_IDS, num_cams=NUM_CAMS, seed=0,
                             images_per_id_per_cam=PER_CAM)


def file_hashes(root):
    hashes = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


def records_by_split(root):
    dataset = load_dataset(root)
    return {split: getattr(dataset, split) for split in SPLITS}


def test_writes_market_layout_with_parseable_decodable_images(dataset_dir):
    assert sorted(os.listdir(dataset_dir)) == sorted(list(SPLITS.values()) + [synth.INFO_FILE])
    for split_dir in SPLITS.values():
        names = os.listdir(os.path.join(dataset_dir, split_dir))
        assert names
        for name in names:
            path = os.path.join(dataset_dir, split_dir, name)
            assert name.endswith(".jpg") and name_format(path) == "market"
            pid, camid = parse_name(path)
            assert pid == -1 or 0 <= pid <= NUM_IDS
            assert 1 <= camid <= NUM_CAMS
            image = cv2.imread(path)
            assert image is not None and image.shape == (128, 64, 3)


def test_pids_are_four_digits_starting_at_0001(dataset_dir):
    names = [n for d in SPLITS.values() for n in os.listdir(os.path.join(dataset_dir, d))]
    identity_prefixes = {n.split("_")[0] for n in names if not n.startswith(("-1_", "0000_"))}
    assert identity_prefixes == {f"{pid:04d}" for pid in range(1, NUM_IDS + 1)}


def test_train_and_test_identities_are_disjoint_halves(dataset_dir):
    splits = records_by_split(dataset_dir)
    train_ids = {r.pid for r in splits["train"]}
    test_ids = {r.pid for r in splits["query"] + splits["gallery"] if r.pid > 0}
    assert len(train_ids) == NUM_IDS // 2 and len(test_ids) == NUM_IDS - NUM_IDS // 2
    assert not train_ids & test_ids
    assert {r.pid for r in splits["query"]} == test_ids


def test_training_images_cover_several_cameras_per_identity(dataset_dir):
    train = records_by_split(dataset_dir)["train"]
    per_id_cam = collections.Counter((r.pid, r.camid) for r in train)
    assert set(per_id_cam.values()) == {PER_CAM}
    cameras = collections.defaultdict(set)
    for pid, cam in per_id_cam:
        cameras[pid].add(cam)
    assert all(len(cams) >= 2 for cams in cameras.values())


def test_distractors_and_junk_are_in_the_gallery_only(dataset_dir):
    splits = records_by_split(dataset_dir)
    assert all(r.pid > 0 for r in splits["train"] + splits["query"])
    gallery_pids = collections.Counter(r.pid for r in splits["gallery"])
    assert gallery_pids[0] > 0 and gallery_pids[-1] > 0


def test_every_query_has_a_true_match_in_another_camera(dataset_dir):
    splits = records_by_split(dataset_dir)
    gallery_cams = collections.defaultdict(set)
    for record in splits["gallery"]:
        gallery_cams[record.pid].add(record.camid)
    query_per_cam = collections.Counter((r.pid, r.camid) for r in splits["query"])
    assert set(query_per_cam.values()) == {1}
    for record in splits["query"]:
        assert gallery_cams[record.pid] - {record.camid}, record.path


def test_same_seed_gives_byte_identical_files(dataset_dir, tmp_path):
    again = synthesize_market(str(tmp_path / "again"), num_ids=NUM_IDS, num_cams=NUM_CAMS,
                              seed=0, images_per_id_per_cam=PER_CAM)
    assert file_hashes(again) == file_hashes(dataset_dir)


def test_other_seed_gives_other_images(dataset_dir, tmp_path):
    other = synthesize_market(str(tmp_path / "other"), num_ids=NUM_IDS, num_cams=NUM_CAMS,
                              seed=1, images_per_id_per_cam=PER_CAM)
    ours = set(file_hashes(dataset_dir).values())
    theirs = set(file_hashes(other).values())
    assert not ours & theirs


def test_image_content_does_not_depend_on_what_else_is_written(dataset_dir, tmp_path):
    """Per-image seeds: dropping distractors and junk leaves every identity image unchanged."""
    lean = synthesize_market(str(tmp_path / "lean"), num_ids=NUM_IDS, num_cams=NUM_CAMS, seed=0,
                             images_per_id_per_cam=PER_CAM, num_distractors=0, num_junk=0)
    full_hashes = file_hashes(dataset_dir)
    lean_hashes = file_hashes(lean)
    images = {path: digest for path, digest in lean_hashes.items() if path.endswith(".jpg")}
    assert images and all(full_hashes[path] == digest for path, digest in images.items())
    assert not any(os.path.basename(p).startswith(("0000_", "-1_")) for p in lean_hashes)


def test_custom_image_size(tmp_path):
    out = synthesize_market(str(tmp_path / "small"), num_ids=4, num_cams=2, image_size=(64, 32),
                            images_per_id_per_cam=1)
    train_dir = os.path.join(out, SPLITS["train"])
    name = sorted(os.listdir(train_dir))[0]
    assert cv2.imread(os.path.join(train_dir, name)).shape == (64, 32, 3)


def test_interrupted_synthesis_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def failing_encode(image):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return b"jpeg"

    monkeypatch.setattr(synth, "_encode_jpeg", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        synthesize_market(str(tmp_path / "market"), num_ids=4, num_cams=2)
    assert os.listdir(tmp_path) == []


def test_refuses_to_overwrite_a_non_empty_directory(tmp_path):
    out = tmp_path / "market"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not empty") as caught:
        synthesize_market(str(out), num_ids=4, num_cams=2)
    assert str(out) in str(caught.value)
    assert os.listdir(out) == ["precious.txt"]
    assert sorted(os.listdir(tmp_path)) == ["market"]


def test_writes_into_an_existing_empty_directory(tmp_path):
    out = tmp_path / "market"
    out.mkdir()
    assert synthesize_market(str(out), num_ids=4, num_cams=2, images_per_id_per_cam=1) == str(out)
    assert load_dataset(str(out)).num_classes == 2


@pytest.mark.parametrize("kwargs, flag", [
    (dict(num_cams=1), "--cams"),
    (dict(num_ids=1), "--ids"),
    (dict(num_ids=10000), "--ids"),
    (dict(seed=-1), "--seed"),
    (dict(images_per_id_per_cam=0), "images_per_id_per_cam"),
    (dict(image_size=(16, 8)), "image_size"),
    (dict(num_distractors=-1), "num_distractors"),
    (dict(num_ids=4.5), "--ids"),
])
def test_bad_arguments_name_the_argument(tmp_path, kwargs, flag):
    with pytest.raises(UserError, match=flag):
        synthesize_market(str(tmp_path / "market"), **kwargs)
    assert not (tmp_path / "market").exists()


def test_small_run_loads_with_the_dataset_loader(tmp_path):
    """Ten identities, three splits, the reader's view of it (a smoke test, not a timing)."""
    out = synthesize_market(str(tmp_path / "tiny"), num_ids=10, num_cams=3)
    dataset = load_dataset(out)
    assert dataset.num_classes == 5
    labels, _ = dataset.relabel()
    assert labels.min() == 0 and labels.max() == 4


def test_default_dir_uses_the_cache_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("AAA_KERAS_CACHE", str(tmp_path / "cache"))
    assert default_synthetic_dir(12, 3, 7) == str(
        tmp_path / "cache" / "synthetic-market-v1-ids12-cams3-seed7")


def test_default_cache_is_under_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("AAA_KERAS_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_synthetic_dir() == str(
        tmp_path / ".cache" / "aaa_keras" / "synthetic-market-v1-ids40-cams4-seed0")


def test_ensure_synthetic_writes_once_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("AAA_KERAS_CACHE", str(tmp_path / "cache"))
    messages = []
    path = ensure_synthetic(num_ids=4, num_cams=2, seed=3, log=messages.append)
    assert path == default_synthetic_dir(4, 2, 3)
    assert messages[0].startswith("Built-in synthetic dataset: writing") and "(once)" in messages[0]
    hashes = file_hashes(path)

    messages.clear()
    assert ensure_synthetic(num_ids=4, num_cams=2, seed=3, log=messages.append) == path
    assert messages == [f"Using cached built-in synthetic dataset at {path}"]
    assert file_hashes(path) == hashes
