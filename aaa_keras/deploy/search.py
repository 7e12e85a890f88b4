"""Query by image with an exported model: index a folder of crops, then rank it for queries.

``build_index`` embeds every image under a folder (a Market-1501 split
directory such as ``bounding_box_test/``, or any folder of crops, searched
recursively) with a SavedModel or ``.tflite`` file, and writes an ``.npz``:

========================  ====================================================
``format``                ``"aaa_keras-index-v1"``
``embeddings``            float32 ``(N, D)``, L2-normalised
``files``                 paths relative to ``gallery_dir``, sorted
``gallery_dir``           absolute path of the indexed folder
``pids``, ``camids``      int64 from the file names (Market / Duke naming)
``named``                 bool: the name parsed; where False, pid -1, camid 0
``model_path``            the model that made the index, and ``model_kind``
``image_size``            ``(H, W)`` the model takes
========================  ====================================================

``search`` embeds query images with a model of the same embedding size and
returns, per query, the ``top`` gallery entries by Euclidean distance between
L2-normalised embeddings (0 = identical, 2 = opposite), the distance
``evaluate`` ranks by.
"""

from __future__ import annotations

import datetime
import os

import numpy as np

from aaa_keras.data.names import SPLITS, is_image_file, parse_name
from aaa_keras.errors import DatasetError, UserError

INDEX_FORMAT = "aaa_keras-index-v1"
CONSISTENCY_PROBES = 2  # gallery images re-embedded at search time to detect a different model
CONSISTENCY_MIN_COSINE = 0.9


# === Index ===

def list_images(gallery_dir: str) -> list[str]:
    """Image files under ``gallery_dir`` (recursive, hidden entries skipped), relative, sorted."""
    if not os.path.isdir(gallery_dir):
        what = "is not a directory" if os.path.exists(gallery_dir) else "does not exist"
        raise UserError(f"--gallery {gallery_dir}: {what}; expected a folder of image crops "
                        "(e.g. a dataset's bounding_box_test/)")
    if all(os.path.isdir(os.path.join(gallery_dir, name)) for name in SPLITS.values()):
        raise UserError(f"--gallery {gallery_dir}: this is a dataset root (Market-1501 layout); pass one "
                        f"split, e.g. {os.path.join(gallery_dir, SPLITS['gallery'])}")
    files = []
    for directory, subdirs, names in os.walk(gallery_dir):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        files += [os.path.relpath(os.path.join(directory, name), gallery_dir)
                  for name in names if is_image_file(name)]
    if not files:
        raise UserError(f"--gallery {gallery_dir}: no images (.jpg, .jpeg, .png) in this folder or below")
    return sorted(files)


def _identity(path: str) -> tuple[int, int, bool]:
    try:
        pid, camid = parse_name(path)
    except DatasetError:
        return -1, 0, False
    return pid, camid, True


def _atomic_savez(path: str, **arrays) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f"_partial_{os.getpid()}_{os.path.basename(path)}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def build_index(model_path: str, gallery_dir: str, out_path: str, batch_size: int = 32, log=print) -> dict:
    """Embed every image under ``gallery_dir`` with an exported model into ``out_path`` (.npz).

    Returns ``{"path", "num_images", "embedding_dim", "num_named", "model_path", "model_kind"}``.
    """
    from aaa_keras.deploy.runtime import embed_files, load_exported

    if batch_size < 1:
        raise UserError(f"--batch-size: expected a positive integer, got {batch_size}")
    if os.path.isdir(out_path):
        raise UserError(f"--out {out_path}: is a directory; expected an index file name such as gallery.npz")
    model = load_exported(model_path)
    files = list_images(gallery_dir)
    log(f"Indexing {len(files)} images of {gallery_dir} with {model.kind} {model_path} "
        f"({model.image_size[0]}x{model.image_size[1]} -> {model.embedding_dim}-d)")
    embeddings = embed_files(model, [os.path.join(gallery_dir, f) for f in files], batch_size, log)
    identities = [_identity(f) for f in files]
    arrays = dict(
        format=np.array(INDEX_FORMAT),
        embeddings=embeddings.astype(np.float32),
        files=np.array(files, dtype=str),
        gallery_dir=np.array(os.path.abspath(gallery_dir)),
        pids=np.array([i[0] for i in identities], np.int64),
        camids=np.array([i[1] for i in identities], np.int64),
        named=np.array([i[2] for i in identities], bool),
        model_path=np.array(os.path.abspath(model_path)),
        model_kind=np.array(model.kind),
        image_size=np.array(model.image_size, np.int64),
        created=np.array(datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")),
    )
    _atomic_savez(out_path, **arrays)
    num_named = int(arrays["named"].sum())
    log(f"Wrote {out_path}: {len(files)} images, {num_named} with a person id and camera in the name")
    return {"path": out_path, "num_images": len(files), "embedding_dim": model.embedding_dim,
            "num_named": num_named, "model_path": model_path, "model_kind": model.kind}


def load_index(index_path: str) -> dict:
    """The arrays of an index file; UserError when it is missing or not an index."""
    if not os.path.isfile(index_path):
        raise UserError(f"--index {index_path}: no such file; make one with "
                        "`python cli.py index --model PATH --gallery DIR --out INDEX`")
    try:
        with np.load(index_path, allow_pickle=False) as data:
            index = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise UserError(f"--index {index_path}: not a readable index file ({error})") from None
    if str(index.get("format", "")) != INDEX_FORMAT:
        raise UserError(f"--index {index_path}: not an index made by `python cli.py index` "
                        f"(format {str(index.get('format', 'missing'))!r}, expected {INDEX_FORMAT!r})")
    return index


# === Search ===

def _check_same_model(index: dict, model, index_path: str, model_path: str) -> None:
    """Refuse a model of another embedding size, or one whose embeddings of indexed images differ."""
    from aaa_keras.deploy.parity import cosines
    from aaa_keras.deploy.runtime import read_images

    dim = index["embeddings"].shape[1]
    if model.embedding_dim != dim:
        raise UserError(f"--index {index_path} was made with a model of {dim}-d embeddings but --model "
                        f"{model_path} gives {model.embedding_dim}-d; rebuild the index with this model "
                        "(`python cli.py index`)")
    gallery_dir = str(index["gallery_dir"])
    probes = [i for i, f in enumerate(index["files"]) if os.path.isfile(os.path.join(gallery_dir, str(f)))]
    probes = probes[:CONSISTENCY_PROBES]
    if not probes:
        return
    images = read_images([os.path.join(gallery_dir, str(index["files"][i])) for i in probes], model.image_size)
    agreement = float(cosines(model.embed(images), index["embeddings"][probes]).min())
    if agreement < CONSISTENCY_MIN_COSINE:
        raise UserError(f"--index {index_path} was made with another model ({index['model_path']}): "
                        f"--model {model_path} embeds its own gallery images differently (cosine "
                        f"{agreement:.2f}); rebuild the index with this model")


def search(index_path: str, model_path: str, image_paths, top: int = 10, batch_size: int = 32,
           picture: str | None = None) -> list[list[dict]]:
    """Rank the indexed gallery for each query image; optionally draw the ranked lists.

    Returns one list per query of ``{"rank", "file", "path", "distance",
    "pid", "camid"}`` dicts, nearest first (``pid`` / ``camid`` None when the
    gallery file name carries no id). With ``picture``, writes the ranked-list
    PNG there (``aaa_keras.visualize.save_ranked_lists``).
    """
    from aaa_keras.deploy.runtime import embed_files, load_exported

    image_paths = [os.fspath(p) for p in (image_paths or [])]
    if not image_paths:
        raise UserError("search: give at least one query IMAGE")
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise UserError(f"--top: expected a positive integer, got {top!r}")
    index = load_index(index_path)
    model = load_exported(model_path)
    _check_same_model(index, model, index_path, model_path)
    queries = embed_files(model, image_paths, batch_size)

    gallery = index["embeddings"].astype(np.float32)
    gallery_dir = str(index["gallery_dir"])
    similarity = queries @ gallery.T
    distances = np.sqrt(np.maximum(2.0 - 2.0 * similarity, 0.0))
    top = min(int(top), len(gallery))
    rankings = []
    for row in distances:
        order = np.argsort(row, kind="stable")[:top]
        rankings.append([{
            "rank": rank + 1,
            "file": str(index["files"][g]),
            "path": os.path.join(gallery_dir, str(index["files"][g])),
            "distance": float(row[g]),
            "pid": int(index["pids"][g]) if index["named"][g] else None,
            "camid": int(index["camids"][g]) if index["named"][g] else None,
        } for rank, g in enumerate(order)])
    if picture:
        save_picture(picture, image_paths, rankings, top)
    return rankings


def query_identities(image_paths) -> list[dict]:
    """``{"path", "pid", "camid"}`` per query (None where the file name carries no id)."""
    queries = []
    for path in image_paths:
        pid, camid, named = _identity(path)
        queries.append({"path": path, "pid": pid if named else None, "camid": camid if named else None})
    return queries


def save_picture(out_path: str, image_paths, rankings: list[list[dict]], top: int = 10) -> str:
    """The ranked-list picture of a search (query, then its top matches with distances)."""
    from aaa_keras.visualize import save_ranked_lists

    return save_ranked_lists(out_path, query_identities(image_paths), rankings, top,
                             title=f"Search: top-{top} gallery images per query (exported model)")


def format_search(image_paths, rankings: list[list[dict]]) -> str:
    """Printable result of :func:`search`: one block per query, one line per match."""
    lines = []
    for path, ranking in zip(image_paths, rankings):
        query = query_identities([path])[0]
        label = f" (id {query['pid']}, camera {query['camid']})" if query["pid"] is not None else ""
        lines.append(f"Query {path}{label}:")
        for entry in ranking:
            who = (f"id {entry['pid']:>4}  cam {entry['camid']}" if entry["pid"] is not None else "id    ?  cam ?")
            lines.append(f"  {entry['rank']:>3}. {entry['distance']:.4f}  {who}  {entry['file']}")
    return "\n".join(lines)
