"""evaluate_features: entries in percent, learned metrics fitted once and reused."""

import numpy as np
import pytest

from aaa_keras.errors import UserError
from aaa_keras.evaluation import (
    KISSME,
    XQDA,
    euclidean_distance,
    evaluate_features,
    evaluate_rank,
    format_table,
    l2_normalize,
)

ENTRY_KEYS = {"rank1", "rank5", "rank10", "mAP", "mINP", "num_query"}
NUM_CAMERAS = 3


def split(rng, centres, ids, images_per_id, camera_offset=0):
    pids = np.repeat(ids, images_per_id)
    features = centres[pids] + 0.8 * rng.normal(size=(len(pids), centres.shape[1]))
    camids = (np.tile(np.arange(images_per_id), len(ids)) + camera_offset) % NUM_CAMERAS
    return features.astype(np.float32), pids, camids


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(60, 24))
    train = split(rng, centres, np.arange(30), 4)
    query = split(rng, centres, np.arange(30, 60), 1)
    gallery = split(rng, centres, np.arange(30, 60), 3, camera_offset=1)
    return {"train": train, "query": query, "gallery": gallery}


def run(data, **kwargs):
    qf, q_pids, q_camids = data["query"]
    gf, g_pids, g_camids = data["gallery"]
    train_features, train_pids, train_camids = data["train"]
    return evaluate_features(
        qf, gf, q_pids, g_pids, q_camids, g_camids,
        train_features=train_features, train_pids=train_pids, train_camids=train_camids,
        **kwargs,
    )


def test_euclidean_entry_in_percent(data):
    results = run(data)
    assert list(results) == ["euclidean"]
    entry = results["euclidean"]
    assert set(entry) == ENTRY_KEYS
    assert entry["num_query"] == 30 and isinstance(entry["num_query"], int)
    for key in ENTRY_KEYS - {"num_query"}:
        assert isinstance(entry[key], float) and 0.0 <= entry[key] <= 100.0
    assert entry["rank1"] <= entry["rank5"] <= entry["rank10"]

    qf, q_pids, q_camids = data["query"]
    gf, g_pids, g_camids = data["gallery"]
    direct = evaluate_rank(
        euclidean_distance(l2_normalize(qf), l2_normalize(gf)), q_pids, g_pids, q_camids, g_camids
    )
    assert entry["rank1"] == pytest.approx(100 * direct["cmc"][0])
    assert entry["mAP"] == pytest.approx(100 * direct["mAP"])
    assert entry["mINP"] == pytest.approx(100 * direct["mINP"])


def test_three_metrics_with_rerank_give_six_entries_and_save_models(data, tmp_path):
    results = run(data, metrics="all", rerank=True, metric_dir=tmp_path)
    assert list(results) == [
        "euclidean", "euclidean+rerank", "xqda", "xqda+rerank", "kissme", "kissme+rerank",
    ]
    assert all(set(entry) == ENTRY_KEYS for entry in results.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kissme.npz", "xqda.npz"]
    table = format_table(results)
    assert len(table.splitlines()) == 2 + len(results)
    assert "Rank-1" in table and "mINP" in table and "kissme+rerank" in table


def test_fitted_model_is_reused(data, tmp_path, monkeypatch):
    first = run(data, metrics=("xqda", "kissme"), metric_dir=tmp_path)

    def refuse_to_fit(self, *args, **kwargs):
        raise AssertionError("the saved model should have been reused")

    monkeypatch.setattr(XQDA, "fit", refuse_to_fit)
    monkeypatch.setattr(KISSME, "fit", refuse_to_fit)
    assert run(data, metrics=("xqda", "kissme"), metric_dir=tmp_path) == first
    # Without training data, the saved model is all that is needed.
    qf, q_pids, q_camids = data["query"]
    gf, g_pids, g_camids = data["gallery"]
    alone = evaluate_features(
        qf, gf, q_pids, g_pids, q_camids, g_camids, metrics=("xqda",), metric_dir=tmp_path
    )
    assert alone["xqda"] == first["xqda"]


def test_model_fitted_on_other_training_data_is_replaced(data, tmp_path):
    run(data, metrics=("kissme",), metric_dir=tmp_path)
    saved = KISSME.load(tmp_path / "kissme.npz")
    features, pids, camids = data["train"]
    changed = {**data, "train": (features[::-1].copy(), pids[::-1].copy(), camids[::-1].copy())}
    run(changed, metrics=("kissme",), metric_dir=tmp_path)
    assert KISSME.load(tmp_path / "kissme.npz").fingerprint != saved.fingerprint


def test_learned_metric_without_training_data_or_model_is_an_error(data, tmp_path):
    qf, q_pids, q_camids = data["query"]
    gf, g_pids, g_camids = data["gallery"]
    with pytest.raises(UserError, match="training features"):
        evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metrics=("kissme",),
                          metric_dir=tmp_path)


def test_unknown_metric_and_bad_rerank_params_are_errors(data):
    with pytest.raises(UserError, match="cosine"):
        run(data, metrics=("cosine",))
    with pytest.raises(UserError, match="rerank_params"):
        run(data, rerank=True, rerank_params=(20, 6))


def test_label_length_mismatch_names_the_arrays(data):
    qf, q_pids, q_camids = data["query"]
    gf, g_pids, g_camids = data["gallery"]
    with pytest.raises(UserError, match="g_camids has 89 entries but gf has 90 rows"):
        evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids[:-1])
