"""`index --append` without rewriting: delta files, the compaction rule, a kill at every point, two appends at once.

No model and no TensorFlow: ``aaa_keras.deploy.gallery`` fed small random
vectors; the killed and the concurrent appends are real processes (Python
and FAISS only, about a second each). The same through the real CLI (with a
model) is in tests/faults/test_fault_index_append.py.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from aaa_keras.deploy import gallery
from aaa_keras.deploy.gallery import GalleryIndex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM = 16


def _vectors(count, seed, dim=DIM):
    values = np.random.default_rng(seed).normal(size=(count, dim))
    return (values / np.linalg.norm(values, axis=1, keepdims=True)).astype(np.float32)


def _rows(count, start=0):
    return [{"path": f"/g/{i:05d}.jpg", "file": f"{i:05d}.jpg", "gallery_dir": "/g", "pid": None, "camid": None,
             "time": None} for i in range(start, start + count)]


def _files(directory):
    return sorted(name for name in os.listdir(directory) if name != gallery.META_FILE)


def _state(directory):
    connection = sqlite3.connect(os.path.join(directory, gallery.META_FILE))
    try:
        state = gallery._state(connection)
        state["rows"] = connection.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        return state
    finally:
        connection.close()


def _brute_force_ids(queries, vectors, top):
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :top]


def test_an_append_writes_only_its_vectors_and_the_base_stays_untouched(tmp_path):
    directory = str(tmp_path / "g")
    base = _vectors(2000, 0)
    GalleryIndex.create(directory, base, _rows(2000))
    base_file = os.path.join(directory, "vectors.0.faiss")
    before = (os.stat(base_file).st_ino, os.stat(base_file).st_mtime_ns, open(base_file, "rb").read())
    new = _vectors(30, 1)
    assert GalleryIndex(directory).append(new, _rows(30, start=2000)) == 30
    assert _files(directory) == ["delta.1.faiss", "vectors.0.faiss"]
    assert (os.stat(base_file).st_ino, os.stat(base_file).st_mtime_ns, open(base_file, "rb").read()) == before
    # the delta holds the 30 new vectors only: 30 x 16 x 4 bytes and FAISS's header, not the 2030
    assert os.path.getsize(os.path.join(directory, "delta.1.faiss")) < 30 * DIM * 4 + 200
    everything, queries = np.concatenate([base, new]), _vectors(20, 2)
    index = GalleryIndex(directory)
    np.testing.assert_array_equal(index.search(queries, 10)[1], _brute_force_ids(queries, everything, 10))
    assert index.rows([2005])[0]["file"] == "02005.jpg" and index.rows([2005])[0]["generation"] == 1


def test_the_compaction_rule_merges_deltas_and_rewrites_the_base_when_the_index_has_doubled(tmp_path, monkeypatch):
    monkeypatch.setattr(gallery, "MAX_DELTAS", 3)
    directory = str(tmp_path / "g")
    vectors = [_vectors(100, 0)]
    GalleryIndex.create(directory, vectors[0], _rows(100))
    queries, expected_files = _vectors(10, 99), []
    # (vectors appended, files after): deltas pile up; the 4th delta is one too many -> one merged delta;
    # then the deltas reach the base's 100 -> a new base.
    plan = [(10, ["delta.1.faiss", "vectors.0.faiss"]),
            (10, ["delta.1.faiss", "delta.2.faiss", "vectors.0.faiss"]),
            (10, ["delta.1.faiss", "delta.2.faiss", "delta.3.faiss", "vectors.0.faiss"]),
            (10, ["delta.4.faiss", "vectors.0.faiss"]),
            (59, ["delta.4.faiss", "delta.5.faiss", "vectors.0.faiss"]),
            (1, ["vectors.6.faiss"]),
            (5, ["delta.7.faiss", "vectors.6.faiss"])]
    for generation, (count, expected_files) in enumerate(plan, start=1):
        start = sum(len(v) for v in vectors)
        vectors.append(_vectors(count, generation))
        assert GalleryIndex(directory).append(vectors[-1], _rows(count, start=start)) == count
        assert _files(directory) == expected_files, generation
        state = _state(directory)
        assert state["rows"] == state["ntotal"] == start + count and state["generation"] == generation
        everything = np.concatenate(vectors)
        np.testing.assert_array_equal(GalleryIndex(directory).search(queries, 15)[1],
                                      _brute_force_ids(queries, everything, 15))


@pytest.mark.parametrize("index_type", ["pca-ivf-sq8-refine", "pca-ivf-sq8-refine-sq6", "ivf-sq8",
                                        pytest.param("opq-ivf-pq-refine", marks=pytest.mark.slow)])  # OPQ: ~1 min
def test_deltas_of_a_trained_index_search_as_one_index_holding_every_vector(index_type, tmp_path):
    """Base + deltas merged at load = the trained index with every vector added at once (same results)."""
    directory = str(tmp_path / "g")
    first, second, third = _vectors(600, 0), _vectors(50, 1), _vectors(70, 2)
    index = GalleryIndex.create(directory, first, _rows(600), index_type=index_type, nlist=8, pca=8, pq_m=4,
                                nprobe=3)
    index.append(second, _rows(50, start=600))
    index.append(third, _rows(70, start=650))
    assert _files(directory) == ["delta.1.faiss", "delta.2.faiss", "trained.faiss", "vectors.0.faiss"]
    from aaa_keras.deploy.index_types import cosines, set_search_params

    import faiss

    reference = faiss.read_index(os.path.join(directory, "trained.faiss"))
    reference.add(np.concatenate([first, second, third]))
    set_search_params(reference, 3, gallery.DEFAULT_K_FACTOR)
    queries = _vectors(25, 3)
    scores, ids = GalleryIndex(directory).search(queries, 10)
    expected_scores, expected_ids = reference.search(queries, 10)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, cosines(reference, expected_scores), atol=1e-6)


# A killed append: the child appends 40 vectors and SIGKILLs itself at POINT.
_KILLED = """
import os, signal, sys
import numpy as np
from aaa_keras.deploy import gallery

directory, point, dim = sys.argv[1], sys.argv[2], int(sys.argv[3])

def die(*_args):
    os.kill(os.getpid(), signal.SIGKILL)

write_vectors, commit_state = gallery._write_vectors, gallery._commit_state
if point == "new_file_written":
    gallery._write_vectors = lambda index, path: (write_vectors(index, path), die())
elif point == "new_file_half_written":
    gallery._write_vectors = lambda index, path: (open(path, "wb").write(b"FAISS half"), die())
elif point == "rows_inserted_not_committed":
    gallery._commit_state = lambda connection, state: die()
elif point == "committed_not_cleaned_up":
    gallery.GalleryIndex._cleanup = lambda self: die()
vectors = np.random.default_rng(7).normal(size=(40, dim)).astype(np.float32)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
rows = [{"path": f"/new/{i}.jpg", "file": f"{i}.jpg", "gallery_dir": "/new", "pid": None, "camid": None,
         "time": None} for i in range(40)]
gallery.GalleryIndex(directory).append(vectors, rows)
"""

POINTS = ["new_file_written", "new_file_half_written", "rows_inserted_not_committed", "committed_not_cleaned_up"]


def _killed_vectors(dim=DIM):
    vectors = np.random.default_rng(7).normal(size=(40, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("compaction", [False, True], ids=["delta", "new-base"])
@pytest.mark.parametrize("point", POINTS)
def test_an_append_killed_at_any_point_leaves_the_old_or_the_new_index_whole(point, compaction, tmp_path):
    """Killed before the commit: the old index (rows rolled back, the orphan removed by the next append);
    after it: the new one. Rows = vectors either way; the results are brute force over what is committed."""
    directory = str(tmp_path / "g")
    base, older_delta = _vectors(100, 0), _vectors(70 if compaction else 10, 1)  # 70 + 40 >= 100: a new base
    index = GalleryIndex.create(directory, base, _rows(100))
    index.append(older_delta, _rows(len(older_delta), start=100))
    before = _files(directory)
    result = subprocess.run([sys.executable, "-c", _KILLED, directory, point, str(DIM)],
                            env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr

    committed = point == "committed_not_cleaned_up"
    expected = [base, older_delta] + ([_killed_vectors()] if committed else [])
    everything, queries = np.concatenate(expected), _vectors(10, 5)
    state = _state(directory)
    assert state["rows"] == state["ntotal"] == len(everything) and state["generation"] == 1 + committed
    index = GalleryIndex(directory)
    assert index.size == len(everything)
    np.testing.assert_array_equal(index.search(queries, 10)[1], _brute_force_ids(queries, everything, 10))
    if committed:  # the old files are still there until the next append's cleanup
        assert set(before) < set(_files(directory))
    # The next append removes what the killed one left behind and lands.
    extra = _vectors(5, 6)
    assert index.append(extra, _rows(5, start=1000)) == 5
    everything = np.concatenate([everything, extra])
    np.testing.assert_array_equal(GalleryIndex(directory).search(queries, 10)[1],
                                  _brute_force_ids(queries, everything, 10))
    state = _state(directory)
    assert _files(directory) == sorted(gallery._live_names(state)), _files(directory)
    assert not any(name.startswith("_partial_") for name in os.listdir(directory))


# Two appends started at the same moment. Each waits, after its commit and before its cleanup, until the
# other one has committed too: the window in which a cleanup by "every generation but mine" deletes the
# other's live file.
_CONCURRENT = """
import os, sqlite3, sys, time
import numpy as np
from aaa_keras.deploy import gallery

directory, seed, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
real_cleanup = gallery.GalleryIndex._cleanup

def cleanup_when_both_committed(self):
    deadline = time.time() + 60
    while time.time() < deadline:
        connection = sqlite3.connect(os.path.join(directory, "meta.sqlite"), timeout=60)
        generation = int(connection.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
        connection.close()
        if generation >= 2:
            break
        time.sleep(0.02)
    real_cleanup(self)

gallery.GalleryIndex._cleanup = cleanup_when_both_committed
vectors = np.random.default_rng(seed).normal(size=(25, int(sys.argv[4]))).astype(np.float32)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
rows = [{"path": f"/p{seed}/{i}.jpg", "file": f"{i}.jpg", "gallery_dir": f"/p{seed}", "pid": None, "camid": None,
         "time": None} for i in range(25)]
index = gallery.GalleryIndex(directory)
time.sleep(max(0.0, start_at - time.time()))
print(index.append(vectors, rows), flush=True)
"""


def test_two_appends_started_at_the_same_moment_both_land_and_delete_no_live_file(tmp_path):
    directory = str(tmp_path / "g")
    base = _vectors(200, 0)
    GalleryIndex.create(directory, base, _rows(200))
    start_at = time.time() + 3  # both processes are up (imports done) by then
    env = dict(os.environ, PYTHONPATH=REPO)
    processes = [subprocess.Popen([sys.executable, "-c", _CONCURRENT, directory, str(seed), str(start_at), str(DIM)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for seed in (11, 12)]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert sorted(out.strip() for out, _ in outputs) == ["25", "25"]

    state = _state(directory)
    assert state["rows"] == state["ntotal"] == 250 and state["generation"] == 2
    assert _files(directory) == sorted(gallery._live_names(state)) == ["delta.1.faiss", "delta.2.faiss",
                                                                      "vectors.0.faiss"]
    index = GalleryIndex(directory)
    for seed in (11, 12):  # every appended vector is found as its own nearest neighbour, under its own path
        added = np.random.default_rng(seed).normal(size=(25, DIM)).astype(np.float32)
        added /= np.linalg.norm(added, axis=1, keepdims=True)
        nearest = index.search(added, 1)[1][:, 0]
        assert [row["path"] for row in index.rows(nearest)] == [f"/p{seed}/{i}.jpg" for i in range(25)]
