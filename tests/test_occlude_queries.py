"""`evaluate --occlude-queries SEED` (evaluation/occluded.py, evaluation/run.py): the same images
twice with one seed, only query images change, clean and occluded results side by side; a
dataset with clean twins (builtin:occluded) is reported both ways."""

import hashlib
import os

import cv2
import numpy as np
import pytest

from aaa_keras.data import occluders
from aaa_keras.data.layouts import load_dataset
from aaa_keras.data.synth import synthesize_market
from aaa_keras.errors import UserError
from aaa_keras.evaluation import occluded


def digest(paths):
    out = {}
    for path in paths:
        with open(path, "rb") as f:
            out[os.path.basename(path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_same_seed_gives_the_same_images_and_another_seed_others(tiny_data, tmp_path):
    queries = load_dataset(tiny_data).query
    first, fraction = occluded.write_occluded_queries(queries, 3, str(tmp_path / "a"), tiny_data)
    second, _ = occluded.write_occluded_queries(list(reversed(queries)), 3, str(tmp_path / "b"), tiny_data)
    other, _ = occluded.write_occluded_queries(queries, 4, str(tmp_path / "c"), tiny_data)

    def by_query(originals, written):  # digest of each generated file, keyed by its query
        return {o.path: list(digest([w.path]).values())[0] for o, w in zip(originals, written)}
    assert by_query(queries, first) == by_query(list(reversed(queries)), second)  # order does not matter
    assert by_query(queries, first) != by_query(queries, other)
    assert [(r.pid, r.camid) for r in first] == [(r.pid, r.camid) for r in queries]
    assert 0.2 - occluders.TOLERANCE <= fraction <= 0.5 + occluders.TOLERANCE


def test_an_occluded_query_differs_from_its_original_only_inside_a_20_to_50_percent_region(tiny_data, tmp_path):
    queries = load_dataset(tiny_data).query
    written, _ = occluded.write_occluded_queries(queries, 0, str(tmp_path), tiny_data)
    size = cv2.imread(queries[0].path).shape[:2]
    clean = pipeline_pixels([r.path for r in queries], size)  # as the model receives them
    occl = pipeline_pixels([r.path for r in written], size)
    for original, before, after in zip(queries, clean, occl):
        differs = np.any(before != after, axis=2).mean()
        assert 0.2 - 0.05 <= differs <= 0.5 + occluders.TOLERANCE, original.path


def pipeline_pixels(paths, image_size):
    """The pixels the model receives: evaluation's own loading path (data.pipeline.eval_dataset)."""
    from aaa_keras.data.pipeline import eval_dataset

    return np.concatenate([batch.numpy() for batch in eval_dataset(list(paths), image_size)])


def test_outside_the_occluder_the_model_receives_the_clean_querys_exact_pixels(tiny_data, tmp_path):
    """Clean and occluded queries share one decoder: through the evaluation pipeline they differ
    inside the occluder's mask only (a change of JPEG decoder would alter most other pixels)."""
    queries = load_dataset(tiny_data).query[:4]
    written, _ = occluded.write_occluded_queries(queries, 0, str(tmp_path), tiny_data)
    size = cv2.imread(queries[0].path).shape[:2]  # native size: the resize is the identity
    clean = pipeline_pixels([r.path for r in queries], size)
    occl = pipeline_pixels([r.path for r in written], size)
    for i, record in enumerate(queries):
        mask = occluded.occlude_query_file(record.path, 0, tiny_data).mask
        np.testing.assert_array_equal(occl[i][~mask], clean[i][~mask], err_msg=record.path)
        assert np.any(occl[i][mask] != clean[i][mask])


def test_same_named_queries_in_different_folders_get_their_own_occluders(tiny_data, tmp_path):
    """A folder layout (<id>/<cam>/0.jpg) repeats file names: the occluder is seeded by the path
    relative to the dataset root, and the scratch names carry the query's index."""
    import shutil

    from aaa_keras.data.names import ImageRecord

    source = load_dataset(tiny_data).query[0].path
    root = tmp_path / "folders"
    records = []
    for pid in (1, 2):
        (root / str(pid) / "c1").mkdir(parents=True)
        shutil.copy(source, root / str(pid) / "c1" / "0.jpg")
        records.append(ImageRecord(str(root / str(pid) / "c1" / "0.jpg"), pid, 1))
    written, _ = occluded.write_occluded_queries(records, 0, str(tmp_path / "scratch"), str(root))
    first, second = (cv2.imread(r.path) for r in written)
    assert not np.array_equal(first, second)  # same pixels in, different occluders out
    assert [(r.pid, r.camid) for r in written] == [(1, 1), (2, 1)]
    moved = tmp_path / "elsewhere"  # the seed does not depend on where the dataset lies
    shutil.copytree(root, moved)
    again, _ = occluded.write_occluded_queries(
        [ImageRecord(r.path.replace(str(root), str(moved)), r.pid, r.camid) for r in reversed(records)],
        0, str(tmp_path / "scratch2"), str(moved))
    assert digest([again[1].path]).popitem()[1] == digest([written[0].path]).popitem()[1]


def fake_extract(calls):
    """extract_embeddings without TensorFlow: 8x4 mean-colour features of each image as stored."""
    def extract(embedder, records, image_size, batch_size=64):
        calls.append([r.path for r in records])
        rows = [cv2.resize(cv2.imread(r.path), (4, 8), interpolation=cv2.INTER_AREA).ravel() for r in records]
        return np.asarray(rows, np.float32)
    return extract


def run_evaluation(monkeypatch, root, seed):
    """evaluate's query / gallery evaluation (evaluation/run.py hands it its embedder), with
    :func:`fake_extract` for the embedder: no TensorFlow."""
    calls = []
    extract = fake_extract(calls)
    logged = []
    results = occluded.evaluate_queries(lambda records: extract(None, records, (64, 32)), load_dataset(root), root,
                                        ("euclidean",), False, {}, seed, logged.append)
    return results, calls, "\n".join(logged)


def test_only_query_images_change_and_both_results_are_reported(tiny_data, monkeypatch, tmp_path):
    dataset = load_dataset(tiny_data)
    before = digest(r.path for r in dataset.query + dataset.gallery + dataset.train)
    results, calls, output = run_evaluation(monkeypatch, tiny_data, 0)
    queries_as_given, generated, gallery = calls
    assert queries_as_given == [r.path for r in dataset.query]
    assert gallery == [r.path for r in dataset.gallery]  # the gallery as stored, untouched
    assert [os.path.splitext(os.path.basename(p))[0] for p in generated] == \
        [f"{i}_" + os.path.splitext(os.path.basename(r.path))[0] for i, r in enumerate(dataset.query)]
    assert all(not os.path.exists(p) for p in generated)  # scratch removed afterwards
    assert digest(r.path for r in dataset.query + dataset.gallery + dataset.train) == before
    entry = results["occlusion"]
    assert entry["source"] == "occlude-queries" and entry["seed"] == 0
    assert entry["clean"]["euclidean"] == results["euclidean"]
    assert entry["drop"]["euclidean"]["mAP"] == pytest.approx(
        entry["clean"]["euclidean"]["mAP"] - entry["occluded"]["euclidean"]["mAP"], abs=1e-3)
    assert entry["clean"]["euclidean"]["mAP"] != entry["occluded"]["euclidean"]["mAP"]
    assert "Clean queries" in output and "Occluded queries" in output and "drop" in output
    again, _, _ = run_evaluation(monkeypatch, tiny_data, 0)
    assert again["occlusion"]["occluded"] == entry["occluded"]  # same seed, same result


def test_a_dataset_with_clean_twins_reports_both_and_refuses_a_second_occlusion(monkeypatch, tmp_path):
    root = synthesize_market(str(tmp_path / "occluded"), num_ids=8, num_test_ids=5, num_cams=3,
                             images_per_id_per_cam=2, occluded=True)
    results, calls, output = run_evaluation(monkeypatch, root, None)
    assert results["occlusion"]["source"] == "dataset"
    assert all("query_clean" in p for p in calls[1])
    assert results["occlusion"]["occluded"]["euclidean"] == results["euclidean"]
    with pytest.raises(UserError, match="already occluded"):
        run_evaluation(monkeypatch, root, 1)


def test_no_pair_without_the_option_on_a_clean_dataset(tiny_data, tmp_path):
    assert occluded.query_pair(tiny_data, load_dataset(tiny_data).query, None, str(tmp_path)) is None
    with pytest.raises(UserError, match="--occlude-queries"):
        occluded.check_seed(-1)


def test_same_camera_ok_marks_the_clean_and_occluded_tables_too(tiny_data, monkeypatch):
    """`evaluate --same-camera-ok --occlude-queries N`: every table of the JSON carries the protocol."""
    from aaa_keras.evaluation.rank import SAME_CAMERA_OK, mark_same_camera_ok

    results, _, _ = run_evaluation(monkeypatch, tiny_data, 0)
    marked = mark_same_camera_ok(results)
    assert marked["euclidean"]["protocol"] == SAME_CAMERA_OK
    for table in ("clean", "occluded", "drop"):
        assert marked["occlusion"][table]["euclidean"]["protocol"] == SAME_CAMERA_OK, table
    assert marked["occlusion"]["seed"] == 0 and "protocol" not in results["occlusion"]["clean"]["euclidean"]
