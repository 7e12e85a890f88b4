"""Query by image with an exported model: index a folder of crops, then rank it for queries.

``build_index`` embeds every image under a folder (a Market-1501 split
directory such as ``bounding_box_test/``, or any folder of crops, searched
recursively) with an exported model (SavedModel, ``.tflite``, ``.onnx`` or
OpenVINO ``.xml``) into a gallery index directory: FAISS vectors plus an
SQLite table of path / pid / camera / time per image
(:mod:`aaa_keras.deploy.gallery`). ``append=True`` adds the images of a folder
that are not indexed yet, without re-embedding the others.

``search`` embeds query images with the model the index was made with and
returns, per query, the ``top`` gallery entries by Euclidean distance between
L2-normalised embeddings (0 = identical, 2 = opposite; ``sqrt(2 - 2 cos)``),
the distance ``evaluate`` ranks by. With the default ``exact`` index that is
the brute-force ranking; the other types
(:mod:`aaa_keras.deploy.index_types`) are approximate (``nprobe`` cells
searched; the ``-refine`` types re-rank ``k_factor x top`` candidates by
their full-dimension distance).
"""

from __future__ import annotations

import datetime
import os

import numpy as np

from aaa_keras.data.names import SPLITS, is_image_file, parse_name
from aaa_keras.deploy import gallery as gallery_lib
from aaa_keras.errors import DatasetError, UserError

CONSISTENCY_PROBES = 2  # gallery images re-embedded at search time to detect a different model
CONSISTENCY_MIN_COSINE = 0.9
# From this many images an `exact` index is named as slow and large, and `index` names the type measured to meet
# issue 22's four targets at 1M 2048-d crops (docs/benchmarks.md, "Gallery index"; docs/decisions.md says why
# exact stays the default).
LARGE_EXACT_GALLERY = 100_000
LARGE_GALLERY_TYPE = "pca-ivf-sq8-refine-sq6"


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


def _identity(path: str) -> tuple[int | None, int | None]:
    """``(pid, camid)`` from a Market-1501 / DukeMTMC-reID file name; ``(None, None)`` for other names."""
    try:
        return parse_name(path)
    except DatasetError:
        return None, None


def _rows(gallery_dir: str, files: list[str]) -> list[dict]:
    rows = []
    for file in files:
        path = os.path.abspath(os.path.join(gallery_dir, file))
        pid, camid = _identity(file)
        mtime = datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.timezone.utc)
        rows.append({"path": path, "file": file, "gallery_dir": os.path.abspath(gallery_dir),
                     "pid": pid, "camid": camid, "time": mtime.isoformat(timespec="seconds")})
    return rows


def build_index(model_path: str, gallery_dir: str, out_path: str, batch_size: int = 32, log=print,
                append: bool = False, index_type: str = "exact", nlist: int | None = None,
                pq_m: int | None = None, nprobe: int = gallery_lib.DEFAULT_NPROBE,
                skip_bad_images: bool = False, pca: int | None = None,
                k_factor: float = gallery_lib.DEFAULT_K_FACTOR,
                ef_search: int = gallery_lib.DEFAULT_EF_SEARCH) -> dict:
    """Embed the images under ``gallery_dir`` with an exported model into the index directory ``out_path``.

    A new index (``out_path`` must not exist) holds every image; with
    ``append`` the index must exist and only images not yet in it (by
    absolute path) are embedded and added. ``index_type`` (one of
    ``vocabulary.INDEX_TYPES``, with ``nlist``, ``pq_m``, ``pca`` where the
    type has them; ``nprobe``, ``k_factor`` and ``ef_search`` are the stored defaults for
    ``search``) applies to a new index. Every image to embed is decoded
    once first (the pipeline's decoder, ``data.check.decode_files``): a file
    that does not decode stops the build before any embedding, named with
    every other bad one; with ``skip_bad_images`` they are left out, named in
    one summary line (an ``--append`` later tries them again).

    Returns ``{"path", "num_images", "num_added", "num_skipped", "embedding_dim",
    "num_named", "model_path", "model_kind", "index_type"}``.
    """
    from aaa_keras.deploy.runtime import embed_files, load_exported

    if not model_path or not gallery_dir:
        raise UserError("index: --model and --gallery are required to build or append to an index "
                        "(only --verify goes without them)")
    if batch_size < 1:
        raise UserError(f"--batch-size: expected a positive integer, got {batch_size}")
    if str(out_path).endswith(".npz"):
        raise UserError(f"--out {out_path}: an index is now a directory (FAISS vectors + SQLite metadata); "
                        "give a directory name such as gallery_index")
    if append and not gallery_lib.is_index_dir(out_path):
        raise UserError(f"--out {out_path}: --append needs an existing index directory made by "
                        "`python cli.py index`; leave out --append to create one")
    if not append and os.path.exists(out_path):
        raise UserError(f"--out {out_path}: already exists; add new crops to it with --append, or give a new "
                        "path. Nothing was overwritten")
    if index_type not in gallery_lib.INDEX_TYPES:
        raise UserError(f"--index-type: got {index_type!r}; expected one of {', '.join(gallery_lib.INDEX_TYPES)}")
    index = gallery_lib.GalleryIndex(out_path, "--out") if append else None
    model = load_exported(model_path)
    files = list_images(gallery_dir)
    rows = _rows(gallery_dir, files)
    skipped = 0
    if index is not None:
        _check_same_model(index, model, out_path, model_path, "--out")
        present = index.indexed_paths()
        rows = [row for row in rows if row["path"] not in present]
        skipped = len(files) - len(rows)
    rows = _drop_bad_images(rows, gallery_dir, skip_bad_images, log)
    log(f"{'Appending to' if append else 'Indexing'} {out_path}: {len(rows)} images of {gallery_dir}"
        f"{f' ({skipped} already indexed, not re-embedded)' if skipped else ''} with {model.kind} {model_path} "
        f"({model.image_size[0]}x{model.image_size[1]} -> {model.embedding_dim}-d)")
    embeddings = embed_files(model, [row["path"] for row in rows], batch_size, log)
    if index is None:
        info = {"model_path": os.path.abspath(model_path), "model_kind": model.kind,
                "image_size": f"{model.image_size[0]}x{model.image_size[1]}"}
        index = gallery_lib.GalleryIndex.create(out_path, embeddings, rows, index_type, nlist, pq_m, nprobe,
                                                info=info, pca=pca, k_factor=k_factor, ef_search=ef_search)
        added = len(rows)
    else:
        added = index.append(embeddings, rows)
    num_named = sum(row["pid"] is not None for row in rows)
    extra = "".join(f", {key} {index.info[key]}" for key in ("pca", "nlist", "pq_m", "nprobe", "k_factor", "ef_search")
                    if index.index_type != "exact" and index.info.get(key) not in (None, "None"))
    log(f"Wrote {out_path} ({index.index_type}{extra}): {added} images added, {index.size} in the index; "
        f"{num_named} of the added carry a person id and camera in their name")
    if index.index_type == "exact" and index.size >= LARGE_EXACT_GALLERY:
        log(f"Note: {index.size} images in an exact index ({index.size * model.embedding_dim * 4 / 1e9:.1f} GB in "
            f"memory, every query scans them all). On 1M 2048-d crops --index-type {LARGE_GALLERY_TYPE} found "
            f"97.5 % of the exact top-10 at 33-71x the speed and 0.22 of the memory (docs/benchmarks.md); build a "
            f"new index with it to switch")
    return {"path": out_path, "num_images": index.size, "num_added": added, "num_skipped": skipped,
            "embedding_dim": model.embedding_dim, "num_named": num_named, "model_path": model_path,
            "model_kind": model.kind, "index_type": index.index_type}


def _drop_bad_images(rows: list[dict], gallery_dir: str, skip_bad_images: bool, log) -> list[dict]:
    """``rows`` whose image decodes; the others refused (DatasetError) or, when skipping, named and left out."""
    from aaa_keras.data.check import bad_images_message, decode_files, named_bad_images

    _, errors = decode_files([row["path"] for row in rows])
    if not errors:
        return rows
    if not skip_bad_images:
        raise DatasetError(f"--gallery {gallery_dir}: " + bad_images_message(errors, "index")
                           + "; nothing was indexed")
    log(f"--skip-bad-images: left out {len(errors)} image{'s' if len(errors) > 1 else ''} of {gallery_dir} "
        f"that did not decode: {named_bad_images(errors)}")
    return [row for row in rows if row["path"] not in errors]


def parity_report_path(model_path: str) -> str:
    """Where ``export`` put the parity report of an exported model (SavedModel: assets.extra/)."""
    from aaa_keras.deploy.saved_model import is_saved_model_dir

    if is_saved_model_dir(model_path):
        return os.path.join(model_path, "assets.extra", "parity.json")
    return os.path.join(model_path if os.path.isdir(model_path) else os.path.dirname(model_path), "parity.json")


def verify_index(index_path: str, model_path: str | None = None, log=print) -> dict:
    """``index --verify``: every file of the index readable, rows = vectors, the model present and consistent.

    Checks ``meta.sqlite`` (SQLite's ``quick_check``), the live
    ``vectors.G.faiss`` (loaded; its size equals the rows and the recorded
    count), the model named in the index (or ``model_path``): present, loadable,
    of the index's embedding size and embedding indexed images as stored
    (exact indexes), and its ``parity.json`` readable. Any failure is one
    UserError line (:class:`~aaa_keras.errors.DamagedFile` for a damaged file);
    returns ``{"path", "num_images", "model_path", "missing_images"}``.
    """
    from aaa_keras.deploy.runtime import load_exported
    from aaa_keras.files import read_json_back

    if not os.path.exists(index_path):
        raise UserError(f"--out {index_path}: no such index to verify")
    index = gallery_lib.GalleryIndex(index_path, "--out")
    checked = index.check_files()  # one line for a damaged file or rows != vectors
    size = checked["size"]
    log(f"{index_path}: {gallery_lib.META_FILE} and {checked['vectors_file']} readable; {size} rows = {size} "
        f"vectors ({index.index_type}, {index.dim}-d)")
    named = index.info.get("model_path")
    model_path = model_path or named
    if not model_path or not os.path.exists(model_path):
        raise UserError(f"--out {index_path}: the model the index was made with ({model_path}) is not there; "
                        "give it with --model, or rebuild the index with the model you have")
    model = load_exported(model_path)
    _check_same_model(index, model, index_path, model_path, "--out")
    report = parity_report_path(model_path)
    if os.path.exists(report):
        read_json_back(report, "the model's parity report", "export the model again (`python cli.py export`)")
    missing = sum(not os.path.isfile(path) for path in checked["paths"])
    log(f"Model {model_path} ({model.kind}) present and consistent with the index"
        + (f"; its {os.path.basename(report)} readable" if os.path.exists(report) else "")
        + (f"; {missing} indexed image files no longer exist (their rows still answer searches)" if missing else ""))
    log(f"Verified {index_path}")
    return {"path": index_path, "num_images": size, "model_path": model_path, "missing_images": missing}


def load_index(index_path: str) -> gallery_lib.GalleryIndex:
    """An index directory, opened; UserError when it is missing or not an index."""
    if not os.path.exists(index_path):
        raise UserError(f"--index {index_path}: no such index; make one with "
                        "`python cli.py index --model PATH --gallery DIR --out INDEX_DIR`")
    return gallery_lib.GalleryIndex(index_path)


# === Search ===

def _check_same_model(index, model, index_path: str, model_path: str, label: str = "--index") -> None:
    """Refuse a model of another embedding size, or one whose embeddings of indexed images differ."""
    from aaa_keras.deploy.parity import cosines
    from aaa_keras.deploy.runtime import read_images

    if model.embedding_dim != index.dim:
        raise UserError(f"{label} {index_path} was made with a model of {index.dim}-d embeddings but --model "
                        f"{model_path} gives {model.embedding_dim}-d; rebuild the index with this model "
                        "(`python cli.py index`)")
    if index.index_type != "exact":  # PQ codes are too coarse to compare single embeddings
        return
    rows = [row for row in index.rows(range(min(index.size, 8))) if os.path.isfile(row["path"])]
    rows = rows[:CONSISTENCY_PROBES]
    if not rows:
        return
    images = read_images([row["path"] for row in rows], model.image_size)
    agreement = float(cosines(model.embed(images), index.vectors([row["id"] for row in rows])).min())
    if agreement < CONSISTENCY_MIN_COSINE:
        raise UserError(f"{label} {index_path} was made with another model ({index.info.get('model_path')}): "
                        f"--model {model_path} embeds its own gallery images differently (cosine "
                        f"{agreement:.2f}); rebuild the index with this model")


def search(index_path: str, model_path: str, image_paths, top: int = 10, batch_size: int = 32,
           picture: str | None = None, nprobe: int | None = None,
           k_factor: float | None = None, ef_search: int | None = None) -> list[list[dict]]:
    """Rank the indexed gallery for each query image; optionally draw the ranked lists.

    Returns one list per query of ``{"rank", "file", "path", "distance",
    "pid", "camid", "time"}`` dicts, nearest first (``pid`` / ``camid`` None
    when the gallery file name carries no id). ``nprobe`` and ``k_factor``
    (and ``ef_search``) override the index's stored defaults (IVF / refine / HNSW types only). With ``picture``, writes the
    ranked-list PNG there (``aaa_keras.plots.save_ranked_lists``).
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
    scores, ids = index.search(queries, int(top), nprobe, k_factor, ef_search)
    found = index.rows(sorted({int(i) for i in ids.ravel() if i >= 0}))
    by_id = {row["id"]: row for row in found}
    rankings = []
    for row_scores, row_ids in zip(scores, ids):
        ranking = []
        for score, g in zip(row_scores, row_ids):
            if g < 0:  # IVF types: fewer than top images in the probed cells
                continue
            entry = by_id[int(g)]
            ranking.append({
                "rank": len(ranking) + 1, "file": entry["file"], "path": entry["path"],
                "distance": float(np.sqrt(max(2.0 - 2.0 * float(score), 0.0))),
                "pid": entry["pid"], "camid": entry["camid"], "time": entry["time"],
            })
        rankings.append(ranking)
    if picture:
        save_picture(picture, image_paths, rankings, top)
    return rankings


def query_identities(image_paths) -> list[dict]:
    """``{"path", "pid", "camid"}`` per query (None where the file name carries no id)."""
    queries = []
    for path in image_paths:
        pid, camid = _identity(path)
        queries.append({"path": path, "pid": pid, "camid": camid})
    return queries


def save_picture(out_path: str, image_paths, rankings: list[list[dict]], top: int = 10) -> str:
    """The ranked-list picture of a search (query, then its top matches with distances).

    Borders follow the protocol's match / junk rule (:func:`aaa_keras.evaluation.rank.match_kind`)
    where the file names carry ids; the order is the index's (FAISS), not re-ranked here.
    """
    from aaa_keras.plots import save_ranked_lists

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
