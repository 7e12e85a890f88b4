"""The writers that go through ``aaa_keras.files.atomic_path`` leave the old file, or the new one, and no temporary.

No TensorFlow here: a learned-metric model file, the gallery index's FAISS
vectors and the image-check cache, each made to fail half way.
"""

import os

import numpy as np
import pytest

from aaa_keras import files
from aaa_keras.data import check
from aaa_keras.deploy import gallery
from aaa_keras.deploy.gallery import GalleryIndex
from aaa_keras.evaluation.metric_learning import KISSME


def _features(count=120, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(count // 4), 4)
    camids = np.tile(np.arange(4), count // 4)
    return rng.normal(size=(count, dim)).astype(np.float32), pids, camids


def test_a_failed_model_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "kissme.npz"
    model = KISSME(pca_dim=8).fit(*_features())
    model.save(path)
    before = path.read_bytes()

    def broken_savez(handle, **arrays):
        handle.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="No space left"):
        model.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["kissme.npz"]


def _unit_vectors(count, seed, dim=32):
    values = np.random.default_rng(seed).normal(size=(count, dim))
    return (values / np.linalg.norm(values, axis=1, keepdims=True)).astype(np.float32)


def _rows(count, start=0):
    return [{"path": f"/gallery/{i:05d}.jpg", "file": f"{i:05d}.jpg", "gallery_dir": "/gallery", "pid": 1,
             "camid": 1, "time": None} for i in range(start, start + count)]


def test_an_append_removes_the_temporary_vectors_of_a_killed_write(tmp_path):
    directory = str(tmp_path / "g")
    GalleryIndex.create(directory, _unit_vectors(50, 0), _rows(50))
    before = sorted(os.listdir(directory))
    stale = [os.path.basename(files.partial_path(os.path.join(directory, name)))
             for name in ("delta.1.faiss", "vectors.1.faiss")]  # a killed delta, a killed compaction
    older = "vectors.1.faiss.tmp4242"  # an older version's temporary name
    for name in (*stale, older):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(b"half a FAISS index")
    assert all(files.is_partial(name) for name in stale)

    assert GalleryIndex(directory).append(_unit_vectors(5, 1), _rows(5, start=100)) == 5
    assert sorted(os.listdir(directory)) == sorted([*before, "delta.1.faiss"])  # the temporaries are gone
    assert GalleryIndex(directory).size == 55


def test_the_image_check_cache_is_best_effort_and_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "run" / check.IMAGE_CHECK_FILE)
    check._save_cache(path, "decoder", {"/a.jpg": [1, 2, None]})
    assert check._load_cache(path, "decoder") == {"/a.jpg": [1, 2, None]}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "_fsync_file", full_disk)
    check._save_cache(path, "decoder", {"/b.jpg": [3, 4, None]})  # no error: the next run decodes again
    assert check._load_cache(path, "decoder") == {"/a.jpg": [1, 2, None]}
    assert os.listdir(tmp_path / "run") == [check.IMAGE_CHECK_FILE]


# === Reading back: damage vs a file that is sound but busy or unreadable ===

@pytest.mark.parametrize("error,kind,words", [
    (ValueError("Expecting value: line 1"), "DamagedFile", "is damaged"),
    (__import__("sqlite3").DatabaseError("file is not a database"), "DamagedFile", "is damaged"),
    (__import__("sqlite3").OperationalError("database is locked"), "UserError", "is locked by another process"),
    (PermissionError(13, "Permission denied"), "UserError", "check its permissions"),
])
def test_reading_calls_only_real_damage_damaged(error, kind, words):
    from aaa_keras.errors import DamagedFile
    from aaa_keras.files import reading

    with pytest.raises(Exception) as raised:
        with reading("/x/meta.sqlite", "the index's metadata (SQLite)", "rebuild the index"):
            raise error
    assert (type(raised.value).__name__, isinstance(raised.value, DamagedFile)) == (kind, kind == "DamagedFile")
    assert str(raised.value).startswith("/x/meta.sqlite: the index's metadata (SQLite) ") and words in str(raised.value)
    assert ("rebuild the index" in str(raised.value)) == (kind == "DamagedFile")
