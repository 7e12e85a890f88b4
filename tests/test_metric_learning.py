"""XQDA and KISSME on a synthetic problem where Euclidean distance fails."""

import itertools

import numpy as np
import pytest

from aaa_keras.errors import UserError
from aaa_keras.evaluation import KISSME, XQDA, euclidean_distance, evaluate_rank
from aaa_keras.evaluation.metric_learning import pair_covariances

FEATURE_DIM = 40
SIGNAL_DIM = 3  # identities differ only along these directions
NUISANCE_STD = 3.0  # per-image noise elsewhere, much larger than the signal
SIGNAL_NOISE_STD = 0.2
NUM_CAMERAS = 4


def make_split(rng, identity_means, ids, images_per_id, rotation):
    """Features of ``ids``: class signal in a hidden 3-d subspace plus large nuisance."""
    pids = np.repeat(ids, images_per_id)
    latent = NUISANCE_STD * rng.normal(size=(len(pids), FEATURE_DIM))
    latent[:, :SIGNAL_DIM] = identity_means[pids] + SIGNAL_NOISE_STD * rng.normal(
        size=(len(pids), SIGNAL_DIM)
    )
    camids = np.tile(np.arange(images_per_id) % NUM_CAMERAS, len(ids))
    return (latent @ rotation).astype(np.float32), pids, camids


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(FEATURE_DIM, FEATURE_DIM)))
    identity_means = rng.normal(size=(200, SIGNAL_DIM))
    train = make_split(rng, identity_means, np.arange(100), 6, rotation)
    query = make_split(rng, identity_means, np.arange(100, 200), 1, rotation)
    gallery_features, gallery_pids, gallery_camids = make_split(
        rng, identity_means, np.arange(100, 200), 4, rotation
    )
    gallery = (gallery_features, gallery_pids, gallery_camids + 1)  # queries are camera 0
    return {"train": train, "query": query, "gallery": gallery}


def mean_average_precision(distmat, problem):
    _, q_pids, q_camids = problem["query"]
    _, g_pids, g_camids = problem["gallery"]
    return evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)["mAP"]


@pytest.fixture(scope="module")
def fitted(problem):
    return {
        "xqda": XQDA().fit(*problem["train"]),
        "kissme": KISSME().fit(*problem["train"]),
    }


@pytest.mark.parametrize("name", ["xqda", "kissme"])
def test_learned_metric_beats_euclidean(name, problem, fitted):
    qf, gf = problem["query"][0], problem["gallery"][0]
    euclidean_map = mean_average_precision(euclidean_distance(qf, gf), problem)
    learned_map = mean_average_precision(fitted[name].distance(qf, gf), problem)
    assert euclidean_map < 0.1
    assert learned_map > euclidean_map + 0.3


@pytest.mark.parametrize("name", ["xqda", "kissme"])
def test_distances_finite_and_symmetric(name, problem, fitted):
    features = problem["gallery"][0]
    distances = fitted[name].distance(features, features)
    assert distances.dtype == np.float32
    assert distances.shape == (len(features), len(features))
    assert np.isfinite(distances).all()
    scale = np.abs(distances).max()
    np.testing.assert_allclose(distances, distances.T, atol=1e-5 * scale)
    np.testing.assert_allclose(np.diag(distances), 0.0, atol=1e-5 * scale)


def test_kissme_kernel_is_positive_semidefinite(fitted):
    kernel = fitted["kissme"].kernel
    np.testing.assert_allclose(kernel, kernel.T)
    eigenvalues = np.linalg.eigvalsh(kernel)
    assert eigenvalues.min() >= -1e-10 * eigenvalues.max()


def test_xqda_keeps_eigenvalues_above_one_and_respects_cap(problem, fitted):
    kept = fitted["xqda"].kernel.shape[0]
    assert SIGNAL_DIM <= kept < FEATURE_DIM
    assert XQDA(max_dim=2).fit(*problem["train"]).kernel.shape == (2, 2)


@pytest.mark.parametrize("name", ["xqda", "kissme"])
def test_embedding_reproduces_distance(name, problem, fitted):
    qf, gf = problem["query"][0], problem["gallery"][0]
    model = fitted[name]
    direct = model.distance(qf, gf)
    embedded = euclidean_distance(model.embed(qf), model.embed(gf))
    np.testing.assert_allclose(embedded, direct, rtol=1e-3, atol=1e-4 * direct.max())


@pytest.mark.parametrize("model_class", [XQDA, KISSME])
def test_save_load_round_trip(model_class, problem, tmp_path):
    model = model_class(pca_dim=20, ridge=1e-2).fit(*problem["train"])
    path = tmp_path / f"{model_class.kind}.npz"
    model.save(path)
    restored = model_class.load(path)
    assert restored.pca_dim == 20 and restored.ridge == 1e-2
    assert restored.fingerprint == model.fingerprint
    qf, gf = problem["query"][0], problem["gallery"][0]
    np.testing.assert_array_equal(restored.distance(qf, gf), model.distance(qf, gf))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_load_rejects_other_kind_and_corrupt_file(problem, tmp_path):
    path = tmp_path / "model.npz"
    KISSME().fit(*problem["train"]).save(path)
    with pytest.raises(UserError, match="kissme"):
        XQDA.load(path)
    path.write_bytes(b"not a zip file")
    with pytest.raises(UserError, match="the fitted kissme model is damaged"):
        KISSME.load(path)


def test_pca_dimension_is_capped_by_samples_and_features(problem):
    features, pids, camids = problem["train"]
    assert KISSME(pca_dim=500).fit(features, pids, camids).kernel.shape == (FEATURE_DIM,) * 2
    few = slice(0, 12)  # two identities, 12 images -> at most 11 dimensions
    assert KISSME(pca_dim=500).fit(features[few], pids[few], camids[few]).kernel.shape == (11, 11)


def brute_force_covariances(features, pids, views):
    similar, dissimilar = [], []
    for i, j in itertools.permutations(range(len(features)), 2):
        if views[i] == views[j]:
            continue
        difference = np.outer(features[i] - features[j], features[i] - features[j])
        (similar if pids[i] == pids[j] else dissimilar).append(difference)
    return np.mean(similar, axis=0), np.mean(dissimilar, axis=0)


@pytest.mark.parametrize("use_cameras", [True, False])
def test_closed_form_pair_covariances_match_enumeration(use_cameras):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(23, 5))
    pids = rng.integers(0, 5, 23)
    views = rng.integers(0, 3, 23) if use_cameras else np.arange(23)
    expected = brute_force_covariances(features, pids, views)
    for got, want in zip(pair_covariances(features, pids, views), expected):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_errors_are_clear(problem):
    features, pids, camids = problem["train"]
    with pytest.raises(UserError, match="not fitted"):
        XQDA().distance(features, features)
    with pytest.raises(UserError, match="train pids"):
        XQDA().fit(features, pids[:-1], camids)
    with pytest.raises(UserError, match="no similar pairs"):
        KISSME().fit(features[:10], np.arange(10), camids[:10])
    model = KISSME().fit(features, pids, camids)
    with pytest.raises(UserError, match="fitted on 40-d"):
        model.distance(features[:, :10], features[:, :10])
