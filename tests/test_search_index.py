"""The gallery index (FAISS + SQLite) on random vectors: exact = brute force, the approximate types, append.

No model and no TensorFlow here: ``aaa_keras.deploy.gallery`` is fed
L2-normalised random vectors. Appends in depth (delta files, compaction, a
kill at every point, two at once) are in tests/test_index_append.py; the
model-level tests (index a folder with an exported model, ``--append``,
search) in tests/test_export.py.
"""

import os
import sqlite3

import numpy as np
import pytest

from aaa_keras.deploy import gallery
from aaa_keras.deploy.gallery import GalleryIndex
from aaa_keras.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM = 32


def _vectors(count, seed, dim=DIM, clusters=None):
    rng = np.random.default_rng(seed)
    if clusters:  # re-ID-like: several images per identity around its centre
        centres = rng.normal(size=(clusters, dim))
        values = centres[rng.integers(0, clusters, count)] + 0.35 * rng.normal(size=(count, dim))
    else:
        values = rng.normal(size=(count, dim))
    return (values / np.linalg.norm(values, axis=1, keepdims=True)).astype(np.float32)


def _rows(count, start=0, folder="/gallery"):
    return [{"path": f"{folder}/{i:05d}.jpg", "file": f"{i:05d}.jpg", "gallery_dir": folder, "pid": i % 7,
             "camid": 1 + i % 3, "time": "2024-06-01T12:00:00+00:00"} for i in range(start, start + count)]


def _brute_force(queries, vectors, top):
    similarity = queries @ vectors.T
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :top]
    return np.take_along_axis(similarity, order, axis=1), order


def _meta_count(directory):
    connection = sqlite3.connect(os.path.join(directory, gallery.META_FILE))
    rows = connection.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    ntotal = int(connection.execute("SELECT value FROM meta WHERE key = 'ntotal'").fetchone()[0])
    connection.close()
    return rows, ntotal


def test_exact_index_returns_the_brute_force_top_k(tmp_path):
    vectors, queries = _vectors(3000, 0), _vectors(25, 1)
    index = GalleryIndex.create(str(tmp_path / "g"), vectors, _rows(3000))
    scores, ids = index.search(queries, 10)
    expected_scores, expected_ids = _brute_force(queries, vectors, 10)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    reopened = GalleryIndex(str(tmp_path / "g"))  # from disk: the same
    np.testing.assert_array_equal(reopened.search(queries, 10)[1], expected_ids)
    assert [row["file"] for row in reopened.rows(ids[0][:3])] == [f"{i:05d}.jpg" for i in expected_ids[0][:3]]
    assert sorted(os.listdir(tmp_path / "g")) == ["meta.sqlite", "vectors.0.faiss"]


def test_ivf_pq_is_approximate_and_nprobe_trades_speed_for_recall(tmp_path):
    vectors, queries = _vectors(3000, 2, clusters=300), _vectors(60, 3, clusters=300)
    index = GalleryIndex.create(str(tmp_path / "g"), vectors, _rows(3000), index_type="ivf-pq", nlist=32,
                                pq_m=16, nprobe=1)
    assert index.info["nlist"] == "32" and index.info["pq_m"] == "16"
    exact = _brute_force(queries, vectors, 10)[1]

    def recall(nprobe):
        found = index.search(queries, 10, nprobe=nprobe)[1]
        return np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])

    low, high = recall(1), recall(32)
    assert low < high and high >= 0.5, (low, high)
    assert os.path.getsize(tmp_path / "g" / "vectors.0.faiss") < 0.4 * vectors.nbytes  # 16 bytes vs 128 per image


def test_ivf_pq_on_a_small_gallery_is_refused_with_the_reason(tmp_path):
    with pytest.raises(UserError, match=r"ivf-pq: needs at least 256 images .* has 100; use --index-type exact"):
        GalleryIndex.create(str(tmp_path / "g"), _vectors(100, 0), _rows(100), index_type="ivf-pq")
    with pytest.raises(UserError, match=r"--pq-m 5: must divide the embedding size 32"):
        GalleryIndex.create(str(tmp_path / "g"), _vectors(300, 0), _rows(300), index_type="ivf-pq", pq_m=5)
    assert not os.path.exists(tmp_path / "g")


def test_append_adds_only_new_paths_and_keeps_the_old_results(tmp_path):
    old, new, queries = _vectors(500, 0), _vectors(200, 1), _vectors(10, 2)
    index = GalleryIndex.create(str(tmp_path / "g"), old, _rows(500))
    before_scores, before_ids = index.search(queries, 500)
    # 50 of the "new" rows repeat indexed paths: skipped, not added twice.
    rows = _rows(50) + _rows(150, start=500)
    assert index.append(new, rows) == 150
    assert index.size == 650 and _meta_count(str(tmp_path / "g")) == (650, 650)
    scores, ids = index.search(queries, 650)
    for q in range(len(queries)):  # the old images keep their order and scores among the results
        old_part = ids[q][ids[q] < 500]
        np.testing.assert_array_equal(old_part, before_ids[q])
        np.testing.assert_allclose(scores[q][ids[q] < 500], before_scores[q], atol=1e-6)
    # a new vector is found as its own nearest neighbour
    top = index.search(new[60:61], 1)[1][0, 0]
    assert index.rows([top])[0]["file"] == "00510.jpg" and index.rows([top])[0]["generation"] == 1
    assert sorted(os.listdir(tmp_path / "g")) == ["delta.1.faiss", "meta.sqlite", "vectors.0.faiss"]
    assert index.append(new[:50], _rows(50)) == 0  # nothing new: nothing written
    assert sorted(os.listdir(tmp_path / "g")) == ["delta.1.faiss", "meta.sqlite", "vectors.0.faiss"]


def test_an_exception_during_append_rolls_back_and_removes_the_new_file(tmp_path, monkeypatch):
    index = GalleryIndex.create(str(tmp_path / "g"), _vectors(100, 0), _rows(100))

    def interrupted(*_args):
        raise KeyboardInterrupt("Ctrl-C at the commit point")

    monkeypatch.setattr(gallery, "_commit_state", interrupted)
    with pytest.raises(KeyboardInterrupt):
        index.append(_vectors(20, 1), _rows(20, start=100))
    assert _meta_count(str(tmp_path / "g")) == (100, 100)
    assert sorted(os.listdir(tmp_path / "g")) == ["meta.sqlite", "vectors.0.faiss"]
    assert GalleryIndex(str(tmp_path / "g")).size == 100


@pytest.mark.parametrize("index_type", ["ivf-sq8", "pca-ivf-sq8", "pca-ivf-sq8-refine", "pca-ivf-sq8-refine-sq6"])
def test_the_sq8_types_find_the_exact_top_10_on_clustered_vectors(index_type, tmp_path):
    """Each type as `index` makes it (trained on a sample, its parameters stored), on re-ID-like clusters.
    The recall / speed / memory of every type at scale: benchmarks/bench_search.py."""
    both = _vectors(3040, 2, clusters=150)  # queries: new crops of the gallery's identities
    vectors, queries = both[:3000], both[3000:]
    index = GalleryIndex.create(str(tmp_path / "g"), vectors, _rows(3000), index_type=index_type, nlist=16,
                                pca=16, nprobe=4)
    assert index.info["nlist"] == "16" and index.info.get("pca") == ("16" if "pca" in index_type else None)
    found, exact = index.search(queries, 10)[1], _brute_force(queries, vectors, 10)[1]
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
    # PCA to half the dimensions loses neighbours; the refine stage (full-dimension distances) finds them back
    assert recall >= {"ivf-sq8": 0.97, "pca-ivf-sq8": 0.65, "pca-ivf-sq8-refine": 0.97,
                      "pca-ivf-sq8-refine-sq6": 0.93}[index_type], recall  # 4-bit refine codes: 0.87
    if "refine" in index_type:  # full-dimension 8- / 6-bit distances: nearly exact
        scores, ids = index.search(queries, 10)
        for q in range(len(queries)):
            np.testing.assert_allclose(scores[q], queries[q] @ vectors[ids[q]].T,
                                       atol=0.03 if index_type.endswith("sq6") else 0.02)


def test_an_inconsistent_or_foreign_directory_is_refused_with_its_name(tmp_path):
    directory = str(tmp_path / "g")
    GalleryIndex.create(directory, _vectors(50, 0), _rows(50))
    connection = sqlite3.connect(os.path.join(directory, gallery.META_FILE))
    connection.execute("DELETE FROM images WHERE id = 3")
    connection.commit()
    connection.close()
    with pytest.raises(UserError, match=r"--index .*g: inconsistent index: 49 rows in meta\.sqlite belong in vectors\.0\.faiss, "
                                            r"which holds 50 vectors"):
        GalleryIndex(directory).size
    (tmp_path / "old.npz").write_bytes(b"PK")
    with pytest.raises(UserError, match=r"old\.npz: not an index directory .*an \.npz index of an older version"):
        GalleryIndex(str(tmp_path / "old.npz"))
    with pytest.raises(UserError, match=r"already exists; add new crops to it with --append"):
        GalleryIndex.create(directory, _vectors(5, 0), _rows(5))
