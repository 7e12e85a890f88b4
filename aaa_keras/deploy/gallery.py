"""A gallery index that scales: FAISS vectors + SQLite metadata, appendable, consistent after a crash.

An index is a directory (``python cli.py index --out DIR``)::

    DIR/meta.sqlite        table ``meta`` (key -> value: format, dim, index_type, nlist, pq_m, nprobe,
                           generation, ntotal, model_path, model_kind, image_size, created) and table
                           ``images`` (id = the vector's position in FAISS, path UNIQUE, file,
                           gallery_dir, pid, camid, time, added, generation)
    DIR/vectors.G.faiss    the FAISS index of generation G; only the generation named in ``meta`` is live

Index types (inner product on L2-normalised embeddings, i.e. cosine):

- ``exact``: ``IndexFlatIP``, brute force, 4 x D bytes per image; the same
  top-k as a NumPy brute-force search (tested);
- ``ivf-pq``: ``IVF{nlist},PQ{pq_m}`` (inverted lists over ``nlist`` k-means
  cells, each vector product-quantised to ``pq_m`` bytes), searched in
  ``nprobe`` cells; approximate, for galleries too large for ``exact``
  (``benchmarks/bench_search.py`` measures recall@10 and speed). It is trained
  on the images of the first ``index`` run, so that one should be
  representative; ``--append`` adds to the trained cells without retraining.

**Appending** (``GalleryIndex.append``) never re-embeds or rewrites the rows
already there, and it is all-or-nothing. Under SQLite's write lock
(``BEGIN IMMEDIATE``, so two appends run one after the other) it reads the
live vectors, adds the new ones, writes them as generation ``G + 1`` (a new
file, fsynced), inserts the new rows and moves ``meta.generation`` to
``G + 1`` in the same transaction, commits, and only then deletes generation
``G``. A process killed at any point leaves either the old generation named
in ``meta`` with the old rows (the uncommitted rows are rolled back by
SQLite's journal; an orphan ``vectors.G+1.faiss`` is removed by the next
append), or the new one with all new rows: the row count always equals the
live index's size (checked on every open). A reader holds a SQLite read
transaction while it loads the live file, so an append cannot delete it
under the reader.

This module needs only NumPy, FAISS and the standard library (no TensorFlow).
"""

from __future__ import annotations

import datetime
import math
import os
import re
import shutil
import sqlite3

import numpy as np

from aaa_keras.errors import DamagedFile, UserError
from aaa_keras.files import PARTIAL_PREFIX, atomic_path, is_partial, read_back, reading
from aaa_keras.vocabulary import INDEX_TYPES

INDEX_FORMAT = "aaa_keras-gallery-v2"
META_FILE = "meta.sqlite"
DEFAULT_NPROBE = 16
PQ_BITS = 8  # bits per sub-quantiser code: 256 centroids each
MIN_TRAIN_PER_CELL = 39  # FAISS's own minimum of training points per k-means centroid
LOCK_TIMEOUT_S = 600  # how long a second append / a reader waits for SQLite's lock
_VECTORS = re.compile(r"vectors\.(\d+)\.faiss")

ROW_FIELDS = ("path", "file", "gallery_dir", "pid", "camid", "time")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _faiss():
    import faiss

    return faiss


# === Choosing and building the FAISS index ===

def default_pq_m(dim: int) -> int:
    """Bytes per vector of IVF-PQ: the largest divisor of ``dim`` up to min(64, dim / 2)."""
    limit = max(1, min(64, dim // 2))
    return max(m for m in range(1, limit + 1) if dim % m == 0)


def default_nlist(count: int) -> int:
    """About 4 sqrt(N) cells, with at least 39 training points per cell."""
    return max(1, min(int(4 * math.sqrt(count)), count // MIN_TRAIN_PER_CELL))


def make_faiss_index(dim: int, index_type: str = "exact", nlist: int | None = None, pq_m: int | None = None,
                     train: np.ndarray | None = None):
    """An empty (trained, for ``ivf-pq``) FAISS inner-product index. Returns ``(index, params)``."""
    faiss = _faiss()
    if index_type == "exact":
        return faiss.IndexFlatIP(dim), {"nlist": None, "pq_m": None}
    if index_type != "ivf-pq":
        raise UserError(f"--index-type: got {index_type!r}; expected one of {', '.join(INDEX_TYPES)}")
    count = 0 if train is None else len(train)
    minimum = 2 ** PQ_BITS
    if count < minimum:
        raise UserError(f"--index-type ivf-pq: needs at least {minimum} images to train its quantisers, the "
                        f"gallery has {count}; use --index-type exact (fast enough for small galleries)")
    nlist = default_nlist(count) if nlist is None else int(nlist)
    pq_m = default_pq_m(dim) if pq_m is None else int(pq_m)
    if not 1 <= nlist <= count:
        raise UserError(f"--nlist {nlist}: expected 1 to {count} (the number of training images)")
    if pq_m < 1 or dim % pq_m:
        raise UserError(f"--pq-m {pq_m}: must divide the embedding size {dim} (e.g. {default_pq_m(dim)})")
    index = faiss.index_factory(dim, f"IVF{nlist},PQ{pq_m}x{PQ_BITS}", faiss.METRIC_INNER_PRODUCT)
    # Polysemous training (on by default) re-orders the PQ codes for Hamming-distance pre-filtering, which is
    # not used here (polysemous_ht = 0); it took 20 of the 26 s of training 3000 64-d vectors.
    faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    index.train(np.ascontiguousarray(train, np.float32))
    return index, {"nlist": nlist, "pq_m": pq_m}


def set_nprobe(index, nprobe: int) -> None:
    faiss = _faiss()
    try:
        faiss.extract_index_ivf(index).nprobe = int(nprobe)
    except RuntimeError:  # not an IVF index: nothing to set
        pass


# === Files ===

def _vectors_path(directory: str, generation: int) -> str:
    return os.path.join(directory, f"vectors.{generation}.faiss")


def _write_vectors(index, path: str) -> None:
    """Write a FAISS index to ``path`` durably (``files.atomic_path``: temporary sibling, fsync, rename)."""
    faiss = _faiss()
    with atomic_path(path) as tmp:
        faiss.write_index(index, tmp)


def _commit_state(connection, generation: int, ntotal: int) -> None:
    """Name the new generation live and commit the transaction (the commit point of an append)."""
    connection.executemany("UPDATE meta SET value = ? WHERE key = ?",
                           [(str(generation), "generation"), (str(ntotal), "ntotal")])
    connection.commit()


def _remove_stale_vectors(directory: str, live: int) -> None:
    """Delete every ``vectors.G.faiss`` other than the live generation's, and the temporary
    files of killed writes (``files.is_partial``; ``vectors.G.faiss.tmpPID`` of older versions)."""
    for name in os.listdir(directory):
        match = _VECTORS.fullmatch(name)
        stale_tmp = (is_partial(name) and name.endswith(".faiss")) or (
            name.startswith("vectors.") and ".faiss.tmp" in name)
        if (match and int(match.group(1)) != live) or stale_tmp:
            try:
                os.remove(os.path.join(directory, name))
            except FileNotFoundError:
                pass


def _connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=LOCK_TIMEOUT_S, isolation_level=None)  # explicit transactions
    connection.execute("PRAGMA synchronous = FULL")
    return connection


_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,          -- the vector's position in the FAISS index
    path TEXT NOT NULL UNIQUE,       -- absolute path when indexed
    file TEXT NOT NULL,              -- relative to gallery_dir
    gallery_dir TEXT NOT NULL,
    pid INTEGER,                     -- from a Market-1501 / Duke file name; NULL when the name carries none
    camid INTEGER,
    time TEXT,                       -- the file's modification time (UTC), a stand-in for the capture time
    added TEXT NOT NULL,             -- when it was indexed (UTC)
    generation INTEGER NOT NULL      -- the append that added it (0 = the first index run)
);
"""


class GalleryIndex:
    """An open index directory: ``size``, ``dim``, ``info``, ``search``, ``rows``, ``append``."""

    def __init__(self, directory: str, label: str = "--index"):
        self.directory = directory
        self.label = label
        meta_path = os.path.join(directory, META_FILE)
        if not os.path.isdir(directory) or not os.path.isfile(meta_path):
            hint = (" (an .npz index of an older version: rebuild it with `python cli.py index`)"
                    if str(directory).endswith(".npz") and os.path.isfile(directory) else "")
            raise UserError(f"{label} {directory}: not an index directory (no {META_FILE}){hint}; make one "
                            "with `python cli.py index --model PATH --gallery DIR --out INDEX_DIR`")
        self._meta_path = meta_path
        self.info = {}
        if os.path.getsize(meta_path) == 0:
            read_back(meta_path, None, "the index's metadata (SQLite)", self.remedy())  # the one line for empty
        with self._reading_meta():
            connection = _connect(meta_path)
            try:
                info = dict(connection.execute("SELECT key, value FROM meta").fetchall())
            finally:
                connection.close()
        if info.get("format") != INDEX_FORMAT:
            raise UserError(f"{label} {directory}: format {info.get('format')!r}, expected {INDEX_FORMAT!r}")
        self.info = info
        self.dim = int(info["dim"])
        self.index_type = info["index_type"]
        self._index = None
        self._generation = None

    def remedy(self) -> str:
        """What to do about a damaged index, in words."""
        model = self.info.get("model_path") or "MODEL"
        return (f"rebuild the index: `python cli.py index --model {model} --gallery GALLERY_DIR --out NEW_DIR` "
                "(`python cli.py index --verify --out DIR` checks an index)")

    def _reading_meta(self):
        return reading(self._meta_path, "the index's metadata (SQLite)", self.remedy())

    def _read_vectors(self, path: str):
        return read_back(path, _faiss().read_index, "the index's vectors (FAISS)", self.remedy())

    # === Creating ===

    @classmethod
    def create(cls, directory: str, embeddings: np.ndarray, rows: list[dict], index_type: str = "exact",
               nlist: int | None = None, pq_m: int | None = None, nprobe: int = DEFAULT_NPROBE,
               info: dict | None = None, label: str = "--out") -> GalleryIndex:
        """Write a new index directory (atomically: built beside it, then renamed into place)."""
        if os.path.exists(directory):
            raise UserError(f"{label} {directory}: already exists; add new crops to it with --append, or give "
                            "a new path. Nothing was overwritten")
        if nprobe < 1:
            raise UserError(f"--nprobe: expected a positive integer, got {nprobe}")
        embeddings = np.ascontiguousarray(embeddings, np.float32)
        if embeddings.ndim != 2 or len(embeddings) != len(rows) or not len(rows):
            raise UserError(f"{label} {directory}: nothing to index ({len(rows)} images)")
        index, params = make_faiss_index(embeddings.shape[1], index_type, nlist, pq_m, embeddings)
        index.add(embeddings)
        parent = os.path.dirname(os.path.abspath(directory))
        os.makedirs(parent, exist_ok=True)
        partial = os.path.join(parent, f"{PARTIAL_PREFIX}{os.getpid()}_{os.path.basename(os.path.abspath(directory))}")
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        try:
            _write_vectors(index, _vectors_path(partial, 0))
            connection = _connect(os.path.join(partial, META_FILE))
            connection.executescript(_SCHEMA)
            connection.execute("BEGIN")
            meta = {"format": INDEX_FORMAT, "dim": embeddings.shape[1], "index_type": index_type,
                    "nlist": params["nlist"], "pq_m": params["pq_m"], "nprobe": nprobe, "generation": 0,
                    "ntotal": index.ntotal, "created": _now(), **(info or {})}
            connection.executemany("INSERT INTO meta VALUES (?, ?)",
                                   [(k, None if v is None else str(v)) for k, v in meta.items()])
            _insert_rows(connection, rows, 0, 0)
            connection.commit()
            connection.close()
            os.rename(partial, directory)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return cls(directory, label)

    # === Reading ===

    def _load(self):
        """The live FAISS index, loaded under a read transaction; checks rows == vectors."""
        if self._index is not None:
            return self._index
        with self._reading_meta():
            connection = _connect(self._meta_path)
        try:
            with self._reading_meta():
                connection.execute("BEGIN")  # a shared lock: no append can commit (and delete this file) meanwhile
                generation, ntotal = _state(connection)
                rows = connection.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            path = _vectors_path(self.directory, generation)
            index = self._read_vectors(path)  # missing, empty or damaged -> one line
            connection.execute("COMMIT")
        finally:
            connection.close()
        if not rows == ntotal == index.ntotal:
            raise DamagedFile(f"{self.label} {self.directory}: inconsistent index: {rows} rows in {META_FILE}, "
                              f"{ntotal} recorded, {index.ntotal} vectors in {os.path.basename(path)}; "
                              + self.remedy())
        self._index, self._generation = index, generation
        return index

    def check_files(self) -> dict:
        """Read every file of the index (SQLite's ``quick_check``, the live vectors, rows = vectors), or one
        DamagedFile line. Returns ``{"size", "vectors_file", "paths"}`` (the indexed image paths)."""
        with self._reading_meta():
            connection = _connect(self._meta_path)
            try:
                problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
                paths = [row[0] for row in connection.execute("SELECT path FROM images")]
            finally:
                connection.close()
        if problems != ["ok"]:
            raise DamagedFile(f"{self._meta_path}: the index's metadata (SQLite) is damaged "
                              f"({'; '.join(problems[:3])}); {self.remedy()}")
        size = self.size
        return {"size": size, "vectors_file": os.path.basename(_vectors_path(self.directory, self._generation)),
                "paths": paths}

    @property
    def size(self) -> int:
        return self._load().ntotal

    def search(self, queries: np.ndarray, top: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each ``(Q, top)``: inner products (cosines) and row ids, best first; id -1 = none."""
        index = self._load()
        nprobe = int(self.info.get("nprobe") or DEFAULT_NPROBE) if nprobe is None else int(nprobe)
        if nprobe < 1:
            raise UserError(f"--nprobe: expected a positive integer, got {nprobe}")
        set_nprobe(index, nprobe)
        queries = np.ascontiguousarray(queries, np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise UserError(f"{self.label} {self.directory}: holds {self.dim}-d embeddings, the queries are "
                            f"{list(queries.shape)}")
        return index.search(queries, int(min(top, max(index.ntotal, 1))))

    def rows(self, ids) -> list[dict]:
        """Metadata of row ids, in the order given."""
        ids = [int(i) for i in ids]
        if not ids:
            return []
        found = {}
        with self._reading_meta():  # a row missing (KeyError) is damage too
            connection = _connect(self._meta_path)
            try:
                for start in range(0, len(ids), 500):
                    chunk = ids[start:start + 500]
                    cursor = connection.execute(
                        f"SELECT id, path, file, gallery_dir, pid, camid, time, added, generation FROM images "
                        f"WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                    for row in cursor:
                        found[row[0]] = dict(zip(("id", *ROW_FIELDS, "added", "generation"), row))
            finally:
                connection.close()
            return [found[i] for i in ids]

    def indexed_paths(self) -> set[str]:
        with self._reading_meta():
            connection = _connect(self._meta_path)
            try:
                return {row[0] for row in connection.execute("SELECT path FROM images")}
            finally:
                connection.close()

    def vectors(self, ids) -> np.ndarray:
        """Stored vectors of row ids (exact index: the embeddings; ivf-pq: their PQ reconstruction)."""
        index = self._load()
        faiss = _faiss()
        if self.index_type != "exact":
            faiss.extract_index_ivf(index).make_direct_map()
        return np.stack([index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim))

    # === Appending ===

    def append(self, embeddings: np.ndarray, rows: list[dict]) -> int:
        """Add new images (rows whose ``path`` is already indexed are skipped); returns how many were added."""
        faiss = _faiss()
        embeddings = np.ascontiguousarray(embeddings, np.float32)
        if len(embeddings) != len(rows) or (len(rows) and embeddings.shape[1] != self.dim):
            raise UserError(f"{self.label} {self.directory}: holds {self.dim}-d embeddings, got "
                            f"{list(embeddings.shape)} for {len(rows)} images")
        connection = _connect(self._meta_path)
        new_path = None
        try:
            connection.execute("BEGIN IMMEDIATE")  # the write lock: appends run one after another
            generation, ntotal = _state(connection)
            _remove_stale_vectors(self.directory, generation)  # orphans of a killed append
            present = {row[0] for row in connection.execute("SELECT path FROM images")}
            keep = [i for i, row in enumerate(rows) if row["path"] not in present]
            if not keep:
                connection.rollback()
                return 0
            index = self._read_vectors(_vectors_path(self.directory, generation))
            if index.ntotal != ntotal:
                raise DamagedFile(f"{self.label} {self.directory}: inconsistent index: {ntotal} rows recorded, "
                                  f"{index.ntotal} vectors; {self.remedy()}")
            index.add(embeddings[keep])
            new_path = _vectors_path(self.directory, generation + 1)
            _write_vectors(index, new_path)
            _insert_rows(connection, [rows[i] for i in keep], ntotal, generation + 1)
            _commit_state(connection, generation + 1, index.ntotal)
            new_path = None  # committed: the new file is live
        except BaseException:
            if connection.in_transaction:
                connection.rollback()
            if new_path and os.path.exists(new_path):
                os.remove(new_path)
            raise
        finally:
            connection.close()
        _remove_stale_vectors(self.directory, generation + 1)
        self._index, self.info["ntotal"] = None, str(ntotal + len(keep))
        return len(keep)


def _state(connection) -> tuple[int, int]:
    meta = dict(connection.execute("SELECT key, value FROM meta WHERE key IN ('generation', 'ntotal')").fetchall())
    return int(meta["generation"]), int(meta["ntotal"])


def _insert_rows(connection, rows: list[dict], first_id: int, generation: int) -> None:
    added = _now()
    connection.executemany(
        "INSERT INTO images (id, path, file, gallery_dir, pid, camid, time, added, generation) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(first_id + i, row["path"], row["file"], row["gallery_dir"], row.get("pid"), row.get("camid"),
          row.get("time"), added, generation) for i, row in enumerate(rows)])


def is_index_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META_FILE))
