"""A gallery index that scales: FAISS vectors + SQLite metadata, appendable, consistent after a crash.

An index is a directory (``python cli.py index --out DIR``)::

    DIR/meta.sqlite        table ``meta`` (key -> value: format, dim, index_type, nlist, pq_m, pca, nprobe,
                           k_factor, ef_search, generation, base, deltas, ntotal, model_path, model_kind, image_size,
                           created) and table ``images`` (id = the vector's position in the index, path UNIQUE,
                           file, gallery_dir, pid, camid, time, added, generation)
    DIR/vectors.B.faiss    the base: every vector up to generation B (``meta.base``)
    DIR/delta.G.faiss      a delta: the vectors added after the previous live file, up to generation G;
                           the live deltas are listed in ``meta.deltas`` (oldest first)
    DIR/trained.faiss      the trained, empty index a delta starts from (not for ``exact``)

The index types (what each one is, trained how) are in
:mod:`aaa_keras.deploy.index_types`. Opening an index reads the base and the
live deltas and merges them in memory (``index_types.merge_into``), so a
search is one FAISS search whatever the number of files.

**Appending** (``GalleryIndex.append``) writes only what it adds, and it is
all-or-nothing. Under SQLite's write lock (``BEGIN IMMEDIATE``: two appends
run one after the other) it writes the new vectors alone as
``delta.G+1.faiss`` (a new file, fsynced), inserts the new rows and moves
``meta.generation`` / ``meta.deltas`` in the same transaction, and commits.
**Compaction rule**: when the live deltas together hold as many vectors as
the base (the index has doubled since its base was written), the append
writes base + deltas + the new vectors as a new base ``vectors.G+1.faiss``
instead, so every vector is rewritten about log2(N / N0) times over the life
of an index, not at every append; and when more than :data:`MAX_DELTAS`
deltas would be live, they are merged into one delta (smaller than the base,
by the first rule). Files that are not live are deleted only while the
deleting process holds the write lock and only by the state it reads under
it: an orphan of a killed append, the files a compaction replaced. So two
appends never delete each other's live files, and a reader, which holds a
SQLite read transaction while it loads the live files, never loses one
(a commit waits for the readers; deleting a file that the committed state
does not name cannot touch a reader's). A process killed at any point leaves
either the old state with the old rows (the uncommitted rows are rolled back
by SQLite's journal; an orphan file is removed by the next append) or the new
one with all new rows: the row count always equals the live vectors
(checked on every open, per file).

This module needs only NumPy, FAISS and the standard library (no TensorFlow).
It is past 450 lines on purpose: the append's commit protocol, its cleanup and
the reading that must agree with them are kept in one file, so the
crash-consistency argument above can be checked against one piece of code.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import sqlite3

import numpy as np

from aaa_keras.deploy.index_types import (DEFAULT_EF_SEARCH, DEFAULT_K_FACTOR, DEFAULT_NPROBE,  # noqa: F401
                                          MIN_TRAIN_PER_CELL, PQ_BITS,
                                          cosines, default_nlist, default_pq_m, empty_like, make_faiss_index, merge_into,
                                          set_nprobe, set_search_params, uses)
from aaa_keras.errors import DamagedFile, UserError
from aaa_keras.files import PARTIAL_PREFIX, atomic_path, is_partial, read_back, reading
from aaa_keras.vocabulary import INDEX_TYPES  # noqa: F401

INDEX_FORMAT = "aaa_keras-gallery-v3"
READABLE_FORMATS = ("aaa_keras-gallery-v2", INDEX_FORMAT)  # v2: one vectors file, no deltas
META_FILE = "meta.sqlite"
TRAINED_FILE = "trained.faiss"
MAX_DELTAS = 8  # more live deltas than this are merged into one
LOCK_TIMEOUT_S = 600  # how long a second append / a reader waits for SQLite's lock
_INDEX_FILE = re.compile(r"(vectors|delta)\.(\d+)\.faiss")

ROW_FIELDS = ("path", "file", "gallery_dir", "pid", "camid", "time")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _faiss():
    import faiss

    return faiss


# === Files ===

def _vectors_path(directory: str, generation: int) -> str:
    return os.path.join(directory, f"vectors.{generation}.faiss")


def _delta_path(directory: str, generation: int) -> str:
    return os.path.join(directory, f"delta.{generation}.faiss")


def _write_vectors(index, path: str) -> None:
    """Write a FAISS index to ``path`` durably (``files.atomic_path``: temporary sibling, fsync, rename)."""
    faiss = _faiss()
    with atomic_path(path) as tmp:
        faiss.write_index(index, tmp)


def _commit_state(connection, state: dict) -> None:
    """Name the new live files and count, and commit the transaction (the commit point of an append)."""
    connection.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           [(key, str(state[key])) for key in ("generation", "base", "deltas", "ntotal")]
                           + [("format", INDEX_FORMAT)])
    connection.commit()


def _live_names(state: dict) -> set[str]:
    return {f"vectors.{state['base']}.faiss", *(f"delta.{g}.faiss" for g in state["delta_list"])}


def _remove_dead_files(directory: str, state: dict) -> None:
    """Delete the vectors / delta files that ``state`` does not name, and temporary files of killed writes
    (``files.is_partial``; ``vectors.G.faiss.tmpPID`` of older versions). Call it only under the write lock
    with the state read under it: then every file it deletes is dead for every process."""
    live = _live_names(state)
    for name in os.listdir(directory):
        stale_tmp = (is_partial(name) and name.endswith(".faiss")) or (
            name.startswith(("vectors.", "delta.")) and ".faiss.tmp" in name)
        if (_INDEX_FILE.fullmatch(name) and name not in live) or stale_tmp:
            try:
                os.remove(os.path.join(directory, name))
            except FileNotFoundError:
                pass


def _connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=LOCK_TIMEOUT_S, isolation_level=None)  # explicit transactions
    connection.execute("PRAGMA synchronous = FULL")
    return connection


def _state(connection) -> dict:
    """``generation``, ``base``, ``deltas`` (text), ``delta_list`` and ``ntotal`` as committed (v2: no deltas)."""
    meta = dict(connection.execute(
        "SELECT key, value FROM meta WHERE key IN ('generation', 'base', 'deltas', 'ntotal')").fetchall())
    generation = int(meta["generation"])
    deltas = meta.get("deltas") or ""
    return {"generation": generation, "base": int(meta.get("base", generation)), "deltas": deltas,
            "delta_list": [int(g) for g in deltas.split(",") if g], "ntotal": int(meta["ntotal"])}


def _segment_sizes(connection, state: dict) -> list[tuple[str, int]]:
    """``(file name, rows it must hold)`` for the base and each live delta, from the rows' generations."""
    counts = dict(connection.execute("SELECT generation, COUNT(*) FROM images GROUP BY generation").fetchall())
    bounds = [state["base"], *state["delta_list"]]
    sizes = [(f"vectors.{state['base']}.faiss", sum(n for g, n in counts.items() if g <= bounds[0]))]
    for low, high in zip(bounds, bounds[1:]):
        sizes.append((f"delta.{high}.faiss", sum(n for g, n in counts.items() if low < g <= high)))
    return sizes


_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,          -- the vector's position in the index (base first, then the deltas)
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
        if info.get("format") not in READABLE_FORMATS:
            raise UserError(f"{label} {directory}: format {info.get('format')!r}, expected {INDEX_FORMAT!r}")
        self.info = info
        self.dim = int(info["dim"])
        self.index_type = info["index_type"]
        self._index = None
        self._files = None

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
               info: dict | None = None, label: str = "--out", pca: int | None = None,
               k_factor: float = DEFAULT_K_FACTOR, ef_search: int = DEFAULT_EF_SEARCH) -> GalleryIndex:
        """Write a new index directory (atomically: built beside it, then renamed into place)."""
        if os.path.exists(directory):
            raise UserError(f"{label} {directory}: already exists; add new crops to it with --append, or give "
                            "a new path. Nothing was overwritten")
        if nprobe < 1:
            raise UserError(f"--nprobe: expected a positive integer, got {nprobe}")
        if k_factor < 1:
            raise UserError(f"--k-factor: expected a number >= 1, got {k_factor}")
        if ef_search < 1:
            raise UserError(f"--ef-search: expected a positive integer, got {ef_search}")
        embeddings = np.ascontiguousarray(embeddings, np.float32)
        if embeddings.ndim != 2 or len(embeddings) != len(rows) or not len(rows):
            raise UserError(f"{label} {directory}: nothing to index ({len(rows)} images)")
        index, params = make_faiss_index(embeddings.shape[1], index_type, nlist, pq_m, embeddings, pca)
        trained = None if index_type == "exact" else empty_like(index)
        index.add(embeddings)
        parent = os.path.dirname(os.path.abspath(directory))
        os.makedirs(parent, exist_ok=True)
        partial = os.path.join(parent, f"{PARTIAL_PREFIX}{os.getpid()}_{os.path.basename(os.path.abspath(directory))}")
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        try:
            _write_vectors(index, _vectors_path(partial, 0))
            if trained is not None:
                _write_vectors(trained, os.path.join(partial, TRAINED_FILE))
            connection = _connect(os.path.join(partial, META_FILE))
            connection.executescript(_SCHEMA)
            connection.execute("BEGIN")
            meta = {"format": INDEX_FORMAT, "dim": embeddings.shape[1], "index_type": index_type, **params,
                    "nprobe": nprobe, "k_factor": k_factor if uses(index_type, "k_factor") else None,
                    "ef_search": ef_search if uses(index_type, "ef_search") else None,
                    "generation": 0, "base": 0, "deltas": "", "ntotal": index.ntotal, "created": _now(),
                    **(info or {})}
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

    def _read_live(self, connection, state: dict):
        """The base and the live deltas read and merged into one index, each file's size checked against
        its rows (one DamagedFile line naming the file that disagrees). Returns ``(index, file names)``."""
        sizes = _segment_sizes(connection, state)
        index = None
        for name, rows in sizes:
            part = self._read_vectors(os.path.join(self.directory, name))  # missing, empty, damaged -> one line
            if part.ntotal != rows:
                raise DamagedFile(f"{self.label} {self.directory}: inconsistent index: {rows} rows in {META_FILE} "
                                  f"belong in {name}, which holds {part.ntotal} vectors; " + self.remedy())
            if index is None:
                index = part
            else:
                with reading(os.path.join(self.directory, name), "the index's vectors (FAISS)", self.remedy()):
                    merge_into(index, part)  # a delta of another kind or training cannot merge: damage
        return index, [name for name, _ in sizes]

    def _load(self):
        """The live FAISS index, loaded under a read transaction; checks rows == vectors."""
        if self._index is not None:
            return self._index
        with self._reading_meta():
            connection = _connect(self._meta_path)
        try:
            with self._reading_meta():
                connection.execute("BEGIN")  # a shared lock: no append can commit (and delete a file) meanwhile
                state = _state(connection)
                rows = connection.execute("SELECT COUNT(*) FROM images").fetchone()[0]
                index, files = self._read_live(connection, state)
            connection.execute("COMMIT")
        finally:
            connection.close()
        if not rows == state["ntotal"] == index.ntotal:
            raise DamagedFile(f"{self.label} {self.directory}: inconsistent index: {rows} rows in {META_FILE}, "
                              f"{state['ntotal']} recorded, {index.ntotal} vectors in {', '.join(files)}; "
                              + self.remedy())
        self._index, self._files = index, files
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
        return {"size": size, "vectors_file": " + ".join(self._files), "paths": paths}

    @property
    def size(self) -> int:
        return self._load().ntotal

    def search(self, queries: np.ndarray, top: int, nprobe: int | None = None,
               k_factor: float | None = None, ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each ``(Q, top)``: inner products (cosines) and row ids, best first; id -1 = none."""
        index = self._load()
        nprobe = int(self.info.get("nprobe") or DEFAULT_NPROBE) if nprobe is None else int(nprobe)
        if nprobe < 1:
            raise UserError(f"--nprobe: expected a positive integer, got {nprobe}")
        k_factor = float(self.info.get("k_factor") or DEFAULT_K_FACTOR) if k_factor is None else float(k_factor)
        if k_factor < 1:
            raise UserError(f"--k-factor: expected a number >= 1, got {k_factor}")
        ef_search = int(self.info.get("ef_search") or DEFAULT_EF_SEARCH) if ef_search is None else int(ef_search)
        if ef_search < 1:
            raise UserError(f"--ef-search: expected a positive integer, got {ef_search}")
        set_search_params(index, nprobe, k_factor, ef_search)
        queries = np.ascontiguousarray(queries, np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise UserError(f"{self.label} {self.directory}: holds {self.dim}-d embeddings, the queries are "
                            f"{list(queries.shape)}")
        scores, ids = index.search(queries, int(min(top, max(index.ntotal, 1))))
        return cosines(index, scores), ids

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
        """Stored vectors of row ids (exact index: the embeddings; the others: their decoded codes)."""
        index = self._load()
        faiss = _faiss()
        if self.index_type != "exact":
            try:
                faiss.extract_index_ivf(index).make_direct_map()
            except RuntimeError:
                pass
        return np.stack([index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim))

    # === Appending ===

    def _empty(self):
        """A trained index holding no vectors: what a delta starts from."""
        if self.index_type == "exact":
            return _faiss().IndexFlatIP(self.dim)
        trained = os.path.join(self.directory, TRAINED_FILE)
        if os.path.exists(trained):
            return self._read_vectors(trained)
        return empty_like(self._load())  # a v2 index: no trained file

    def append(self, embeddings: np.ndarray, rows: list[dict]) -> int:
        """Add new images (rows whose ``path`` is already indexed are skipped); returns how many were added.

        Writes one new file (a delta, or by the compaction rule a merged
        delta or a new base) and commits it with the rows; see the module
        docstring.
        """
        embeddings = np.ascontiguousarray(embeddings, np.float32)
        if len(embeddings) != len(rows) or (len(rows) and embeddings.shape[1] != self.dim):
            raise UserError(f"{self.label} {self.directory}: holds {self.dim}-d embeddings, got "
                            f"{list(embeddings.shape)} for {len(rows)} images")
        connection = _connect(self._meta_path)
        new_path = None
        try:
            with self._reading_meta():
                connection.execute("BEGIN IMMEDIATE")  # the write lock: appends run one after another
                state = _state(connection)
            _remove_dead_files(self.directory, state)  # orphans of a killed append
            present = {row[0] for row in connection.execute("SELECT path FROM images")}
            keep = [i for i, row in enumerate(rows) if row["path"] not in present]
            if not keep:
                connection.rollback()
                return 0
            generation = state["generation"] + 1
            delta = self._empty()
            delta.add(embeddings[keep])
            new_state, written = self._plan(connection, state, generation, delta)
            new_path = os.path.join(self.directory, f"{written}.{generation}.faiss")
            _write_vectors(new_state.pop("index"), new_path)
            _insert_rows(connection, [rows[i] for i in keep], state["ntotal"], generation)
            _commit_state(connection, new_state)
            new_path = None  # committed: the new file is live
        except BaseException:
            if connection.in_transaction:
                connection.rollback()
            if new_path and os.path.exists(new_path):
                os.remove(new_path)
            raise
        finally:
            connection.close()
        self._cleanup()
        self._index, self.info["ntotal"] = None, str(state["ntotal"] + len(keep))
        return len(keep)

    def _plan(self, connection, state: dict, generation: int, delta) -> tuple[dict, str]:
        """The compaction rule: the new state and what to write (``vectors``: a new base, ``delta``: a delta).

        Returns ``(state with "index": the FAISS index to write, "vectors" or "delta")``.
        """
        base_rows = _segment_sizes(connection, state)[0][1]
        delta_rows = state["ntotal"] - base_rows + delta.ntotal
        ntotal = state["ntotal"] + delta.ntotal
        # A new base when the index has doubled since its base, and on every append to a graph (HNSW):
        # a graph has no merge_from, so a delta would be re-inserted into the graph on every open.
        if delta_rows >= base_rows or uses(self.index_type, "ef_search"):
            index, _ = self._read_live(connection, state)
            merge_into(index, delta)
            return {"generation": generation, "base": generation, "deltas": "", "ntotal": ntotal,
                    "index": index}, "vectors"
        deltas = [*state["delta_list"], generation]
        if len(deltas) > MAX_DELTAS:  # merge the deltas into one (smaller than the base, by the rule above)
            merged = self._empty()
            for g in state["delta_list"]:
                merge_into(merged, self._read_vectors(_delta_path(self.directory, g)))
            merge_into(merged, delta)
            delta, deltas = merged, [generation]
        return {"generation": generation, "base": state["base"], "deltas": ",".join(map(str, deltas)),
                "ntotal": ntotal, "index": delta}, "delta"

    def _cleanup(self) -> None:
        """After a commit: delete the files the committed state no longer names, under the write lock and by
        the state read under it (a later append may already have committed another)."""
        connection = _connect(self._meta_path)
        try:
            connection.execute("BEGIN IMMEDIATE")
            _remove_dead_files(self.directory, _state(connection))
            connection.rollback()
        except sqlite3.OperationalError:  # locked for LOCK_TIMEOUT_S: the next append removes them
            pass
        finally:
            connection.close()


def _insert_rows(connection, rows: list[dict], first_id: int, generation: int) -> None:
    added = _now()
    connection.executemany(
        "INSERT INTO images (id, path, file, gallery_dir, pid, camid, time, added, generation) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(first_id + i, row["path"], row["file"], row["gallery_dir"], row.get("pid"), row.get("camid"),
          row.get("time"), added, generation) for i, row in enumerate(rows)])


def is_index_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META_FILE))
