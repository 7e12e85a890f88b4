"""Parity of exported models with the Keras embedder: cosines, retrieval mAP, thresholds.

What ``parity.json`` holds, per exported variant, against the Keras
embedder's output on the same images (the *held set*: the test split, query
and gallery, never used for calibration):

- ``cosine_min`` / ``cosine_mean``: per-image cosine similarity;
- ``centred_cosine_min`` / ``centred_cosine_mean``: the same after
  subtracting the held set's mean Keras embedding from both. Re-ID
  embeddings share a large common component (two different persons often
  have cosine > 0.8), which a raw cosine counts as agreement; the centred
  cosine measures agreement on the part that tells persons apart;
- ``mAP`` / ``rank1`` (percent): retrieval on the test split (query vs
  gallery, standard Market-1501 protocol via ``evaluate_rank``).

Thresholds (SPEC section 4), on the per-image cosine: its minimum >= 0.999 for
float32, float16, the SavedModel, ONNX and OpenVINO; for int8 its 1st percentile
>= 0.98 (:data:`GATED_COSINE`; the minimum is reported beside it); int8 mAP at most 1 point below
float32's, or below the Keras model's when float32 TFLite is not exported in the same call
(:func:`int8_map_drop`). The SavedModel's other two signatures (``serving_uint8``,
``serve_bytes``) are held to the SavedModel's threshold too. Missing one
raises ``UserError("parity missed: ...")``.

Which images: :func:`held_set` chooses the held set (the whole test split, or
whole test identities of it up to a bound; every format and every signature of
the SavedModel is checked on all of it); :func:`spread` picks evenly spaced
items (the int8 calibration images);
:class:`Reference` holds the Keras embeddings of the held set and scores an
exported model's embeddings against them.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from aaa_keras.data.names import record_ids
from aaa_keras.errors import UserError

# The per-image cosine statistic each format is gated on: int8 by a low percentile (its rounding noise is
# statistical and the minimum over N images falls as N grows; docs/decisions.md, "The int8 gate"), every
# float format by the minimum (any image below 0.999 there is a defect). The minimum is reported for all.
GATED_COSINE = {"int8": "cosine_p1"}
INT8_COSINE_PERCENTILE = 1.0
COSINE_THRESHOLDS = {"saved_model": 0.999, "onnx": 0.999, "openvino": 0.999, "float32": 0.999, "float16": 0.999,
                     "int8": 0.98}
MAX_INT8_MAP_DROP = 1.0  # percentage points of mAP, int8 vs float32 TFLite (else vs Keras)
# The SavedModel's other signatures, checked against the SavedModel's threshold: (report key, signature).
SIGNATURE_COSINES = (("serving_uint8_cosine_min", "serving_uint8"), ("serve_bytes_cosine_min", "serve_bytes"))


# === Which images the checks use ===

def spread(items: list, count: int) -> list:
    """``count`` items evenly spread over ``items`` (all of them when fewer)."""
    if count >= len(items):
        return list(items)
    indices = np.unique(np.linspace(0, len(items) - 1, count).round().astype(int))
    return [items[i] for i in indices]


@dataclasses.dataclass(frozen=True)
class HeldSet:
    """The parity images: query and gallery records of the test split (never used for calibration)."""

    query: list
    gallery: list
    subset: bool = False  # whether part of the test split was left out (``max_images``)

    @property
    def records(self) -> list:
        return self.query + self.gallery

    def retrieval(self, embeddings: np.ndarray) -> dict:
        """``{"mAP", "rank1", "num_query"}`` of embeddings of :attr:`records` (query first)."""
        (q_pids, q_camids), (g_pids, g_camids) = record_ids(self.query), record_ids(self.gallery)
        count = len(self.query)
        return retrieval(embeddings[:count], embeddings[count:], q_pids, g_pids, q_camids, g_camids)


def held_set(dataset, max_images: int | None = None) -> HeldSet:
    """Query and gallery records for parity: the test split, or whole identities of it up to ``max_images``."""
    query, gallery = list(dataset.query), list(dataset.gallery)
    total = len(query) + len(gallery)
    if not max_images or total <= max_images:
        return HeldSet(query, gallery)
    fraction = max_images / total
    pids = sorted({r.pid for r in query})
    keep = set(spread(pids, max(1, int(round(len(pids) * fraction)))))
    other = [r for r in gallery if r.pid not in pids]  # distractors, junk, gallery-only ids
    other_kept = set(id(r) for r in spread(other, int(round(len(other) * fraction))))
    query = [r for r in query if r.pid in keep]
    gallery = [r for r in gallery if r.pid in keep or id(r) in other_kept]
    return HeldSet(query, gallery, subset=len(query) + len(gallery) < total)


@dataclasses.dataclass(frozen=True)
class Reference:
    """The Keras embeddings of a held set, against which every exported model is scored."""

    held: HeldSet
    embeddings: np.ndarray

    @functools.cached_property
    def mean(self) -> np.ndarray:
        return self.embeddings.mean(axis=0)

    @functools.cached_property
    def retrieval(self) -> dict:
        """Retrieval (mAP, rank-1) of the Keras embeddings themselves."""
        return self.held.retrieval(self.embeddings)

    def compare(self, candidate: np.ndarray, indices=None, reference: np.ndarray | None = None) -> dict:
        """:func:`compare` with the held set's mean; ``indices`` select part of the held set, ``reference``
        replaces the Keras embeddings (e.g. of rounded pixels)."""
        if reference is None:
            reference = self.embeddings if indices is None else self.embeddings[indices]
        return compare(reference, candidate, self.mean)


# === Scores and thresholds ===


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(N, D)`` arrays."""
    return np.sum(_normalized(a) * _normalized(b), axis=1)


def centred_cosines(a: np.ndarray, b: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Row-wise cosine after subtracting ``mean`` (the reference set's mean) from both."""
    return cosines(np.asarray(a, np.float64) - mean, np.asarray(b, np.float64) - mean)


def retrieval(query: np.ndarray, gallery: np.ndarray, q_pids, g_pids, q_camids, g_camids) -> dict:
    """``{"mAP", "rank1"}`` in percent: Euclidean distance on L2-normalised features."""
    from aaa_keras.evaluation.distance import euclidean_distance
    from aaa_keras.evaluation.rank import evaluate_rank

    distances = euclidean_distance(_normalized(query).astype(np.float32), _normalized(gallery).astype(np.float32))
    result = evaluate_rank(distances, q_pids, g_pids, q_camids, g_camids)
    return {"mAP": round(100.0 * result["mAP"], 3), "rank1": round(100.0 * float(result["cmc"][0]), 3),
            "num_query": int(result["num_valid"])}


def compare(reference: np.ndarray, candidate: np.ndarray, mean: np.ndarray | None = None) -> dict:
    """Cosine statistics of ``candidate`` against ``reference`` (rounded, JSON-ready)."""
    if candidate.shape != reference.shape:
        raise UserError(f"parity: the exported model gives embeddings of shape {candidate.shape}, "
                        f"Keras gives {reference.shape}")
    if not np.isfinite(candidate).all():
        return {"cosine_min": float("nan"), "cosine_mean": float("nan"), "finite": False}
    mean = reference.mean(axis=0) if mean is None else mean
    plain = cosines(reference, candidate)
    centred = centred_cosines(reference, candidate, mean)
    return {
        "cosine_min": round(float(plain.min()), 6), "cosine_mean": round(float(plain.mean()), 6),
        # an actual image's cosine: the minimum on a held set of 100 images or fewer
        "cosine_p1": round(float(np.percentile(plain, INT8_COSINE_PERCENTILE, method="lower")), 6),
        "centred_cosine_min": round(float(centred.min()), 6),
        "centred_cosine_mean": round(float(centred.mean()), 6),
        "worst_image": int(np.argmin(plain)), "finite": True,
    }


def failures(report: dict) -> list[str]:
    """What misses the thresholds in a parity report (empty when it passes)."""
    problems = []
    variants = {name: report[name] for name in ("saved_model", "onnx", "openvino") if report.get(name)}
    variants.update(report.get("tflite", {}))
    for name, entry in variants.items():
        threshold, gated = COSINE_THRESHOLDS[name], GATED_COSINE.get(name, "cosine_min")
        if not entry.get("finite", True):
            problems.append(f"{name} outputs NaN or inf")
        elif entry[gated] < threshold:
            statistic = "min" if gated == "cosine_min" else f"{INT8_COSINE_PERCENTILE:g}st percentile"
            beside = "" if gated == "cosine_min" else f"min {entry['cosine_min']:.4f}, "
            problems.append(f"{name} per-image cosine to Keras {statistic} {entry[gated]:.4f} < {threshold} "
                            f"({beside}mean {entry['cosine_mean']:.4f}){_noise_hint(report, name, threshold)}")
        for key, signature in SIGNATURE_COSINES:
            value = entry.get(key)
            if value is not None and not value >= threshold:  # NaN misses too
                problems.append(f"{name} {signature} cosine to Keras min {value:.4f} < {threshold}")
    drop = int8_map_drop(report)
    if drop is not None and drop["points"] > MAX_INT8_MAP_DROP:
        problems.append(f"int8 mAP {report['tflite']['int8']['mAP']:.2f} is {drop['points']:.2f} points below "
                        f"{drop['reference']}'s {drop['reference_mAP']:.2f} (at most {MAX_INT8_MAP_DROP} allowed)")
    return problems


def int8_map_drop(report: dict) -> dict | None:
    """``{"reference", "reference_mAP", "points"}``: how far int8's mAP is below float32 TFLite's, or below
    the Keras model's (``report["keras"]``) when float32 is not in the report; None without an int8 mAP."""
    tflite = report.get("tflite", {})
    if "mAP" not in tflite.get("int8", {}):
        return None
    if "mAP" in tflite.get("float32", {}):
        reference, value = "float32", tflite["float32"]["mAP"]
    elif "mAP" in report.get("keras", {}):
        reference, value = "keras", report["keras"]["mAP"]
    else:
        return None
    return {"reference": reference, "reference_mAP": value, "points": round(value - tflite["int8"]["mAP"], 3)}


def _noise_hint(report: dict, name: str, threshold: float) -> str:
    """For a missed int8 cosine: what the float network does under pixel noise (export.py)."""
    noise = report.get("keras", {}).get("pixel_noise")
    if name != "int8" or not noise:
        return ""
    hint = (f"; the float network itself gives cosine min {noise['cosine_min']:.4f} under Gaussian pixel noise "
            f"of {noise['sigma']:g} grey levels")
    if noise["cosine_min"] < threshold:
        hint += (": it amplifies small perturbations, so int8's rounding cannot stay within the gate; "
                 "with a BNNeck export the feature before it (--neck-feature before, the default where int8 "
                 "is exported), or train longer or from ImageNet weights, or deploy float16")
    return hint


def thresholds() -> dict:
    return {"cosine": dict(COSINE_THRESHOLDS),
            "cosine_statistic": {name: GATED_COSINE.get(name, "cosine_min") for name in COSINE_THRESHOLDS},
            "int8_max_map_drop_points": MAX_INT8_MAP_DROP}
