"""The built-in synthetic dataset: layout, names, determinism, query/gallery protocol, cache."""

import collections
import hashlib
import os

import cv2
import pytest

from aaa_keras.data import synth
from aaa_keras.data.layouts import load_dataset
from aaa_keras.data.names import SPLITS, name_format, parse_name
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


def test_test_ids_and_queries_per_camera_shape_the_split(tmp_path):
    """``num_test_ids`` picks the test share; every test id gives q queries per non-gallery camera,
    keeps a same-camera gallery count of ``images_per_id_per_cam - 1``, and has a cross-camera match."""
    out = synthesize_market(str(tmp_path / "big_test"), num_ids=12, num_cams=3, seed=1,
                            images_per_id_per_cam=2, num_test_ids=9, queries_per_camera=3)
    splits = records_by_split(out)
    train_ids = {r.pid for r in splits["train"]}
    query_ids = {r.pid for r in splits["query"]}
    assert len(train_ids) == 3 and len(query_ids) == 9 and not train_ids & query_ids
    queries = collections.Counter((r.pid, r.camid) for r in splits["query"])
    gallery = collections.Counter((r.pid, r.camid) for r in splits["gallery"] if r.pid > 0)
    assert set(queries.values()) == {3}
    for pid in query_ids:
        cams = {cam for p, cam in gallery if p == pid}
        query_cams = {cam for p, cam in queries if p == pid}
        assert query_cams < cams  # one camera is gallery-only
        for cam in cams:
            assert gallery[pid, cam] == (1 if cam in query_cams else 2)
    # File names stay unique frames of their (pid, camera).
    names = [os.path.basename(r.path) for s in splits.values() for r in s]
    assert len(names) == len(set(names))


def test_default_split_is_unchanged_by_the_new_options(tmp_path):
    """Half the ids test, one query per camera: the files of earlier versions, byte for byte."""
    plain = synthesize_market(str(tmp_path / "plain"), num_ids=6, num_cams=2, seed=2)
    explicit = synthesize_market(str(tmp_path / "explicit"), num_ids=6, num_cams=2, seed=2,
                                 num_test_ids=3, queries_per_camera=1)
    with_info = file_hashes(explicit)
    without_info = file_hashes(plain)
    with_info.pop(synth.INFO_FILE), without_info.pop(synth.INFO_FILE)
    assert with_info == without_info


def test_builtin_names_resolve_to_settings_and_bad_names_are_refused():
    assert synth.builtin_settings("") == synth.BUILTIN_SIZES["demo"]
    assert synth.builtin_settings("builtin:ablate")["num_test_ids"] >= 200
    assert synth.builtin_settings("/data/market") is None
    with pytest.raises(UserError, match="builtin:nope"):
        synth.builtin_settings("builtin:nope")


def test_ablate_size_plans_enough_test_ids_and_queries():
    """The size `ablate` uses by default: >= 200 test identities and >= 1000 queries (issue 11)."""
    settings = synth.BUILTIN_SIZES["ablate"]
    shots = synth._plan(settings["num_ids"], settings["num_cams"], synth.DEFAULT_SEED,
                        synth.DEFAULT_IMAGES_PER_ID_PER_CAM, 0, 0, settings["num_test_ids"],
                        settings["queries_per_camera"])
    query_pids = {s.pid for s in shots if s.split == "query"}
    assert len(query_pids) >= 200
    assert sum(s.split == "query" for s in shots) >= 1000
