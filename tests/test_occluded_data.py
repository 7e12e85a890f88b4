"""builtin:occluded (data/synth.py + data/occlusion_protocol.py): every query occluded over
20-50 %, about 10 % of the gallery and a few training images, clean twins of the queries,
occlusion.json; the full size checked on its plan (no rendering)."""

import hashlib
import os

import cv2
import numpy as np
import pytest

from aaa_keras.data import occluders, occlusion_protocol, synth
from aaa_keras.data.layouts import load_dataset
from aaa_keras.data.names import SPLITS
from aaa_keras.data.synth import synthesize_market


@pytest.fixture(scope="module")
def occluded_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("occluded") / "market"
    return synthesize_market(str(out), num_ids=24, num_test_ids=10, num_cams=4, images_per_id_per_cam=2,
                             occluded=True)


def test_every_query_is_occluded_within_the_range_and_has_a_clean_twin(occluded_dir):
    record = occlusion_protocol.read_occlusion(occluded_dir)
    queries = sorted(os.listdir(os.path.join(occluded_dir, SPLITS["query"])))
    assert record["occluded"]["query"] == queries
    assert sorted(os.listdir(os.path.join(occluded_dir, occlusion_protocol.CLEAN_QUERY_DIR))) == queries
    low, high = occlusion_protocol.FRACTION_RANGE
    for name in queries:
        assert low - occluders.TOLERANCE <= record["fraction"]["query"][name] <= high + occluders.TOLERANCE
        occluded = cv2.imread(os.path.join(occluded_dir, SPLITS["query"], name)).astype(int)
        clean = cv2.imread(os.path.join(occluded_dir, occlusion_protocol.CLEAN_QUERY_DIR, name)).astype(int)
        changed = np.abs(occluded - clean).max(axis=2) > 40  # the occluder, not JPEG noise
        assert 0.5 * low < changed.mean() <= high + 0.1, name
    assert record["counts"]["query"] == {"occluded": len(queries), "total": len(queries)}
    assert record["generator"]["probability"]["query"] == 1.0


def test_some_gallery_and_training_images_are_occluded_and_listed(occluded_dir):
    record = occlusion_protocol.read_occlusion(occluded_dir)
    for split in ("gallery", "train"):
        names = set(os.listdir(os.path.join(occluded_dir, SPLITS[split])))
        listed = record["occluded"][split]
        assert set(listed) <= names and len(listed) == len(set(listed))
        assert record["counts"][split]["total"] == len(names)
        assert 0 < len(listed) < 0.3 * len(names), split
        assert set(record["fraction"][split]) == set(listed)
    dataset = load_dataset(occluded_dir)  # the extra folder and file do not disturb the loader
    assert len(dataset.query) == len(record["occluded"]["query"])


def test_same_seed_gives_byte_identical_files_and_record(tmp_path):
    def digest(root):
        result = {}
        for directory, _, names in os.walk(root):
            for name in names:
                with open(os.path.join(directory, name), "rb") as f:
                    result[os.path.relpath(os.path.join(directory, name), root)] = hashlib.sha256(f.read()).hexdigest()
        return result
    kwargs = dict(num_ids=6, num_test_ids=3, num_cams=2, images_per_id_per_cam=2, occluded=True)
    first = synthesize_market(str(tmp_path / "a"), **kwargs)
    second = synthesize_market(str(tmp_path / "b"), **kwargs)
    assert digest(first) == digest(second)
    assert occlusion_protocol.OCCLUSION_FILE in digest(first)


def test_full_size_plan_has_the_counts_and_shares():
    """builtin:occluded itself, on the plan ensure_synthetic writes (synth.builtin_plan, no rendering):
    >= 200 test ids, >= 1000 queries, all occluded; 8-12 % of the gallery."""
    settings, shots = synth.builtin_plan("occluded")
    assert settings["occluded"] is True
    queries = [s for s in shots if s.split == "query"]
    assert len({s.pid for s in queries}) >= 200 and len(queries) >= 1000
    share = {}
    for split in ("query", "gallery", "train"):
        decisions = [occlusion_protocol.shot_decision(settings["seed"], s)[0] for s in shots if s.split == split]
        share[split] = np.mean([d is not None for d in decisions])
        assert all(d is None or 0.2 <= d <= 0.5 for d in decisions)
    assert share["query"] == 1.0
    assert 0.08 <= share["gallery"] <= 0.12
    assert 0.04 <= share["train"] <= 0.10


def test_builtin_plan_is_what_ensure_synthetic_writes(monkeypatch, tmp_path):
    """ensure_synthetic's call to synthesize_market plans exactly synth.builtin_plan's shots."""
    planned = []

    def capture(out_dir, **kwargs):
        kwargs.pop("occluded")
        planned.append(synth.plan_dataset(**kwargs))
        return out_dir
    monkeypatch.setenv("AAA_KERAS_CACHE", str(tmp_path))
    monkeypatch.setattr(synth, "synthesize_market", capture)
    synth.ensure_synthetic(log=lambda m: None, **synth.builtin_settings("builtin:occluded"))
    settings, shots = synth.builtin_plan("occluded")
    assert planned[0][1] == shots and {**planned[0][0], "occluded": True} == settings


def test_registered_beside_demo_and_ablate_with_its_own_cache_directory():
    assert synth.builtin_settings("builtin:occluded") == synth.BUILTIN_SIZES["occluded"]
    occluded = synth.default_synthetic_dir(**synth.BUILTIN_SIZES["occluded"])
    ablate = synth.default_synthetic_dir(**synth.BUILTIN_SIZES["ablate"])
    assert occluded != ablate
    assert os.path.basename(ablate) == "synthetic-market-v1-ids60+250-cams4-q3-seed0"  # unchanged


def test_clean_twins_decode_like_their_queries_outside_the_occluders_jpeg_blocks(occluded_dir):
    """query/ and query_clean/ come from one rendered image, both JPEG (one encoder): through the
    pipeline's decoder they differ only inside the 16x16 JPEG blocks the occluder touches (+1 px
    of chroma upsampling); docs/decisions.md says why not bit-identical outside the mask."""
    import dataclasses

    import tensorflow as tf

    from aaa_keras.data.pipeline import decode_pixels

    info = synth.plan_dataset(num_ids=24, num_test_ids=10, num_cams=4, images_per_id_per_cam=2)
    shots = [s for s in info[1] if s.split == "query"][:6]
    size = synth.DEFAULT_IMAGE_SIZE
    cameras = {c: dataclasses.replace(synth._make_camera(0, c, (size[0] * synth._SUPERSAMPLE,
                                                                size[1] * synth._SUPERSAMPLE)),
                                      occluder_probability=0.0) for c in range(1, 5)}
    looks = synth._identity_looks(0, list(range(1, 25)))
    for shot in shots:
        mask = occlusion_protocol.occlude_shot(synth._render_shot(shot, 0, looks, cameras, size), 0, shot).mask
        query, clean = (decode_pixels(tf.io.read_file(os.path.join(occluded_dir, d, shot.file_name))).numpy()
                        for d in (SPLITS["query"], occlusion_protocol.CLEAN_QUERY_DIR))
        blocks = mask.reshape(size[0] // 16, 16, size[1] // 16, 16).any(axis=(1, 3)).repeat(16, 0).repeat(16, 1)
        near = cv2.dilate(blocks.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert not np.any((query != clean).any(axis=2) & ~near), shot.file_name
        assert np.any((query != clean).any(axis=2) & mask)
