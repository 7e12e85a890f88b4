"""The HNSW gallery index types (``pca-hnsw``, ``pca-hnsw-sq8``): build, search, efSearch, save / load, append.

Fed L2-normalised low-rank clustered vectors (no model, no TensorFlow), as
tests/test_search_index.py does for the IVF types. Recall / speed / memory
at scale: benchmarks/bench_search.py (docs/benchmarks.md).
"""

import os

import numpy as np
import pytest

from aaa_keras.deploy import index_types
from aaa_keras.deploy.gallery import GalleryIndex
from aaa_keras.errors import UserError

DIM, RANK = 64, 24
HNSW_TYPES = ("pca-hnsw", "pca-hnsw-sq8")


def _clustered(count, seed, identities=150):
    """Re-ID-like: identity centres in a RANK-dimensional subspace (as trained features: most variance in
    few directions), crops around them, a small isotropic floor, a common offset (mean cosine of two
    unrelated crops about 0.5, as measured on trained runs); rows of identity ``i % identities``."""
    basis = np.linalg.qr(np.random.default_rng(99).normal(size=(DIM, RANK)))[0].T
    centres = np.random.default_rng(98).normal(size=(identities, RANK))
    rng = np.random.default_rng(seed)
    latent = centres[np.arange(count) % identities] + 0.4 * rng.normal(size=(count, RANK))
    offset = np.random.default_rng(97).normal(size=DIM)  # the common offset of trained (ReLU-pooled) features
    values = latent @ basis + 0.02 * rng.normal(size=(count, DIM)) + 5.0 * offset / np.linalg.norm(offset)
    return (values / np.linalg.norm(values, axis=1, keepdims=True)).astype(np.float32)


def _rows(count, start=0):
    return [{"path": f"/g/{i:05d}.jpg", "file": f"{i:05d}.jpg", "gallery_dir": "/g", "pid": None, "camid": None,
             "time": "2024-06-01T12:00:00+00:00"} for i in range(start, start + count)]


def _recall(found, queries, vectors):
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    return np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])


def _ef_search(gallery_index):
    return index_types._hnsw(gallery_index._load()).hnsw.efSearch


@pytest.mark.parametrize("index_type", HNSW_TYPES)
def test_hnsw_types_find_the_exact_top_10_and_reopen_the_same(index_type, tmp_path):
    vectors, queries = _clustered(3000, 0), _clustered(60, 1)
    index = GalleryIndex.create(str(tmp_path / "g"), vectors, _rows(3000), index_type=index_type, pca=32,
                                ef_search=48)
    assert index.info["pca"] == "32" and index.info["ef_search"] == "48" and index.info.get("nlist") is None
    scores, found = index.search(queries, 10)
    assert _ef_search(index) == 48  # the stored efSearch is the one searched with
    assert _recall(found, queries, vectors) >= 0.95
    for q in range(len(queries)):  # scores are cosines (L2 turned back), those of the vectors found
        np.testing.assert_allclose(scores[q], queries[q] @ vectors[found[q]].T, atol=0.03)
    reopened = GalleryIndex(str(tmp_path / "g"))  # from disk: the same graph, the same results
    np.testing.assert_array_equal(reopened.search(queries, 10)[1], found)
    bytes_per_vector = os.path.getsize(tmp_path / "g" / "vectors.0.faiss") / 3000
    # PCA-32 floats (128 B) or 8-bit codes (32 B) + 2 x 32 links x 4 B at level 0, against 256 B of exact;
    # plus the PCA matrix (64 x 64 floats) spread over 3000 vectors
    assert bytes_per_vector < {"pca-hnsw": 420, "pca-hnsw-sq8": 330}[index_type], bytes_per_vector


def test_ef_search_given_to_search_overrides_the_stored_one(tmp_path):
    vectors, queries = _clustered(1000, 0), _clustered(20, 1)
    index = GalleryIndex.create(str(tmp_path / "g"), vectors, _rows(1000), index_type="pca-hnsw", pca=32)
    assert index.info["ef_search"] == str(index_types.DEFAULT_EF_SEARCH)
    index.search(queries, 10, ef_search=7)
    assert _ef_search(index) == 7
    index.search(queries, 10)
    assert _ef_search(index) == index_types.DEFAULT_EF_SEARCH
    with pytest.raises(UserError, match=r"--ef-search: expected a positive integer, got 0"):
        index.search(queries, 10, ef_search=0)


@pytest.mark.parametrize("index_type", HNSW_TYPES)
def test_append_links_the_new_vectors_into_the_graph(index_type, tmp_path):
    vectors = _clustered(1500, 0)
    index = GalleryIndex.create(str(tmp_path / "g"), vectors[:1000], _rows(1000), index_type=index_type, pca=32)
    assert index.append(vectors[1000:], _rows(500, start=1000)) == 500
    # a graph append writes a new base (a delta would be re-inserted into the graph on every open)
    assert not list((tmp_path / "g").glob("delta.*"))
    reopened = GalleryIndex(str(tmp_path / "g"))
    assert reopened.size == 1500
    found = reopened.search(vectors[1000:1100], 1)[1][:, 0]  # a new vector is its own nearest neighbour
    assert np.mean(found == np.arange(1000, 1100)) >= 0.95
    queries = _clustered(40, 1)
    assert _recall(reopened.search(queries, 10)[1], queries, vectors) >= 0.95


def test_a_small_gallery_is_refused_with_the_reason(tmp_path):
    with pytest.raises(UserError, match=r"pca-hnsw: needs at least 256 images .* has 100; use --index-type exact"):
        GalleryIndex.create(str(tmp_path / "g"), _clustered(100, 0), _rows(100), index_type="pca-hnsw")
    with pytest.raises(UserError, match=r"--ef-search: expected a positive integer, got 0"):
        GalleryIndex.create(str(tmp_path / "g"), _clustered(300, 0), _rows(300), index_type="pca-hnsw", ef_search=0)
    assert not os.path.exists(tmp_path / "g")
