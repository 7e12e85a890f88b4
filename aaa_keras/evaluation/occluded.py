"""Clean and occluded queries side by side: the occlusion stress test (``--occlude-queries SEED``)
and the clean twins of an occluded dataset (``builtin:occluded``'s ``query_clean/``).

TensorFlow only to decode a query with the pipeline's decoder: this module makes the occluded query images and formats the comparison;
``evaluation/run.py`` and ``ablate/run.py`` embed them.

Two sources of a (clean, occluded) pair of query sets, the same queries in the same order:

- ``--occlude-queries SEED`` on any dataset: the queries as given are the clean set; each is
  decoded by the pipeline's own decoder (``data.pipeline.decode_pixels``), occluded by
  ``data/occluders.py`` with a Generator seeded from ``(SEED, CRC-32 of its path relative to
  the dataset root)``, over a fraction drawn from 20-50 %, and written losslessly (PNG,
  ``<index>_<stem>.png``) to a scratch directory. So outside the occluder the model receives
  exactly the pixels of the clean query (no change of JPEG decoder), and the clean result is
  the ordinary evaluation's. The same SEED gives the same images whatever the order; the
  gallery and training images are never touched.
- a dataset that ships its queries' clean twins (``query_clean/``, ``occlusion.json``):
  the queries as given are the occluded set, the twins the clean one.
"""

from __future__ import annotations

import dataclasses
import os
import zlib

import cv2
import numpy as np

from aaa_keras.data import occluders
from aaa_keras.data.names import ImageRecord, is_image_file
from aaa_keras.data.occlusion_protocol import CLEAN_QUERY_DIR, clean_query_dir
from aaa_keras.data.names import record_ids
from aaa_keras.errors import DatasetError, UserError
from aaa_keras.evaluation.report import evaluate_features, format_table

_PURPOSE = 21  # mixed into every query's seed, apart from data/synth.py's purposes


@dataclasses.dataclass(frozen=True)
class QueryPair:
    """The same queries clean and occluded (record ``i`` of each is one query), and where the
    occluded ones come from: ``"occlude-queries"`` (generated, with ``seed``) or ``"dataset"``."""

    clean: list
    occluded: list
    source: str
    seed: int | None = None
    mean_fraction: float | None = None

    def describe(self) -> str:
        if self.source == "dataset":
            return f"queries as given (occluded) vs their clean twins in {CLEAN_QUERY_DIR}/"
        return (f"queries occluded with seed {self.seed} (mean covered fraction {self.mean_fraction:.2f}) "
                "vs the queries as given")


def query_key(path: str, root: str | None) -> str:
    """What seeds a query's occluder: its path relative to the dataset ``root`` with ``/``
    separators (``query/0001_c1s1_000001_00.jpg``, ``0001/c1/0.jpg``): unique per query, the same
    whatever the order of the queries or where the dataset lies; the file name when no root."""
    if root is None:
        return os.path.basename(path)
    return os.path.relpath(os.path.abspath(path), os.path.abspath(root)).replace(os.sep, "/")


def query_rng(seed: int, key: str) -> np.random.Generator:
    """The Generator of one query's occluder: depends on ``seed`` and ``key`` (:func:`query_key`) only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _PURPOSE, zlib.crc32(key.encode())]))


def decode_query(path: str) -> np.ndarray:
    """A query's pixels as the evaluation pipeline decodes them (``data.pipeline.decode_pixels``,
    TensorFlow), as a BGR uint8 array for OpenCV. Decoding with OpenCV instead would change the
    JPEG decoder between the clean and the occluded query (87 % of pixels differ by a level or two)."""
    import tensorflow as tf

    from aaa_keras.data.pipeline import decode_pixels, is_decode_error, op_error_reason

    try:
        rgb = decode_pixels(tf.io.read_file(path)).numpy()
    except tf.errors.InvalidArgumentError as error:
        if not is_decode_error(error):
            raise
        raise DatasetError(f"{path}: the query image does not decode ({op_error_reason(error)}); "
                           "find it with `python cli.py data check`") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def occlude_query_file(path: str, seed: int, root: str | None = None) -> occluders.Occlusion:
    """One query image (decoded as the pipeline does) with its occluder for ``seed``."""
    rng = query_rng(seed, query_key(path, root))
    return occluders.occlusion(decode_query(path), rng, occluders.random_fraction(rng))


def write_occluded_queries(records: list[ImageRecord], seed: int, out_dir: str,
                           root: str | None = None) -> tuple[list[ImageRecord], float]:
    """Each query of ``records`` occluded for ``seed``, written to ``out_dir/<index>_<stem>.png``
    (lossless; the record keeps its pid and camera); returns the new records in the same order
    and the mean covered fraction. ``root``: the dataset root, whose relative paths seed the
    occluders (:func:`query_key`), so same-named files in different folders differ."""
    check_seed(seed)
    os.makedirs(out_dir, exist_ok=True)
    occluded, fractions = [], []
    for index, record in enumerate(records):
        result = occlude_query_file(record.path, seed, root)
        stem = os.path.splitext(os.path.basename(record.path))[0]
        path = os.path.join(out_dir, f"{index}_{stem}.png")
        ok, buffer = cv2.imencode(".png", result.image)
        if not ok:
            raise RuntimeError(f"cv2.imencode failed on the occluded {record.path}")
        with open(path, "wb") as f:
            f.write(buffer.tobytes())
        occluded.append(dataclasses.replace(record, path=path))
        fractions.append(result.fraction)
    return occluded, float(np.mean(fractions)) if fractions else 0.0


def already_occluded_error(data: str) -> UserError:
    """The refusal of ``--occlude-queries`` on ``data`` (a path or ``builtin:NAME``) whose queries
    are already occluded (it ships clean twins)."""
    return UserError(f"--occlude-queries: the queries of {data} are already occluded (it has "
                     f"{CLEAN_QUERY_DIR}/); its evaluation reports them beside their clean twins "
                     "without the option")


def check_seed(seed) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"--occlude-queries: expected a non-negative integer seed, got {seed!r}")


def clean_twins(root: str, queries: list[ImageRecord]) -> list[ImageRecord] | None:
    """The clean twin of every query (``root/query_clean/<same name>``), or None when the
    dataset has no ``query_clean/``; a missing twin is a DatasetError naming it."""
    directory = clean_query_dir(root)
    if directory is None:
        return None
    names = {n for n in os.listdir(directory) if is_image_file(n)}
    missing = [os.path.basename(r.path) for r in queries if os.path.basename(r.path) not in names]
    if missing:
        raise DatasetError(f"{directory}: no clean twin of {len(missing)} queries (e.g. {missing[0]}); "
                           "every query of an occluded dataset needs one, with the same file name")
    return [dataclasses.replace(r, path=os.path.join(directory, os.path.basename(r.path))) for r in queries]


def query_pair(root: str, queries: list[ImageRecord], occlude_seed: int | None, scratch: str) -> QueryPair | None:
    """The clean / occluded query sets of this evaluation, or None when there is nothing to compare.
    ``scratch``: where generated queries go. ``--occlude-queries`` on a dataset that ships clean
    twins is refused (its queries are already occluded)."""
    twins = clean_twins(root, queries)
    if occlude_seed is not None:
        if twins is not None:
            raise already_occluded_error(root)
        occluded, fraction = write_occluded_queries(queries, occlude_seed, scratch, root)
        return QueryPair(list(queries), occluded, "occlude-queries", int(occlude_seed), fraction)
    if twins is not None:
        return QueryPair(twins, list(queries), "dataset")
    return None


def evaluate_queries(embed, dataset, root: str, metrics, rerank: bool, train_kwargs: dict,
                     occlude_seed: int | None, log) -> dict:
    """``evaluate_features`` of the queries against the gallery, with ``embed(records) -> (N, D)``;
    when there is a clean / occluded pair (:func:`query_pair`), both, printed side by side, and
    an ``"occlusion"`` entry in the results: ``{"source", "seed", "mean_fraction",
    "queries_as_given", "clean", "occluded", "drop"}``. The metric keys stay the queries as
    given (so a clean dataset's results keep their meaning)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="aaa-occluded-queries-") as scratch:
        pair = query_pair(root, dataset.query, occlude_seed, scratch)
        qf = embed(dataset.query)
        other_qf = None
        if pair is not None:  # the queries of the pair that are not dataset.query
            other_qf = embed(pair.occluded if pair.source == "occlude-queries" else pair.clean)
    gf = embed(dataset.gallery)
    q_pids, q_camids = record_ids(dataset.query)
    g_pids, g_camids = record_ids(dataset.gallery)
    labels = (q_pids, g_pids, q_camids, g_camids)
    results = evaluate_features(qf, gf, *labels, metrics=tuple(metrics), rerank=rerank, **train_kwargs)
    if pair is None:
        log(format_table(results))
        return results
    other = evaluate_features(other_qf, gf, *labels, metrics=tuple(metrics), rerank=rerank, **train_kwargs)
    clean, occluded = (results, other) if pair.source == "occlude-queries" else (other, results)
    log("Clean queries:\n" + format_table(clean))
    log("Occluded queries:\n" + format_table(occluded))
    log(f"Clean vs occluded ({pair.describe()}):\n" + format_occlusion_table(clean, occluded))
    return {**results, "occlusion": {
        "source": pair.source, "seed": pair.seed, "mean_fraction": pair.mean_fraction,
        "queries_as_given": "clean" if pair.source == "occlude-queries" else "occluded",
        "clean": clean, "occluded": occluded, "drop": occlusion_drop(clean, occluded)}}


_MEASURES = (("rank1", "Rank-1"), ("mAP", "mAP"))


def occlusion_drop(clean: dict, occluded: dict) -> dict:
    """``{name: {measure: clean - occluded}}`` (percentage points) for every evaluation name
    (metric, ``+rerank``) in both results."""
    return {name: {key: round(clean[name][key] - occluded[name][key], 4) for key in ("rank1", "mAP", "mINP")}
            for name in clean if name in occluded}


def format_occlusion_table(clean: dict, occluded: dict) -> str:
    """One row per evaluation name: clean / occluded / drop of Rank-1 and mAP (percent)."""
    names = [n for n in clean if n in occluded]
    width = max([len("metric"), *(len(n) for n in names)])
    header = f"{'metric':<{width}}" + "".join(
        f"{title:>{len(title) + 3}}" for _, label in _MEASURES
        for title in (f"clean {label}", f"occluded {label}", "drop"))
    lines = [header, "-" * len(header)]
    for name in names:
        cells = ""
        for key, label in _MEASURES:
            values = (clean[name][key], occluded[name][key], clean[name][key] - occluded[name][key])
            titles = (f"clean {label}", f"occluded {label}", "drop")
            cells += "".join(f"{v:>{len(t) + 3}.2f}" for v, t in zip(values, titles))
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines)
