"""CMC, mAP and mINP under the standard Market-1501 protocol, vectorised.

For each query the gallery is sorted by distance (stable: ties keep gallery
order); entries with the query's person id *and* camera are removed,
and so is junk (pid ``-1``); distractors (pid ``0``) stay as wrong matches. A
query with no true match left is skipped. Queries are processed in chunks so
only ``chunk_size x num_gallery`` sort indices exist at any time.

The rule lives here once, in :func:`protocol_masks`; :func:`match_kind` (one
gallery entry, for the pictures) and :func:`ranked_gallery` (each query's
top-k, junk removed or kept and flagged) apply the same rule.

``--same-camera-ok`` (single-camera data, another protocol) keeps a query's
same-camera gallery images of its identity: :func:`same_camera_ok_cameras`
gives every query a camera of its own and a gallery copy of the query image
that query's camera, so the one rule above removes only the image itself.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from aaa_keras.data.names import JUNK_PID
from aaa_keras.errors import UserError


NO_VALID_QUERY_FIX = (
    "A query is matched only against other cameras: give the images distinct camera ids (check with "
    "`python cli.py data check`), or pass --same-camera-ok to fit or evaluate for single-camera data (another protocol, "
    "written in the result).")
SAME_CAMERA_OK = "same-camera-ok"


# === The protocol's match / junk rule (the one copy of it) ===

def protocol_masks(q_pids, q_camids, g_pids, g_camids):
    """``(matches, junk)``: boolean arrays of the broadcast query x gallery pairs.

    Junk (ignored: removed from the ranking) is a gallery image with pid
    :data:`~aaa_keras.data.names.JUNK_PID` or with the query's pid seen by the
    query's camera; a true match is the query's pid in another camera, not
    junk. Distractors (pid 0) are neither: wrong matches. Pass ``(Q, 1)``
    query ids against ``(G,)`` or ``(Q, G)`` gallery ids; scalars work too.
    """
    matches = np.equal(g_pids, q_pids)
    junk = np.equal(g_camids, q_camids)
    junk &= matches  # same person seen by the same camera
    junk |= np.equal(g_pids, JUNK_PID)
    matches &= ~junk
    return matches, junk


def same_camera_ok_cameras(query_keys, gallery_keys) -> tuple[np.ndarray, np.ndarray]:
    """``(q_camids, g_camids)`` for the same-camera-ok protocol: query ``i`` is camera ``-(i + 1)``,
    a camera no gallery image has, except a gallery image with the query's key (its file path):
    that copy of the query image gets the query's camera and so is removed as junk."""
    q_camids = -np.arange(1, len(query_keys) + 1, dtype=np.int64)
    first = {}
    for index, key in enumerate(query_keys):
        first.setdefault(key, index)
    g_camids = np.array([q_camids[first[key]] if key in first else 0 for key in gallery_keys], np.int64)
    return q_camids, g_camids


def same_camera_ok_records(query, gallery) -> tuple[list, list]:
    """``(query, gallery)`` records (``data.names.ImageRecord``) with the cameras of
    :func:`same_camera_ok_cameras`, keyed by file path."""
    q_camids, g_camids = same_camera_ok_cameras([r.path for r in query], [r.path for r in gallery])
    return ([dataclasses.replace(r, camid=int(c)) for r, c in zip(query, q_camids)],
            [dataclasses.replace(r, camid=int(c)) for r, c in zip(gallery, g_camids)])


def mark_same_camera_ok(results: dict) -> dict:
    """``results`` (``{metric: entry}``) with ``"protocol": "same-camera-ok"`` in every metric entry,
    including the tables of an ``"occlusion"`` entry (``clean``, ``occluded``, ``drop``:
    ``evaluation/occluded.py``), which are results of the same protocol."""
    def mark(table: dict) -> dict:
        return {name: {**entry, "protocol": SAME_CAMERA_OK} if isinstance(entry, dict) and "mAP" in entry
                else entry for name, entry in table.items()}

    marked = mark(results)
    occlusion = results.get("occlusion")
    if isinstance(occlusion, dict):
        marked["occlusion"] = {**occlusion, **{key: mark(occlusion[key]) for key in ("clean", "occluded", "drop")
                                              if isinstance(occlusion.get(key), dict)}}
    return marked


def match_kind(query: dict, entry: dict) -> str:
    """``match``, ``wrong``, ``junk`` or ``unknown`` for one gallery entry of a query.

    ``query`` / ``entry``: dicts with ``pid`` and ``camid`` (None where the
    file name carries no id). :func:`protocol_masks` decides; a gallery pid -1
    is junk even for a query of unknown id, other unknown ids are ``unknown``,
    and an unknown camera is never the query's camera.
    """
    qpid, gpid = query.get("pid"), entry.get("pid")
    if qpid is None or gpid is None:
        return "junk" if gpid is not None and gpid == JUNK_PID else "unknown"
    qcam, gcam = query.get("camid"), entry.get("camid")
    if qcam is None or gcam is None:
        qcam, gcam = 0, 1  # cameras that differ
    matches, junk = protocol_masks(qpid, qcam, gpid, gcam)
    return "junk" if junk else "match" if matches else "wrong"


def ranked_gallery(distmat, q_pids, g_pids, q_camids, g_camids, top: int | None = None,
                   keep_junk: bool = False) -> list[dict]:
    """Per query, its gallery sorted by distance (stable) with the protocol applied; top ``top``.

    Returns one dict per query row of ``distmat``: ``indices`` (gallery
    indices, nearest first, junk removed unless ``keep_junk``), ``matches``
    (true match per index) and ``junk`` (all False unless ``keep_junk``),
    each cut to the first ``top`` (None: all). This is the ranking
    :func:`evaluate_rank` scores. NaN distances sort last instead of raising.
    """
    distmat, q_pids, g_pids, q_camids, g_camids = _validated_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids
    )
    if top is not None and (isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 0):
        raise UserError(f"top must be a non-negative integer or None; received {top!r}.")
    nan = np.isnan(distmat).any() if np.issubdtype(distmat.dtype, np.floating) else False
    order = np.argsort(distmat, axis=1, kind="stable") if nan else stable_argsort_rows(distmat)
    matches, junk = protocol_masks(q_pids[:, None], q_camids[:, None], g_pids[order], g_camids[order])
    rankings = []
    for row in range(len(order)):
        keep = np.ones(order.shape[1], bool) if keep_junk else ~junk[row]
        rankings.append({"indices": order[row][keep][:top], "matches": matches[row][keep][:top],
                         "junk": junk[row][keep][:top]})
    return rankings


# === Scores ===

def evaluate_rank(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 50,
    chunk_size: int = 256,
) -> dict:
    """Evaluate a query x gallery distance matrix.

    Returns ``{"cmc": float array (max_rank,), "mAP": float, "mINP": float,
    "num_valid": int}`` with fractions in [0, 1]. ``cmc[k]`` is the fraction of
    valid queries whose first true match is within the top ``k + 1``; past the
    end of the gallery it stays at its last value. The mINP of a query is
    ``num_true_matches / rank_of_hardest_true_match``.
    """
    distmat, q_pids, g_pids, q_camids, g_camids = _validated_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids
    )
    _check_positive_int(max_rank, "max_rank")
    _check_positive_int(chunk_size, "chunk_size")

    first_ranks, average_precisions, inverse_penalties = [], [], []
    for start in range(0, len(q_pids), chunk_size):
        stop = start + chunk_size
        chunk = _evaluate_chunk(
            distmat[start:stop], q_pids[start:stop], q_camids[start:stop], g_pids, g_camids
        )
        first_ranks.append(chunk["first_rank"])
        average_precisions.append(chunk["average_precision"])
        inverse_penalties.append(chunk["inverse_penalty"])

    first_rank = np.concatenate(first_ranks)
    num_valid = len(first_rank)
    if num_valid == 0:
        raise UserError(
            f"No query has a true match in another camera: all {len(q_pids)} queries "
            "were skipped after removing same-camera matches and junk (pid -1). "
            + NO_VALID_QUERY_FIX
        )
    cmc = _cumulative_match_curve(first_rank, max_rank)
    return {
        "cmc": cmc,
        "mAP": float(np.concatenate(average_precisions).mean()),
        "mINP": float(np.concatenate(inverse_penalties).mean()),
        "num_valid": int(num_valid),
    }


def _evaluate_chunk(distances, q_pids, q_camids, g_pids, g_camids) -> dict:
    """Per-query first-match rank, AP and INP for the valid queries of a chunk."""
    if np.isnan(distances).any():
        raise UserError("distmat contains NaN values; distances must be numbers (inf is allowed).")
    order = stable_argsort_rows(distances)
    matches, removed = protocol_masks(q_pids[:, None], q_camids[:, None], g_pids[order], g_camids[order])
    del order
    removed_so_far = np.cumsum(removed, axis=1, dtype=np.int32)
    del removed

    num_matches = np.count_nonzero(matches, axis=1)
    valid_rows = np.flatnonzero(num_matches)
    num_matches = num_matches[valid_rows]
    rows, cols = np.nonzero(matches)  # row-major: each row's matches in rank order
    # 1-based rank among the kept entries: positions so far minus removed so far.
    match_ranks = (cols + 1 - removed_so_far[rows, cols]).astype(np.float64)
    first_of_row = np.searchsorted(rows, valid_rows)
    match_number = np.arange(1, len(rows) + 1) - np.repeat(first_of_row, num_matches)
    precision_sums = np.bincount(rows, weights=match_number / match_ranks, minlength=len(matches))
    return {
        "first_rank": match_ranks[first_of_row].astype(np.int64),
        "average_precision": precision_sums[valid_rows] / num_matches,
        "inverse_penalty": num_matches / match_ranks[first_of_row + num_matches - 1],
    }


def stable_argsort_rows(distances: np.ndarray) -> np.ndarray:
    """``np.argsort(distances, axis=1, kind="stable")``, several times faster for float32.

    A float32 distance and its column index are packed into one unique uint64
    key (order-preserving float bits in the high word, the index in the low
    word); numpy's SIMD sort of the keys then gives exactly the stable order,
    read back from the low words. Other dtypes use the stable argsort itself
    (float64 cannot be packed without losing precision).
    """
    if not _fits_float32_exactly(distances.dtype):
        return np.argsort(distances, axis=1, kind="stable")
    bits = np.add(distances, np.float32(0.0), dtype=np.float32).view(np.uint32)  # -0.0 -> +0.0
    # Order-preserving map of IEEE floats to unsigned ints: flip all bits of
    # negatives, only the sign bit of positives.
    flip = (bits >> np.uint32(31)) * np.uint32(0x7FFFFFFF)
    flip |= np.uint32(0x80000000)
    bits ^= flip
    del flip
    keys = bits.astype(np.uint64)
    del bits
    keys <<= np.uint64(32)
    keys |= np.arange(distances.shape[1], dtype=np.uint64)
    keys.sort(axis=1)
    low_words = keys.view(np.uint32)[:, 0 if sys.byteorder == "little" else 1 :: 2]
    return low_words.astype(np.intp)


def _fits_float32_exactly(dtype: np.dtype) -> bool:
    if dtype in (np.float32, np.float16):
        return True
    return np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2


def _cumulative_match_curve(first_rank: np.ndarray, max_rank: int) -> np.ndarray:
    """Fraction of queries whose first true match is at rank <= 1..max_rank."""
    hits_at_rank = np.bincount(np.minimum(first_rank, max_rank + 1) - 1, minlength=max_rank + 1)
    return np.cumsum(hits_at_rank[:max_rank]) / len(first_rank)


def _validated_inputs(distmat, q_pids, g_pids, q_camids, g_camids):
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise UserError(
            f"distmat must be a 2-D (num_query, num_gallery) array; received shape {distmat.shape}."
        )
    if not np.issubdtype(distmat.dtype, np.number) or np.issubdtype(distmat.dtype, np.complexfloating):
        raise UserError(f"distmat must hold real numbers; received dtype {distmat.dtype}.")
    num_query, num_gallery = distmat.shape
    q_pids = _label_vector(q_pids, "q_pids", num_query, "rows")
    q_camids = _label_vector(q_camids, "q_camids", num_query, "rows")
    g_pids = _label_vector(g_pids, "g_pids", num_gallery, "columns")
    g_camids = _label_vector(g_camids, "g_camids", num_gallery, "columns")
    return distmat, q_pids, g_pids, q_camids, g_camids


def _label_vector(values, name: str, expected_length: int, axis_name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise UserError(f"{name} must be a 1-D array; received shape {array.shape}.")
    if len(array) != expected_length:
        raise UserError(
            f"{name} has {len(array)} entries but distmat has {expected_length} {axis_name}; "
            "they must match one to one."
        )
    if len(array) and not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(array == np.round(array)):
            raise UserError(f"{name} must hold integer ids; received dtype {array.dtype}.")
    return _narrowest_int(array)


def _narrowest_int(array: np.ndarray) -> np.ndarray:
    """int32 when the ids fit (halves the memory traffic of the gathers), else int64."""
    array = array.astype(np.int64, copy=False)
    limits = np.iinfo(np.int32)
    if array.size and (array.min() < limits.min or array.max() > limits.max):
        return array
    return array.astype(np.int32)


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name} must be a positive integer; received {value!r}.")


def evaluate_rank_per_query(distmat, q_pids, g_pids, q_camids, g_camids, chunk_size: int = 256) -> dict:
    """Per-query values behind :func:`evaluate_rank` (the same protocol, nothing averaged).

    Returns ``{"query_index": int array, "first_rank": int array,
    "average_precision": float array, "inverse_penalty": float array}``, one
    entry per valid query (a query with a true match left after removing
    same-camera matches and junk), in query order; ``query_index`` gives each
    entry's row of ``distmat``. ``mean(average_precision)`` is
    ``evaluate_rank``'s mAP, ``mean(first_rank == 1)`` its ``cmc[0]``.
    """
    distmat, q_pids, g_pids, q_camids, g_camids = _validated_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids
    )
    _check_positive_int(chunk_size, "chunk_size")
    indices, first_ranks, average_precisions, inverse_penalties = [], [], [], []
    for start in range(0, len(q_pids), chunk_size):
        stop = start + chunk_size
        chunk = _evaluate_chunk(
            distmat[start:stop], q_pids[start:stop], q_camids[start:stop], g_pids, g_camids
        )
        # The rows _evaluate_chunk keeps: a true match in another camera that is not junk.
        true_match, _ = protocol_masks(q_pids[start:stop, None], q_camids[start:stop, None], g_pids, g_camids)
        indices.append(start + np.flatnonzero(true_match.any(axis=1)))
        first_ranks.append(chunk["first_rank"])
        average_precisions.append(chunk["average_precision"])
        inverse_penalties.append(chunk["inverse_penalty"])
    query_index = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    if len(query_index) == 0:
        raise UserError(
            f"No query has a true match in another camera: all {len(q_pids)} queries "
            "were skipped after removing same-camera matches and junk (pid -1). "
            + NO_VALID_QUERY_FIX
        )
    return {
        "query_index": query_index.astype(np.int64),
        "first_rank": np.concatenate(first_ranks),
        "average_precision": np.concatenate(average_precisions),
        "inverse_penalty": np.concatenate(inverse_penalties),
    }
