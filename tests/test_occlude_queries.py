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
    first, fraction = occluded.write_occluded_queries(queries, 3, str(tmp_path / "a"))
    second, _ = occluded.write_occluded_queries(list(reversed(queries)), 3, str(tmp_path / "b"))
    other, _ = occluded.write_occluded_queries(queries, 4, str(tmp_path / "c"))
    assert digest(r.path for r in first) == digest(r.path for r in second)  # order does not matter
    assert digest(r.path for r in first) != digest(r.path for r in other)
    assert [(r.pid, r.camid) for r in first] == [(r.pid, r.camid) for r in queries]
    assert 0.2 - occluders.TOLERANCE <= fraction <= 0.5 + occluders.TOLERANCE


def test_an_occluded_query_differs_from_its_original_only_inside_a_20_to_50_percent_region(tiny_data, tmp_path):
    queries = load_dataset(tiny_data).query
    written, _ = occluded.write_occluded_queries(queries, 0, str(tmp_path))
    for original, changed in zip(queries, written):
        before, after = cv2.imread(original.path), cv2.imread(changed.path)
        differs = np.any(before != after, axis=2).mean()
        assert 0.2 - 0.05 <= differs <= 0.5 + occluders.TOLERANCE, original.path


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
        [os.path.splitext(os.path.basename(r.path))[0] for r in dataset.query]
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
