"""Evaluate a trained stage of a run directory: embed query/gallery, rank, report.

This is the TensorFlow side of evaluation (the rest of the package is numpy):
it builds the stage's embedder, extracts L2-normalised embeddings with the
evaluation pipeline and hands them to :func:`evaluation.occluded.evaluate_queries`
(``evaluate_features``, and the clean / occluded pair of ``--occlude-queries``).
"""

from __future__ import annotations

import os

import numpy as np

from aaa_keras.data.check import verify_images
from aaa_keras.data.layouts import load_dataset
from aaa_keras.data.names import ImageRecord, record_ids
from aaa_keras.data.pipeline import eval_dataset, is_decode_error, op_error_reason
from aaa_keras.files import write_json_atomically
from aaa_keras.model.backbone import build_embedder


def extract_embeddings(embedder, records: list[ImageRecord], image_size, batch_size: int = 64) -> np.ndarray:
    """``(N, D)`` float32 L2-normalised embeddings of ``records``, in order."""
    if not records:
        return np.zeros((0, embedder.output.shape[-1]), np.float32)
    dataset = eval_dataset([r.path for r in records], image_size, batch_size)
    import sys

    verbose = 1 if sys.stdout.isatty() and len(records) > 10 * batch_size else 0  # a bar for big splits
    return np.asarray(embedder.predict(dataset, verbose=verbose), np.float32)




def evaluate_run(run_dir: str, stage: str | None = None, data: str | None = None,
                 metrics=("euclidean",), rerank: bool = False, json_path: str | None = None,
                 log=print, distribute: str = "none", mixed_precision: str = "",
                 jit_compile: bool = False, skip_bad_images: bool = False, neck_feature: str | None = None,
                 same_camera_ok: bool = False, occlude_queries: int | None = None) -> dict:
    """Evaluate ``stage`` of ``run_dir`` on ``data`` (default: the run's own dataset).

    ``distribute`` / ``mixed_precision`` / ``jit_compile`` apply to the
    embedding extraction. An image that does not decode is an error naming it,
    unless ``skip_bad_images`` drops it (and says so). ``same_camera_ok``: the single-camera
    protocol (``rank.same_camera_ok_records``), marked in the printed and the JSON result.
    ``occlude_queries`` (a seed): the
    queries are also evaluated occluded (``evaluation/occluded.py``) and reported beside the
    clean result; a dataset with clean query twins (``builtin:occluded``) is always reported
    both ways. The results then hold an ``"occlusion"`` entry: ``{"source", "seed",
    "mean_fraction", "clean": {...}, "occluded": {...}, "drop": {...}}``.
    """
    import tensorflow as tf

    from aaa_keras.errors import UserError
    from aaa_keras.data.source import own_data_changed, resolve_run_data
    from aaa_keras.execution import distribution_strategy, precision_policy
    from aaa_keras.run_dir import load_trained

    if occlude_queries is not None:
        from aaa_keras.evaluation.occluded import check_seed

        check_seed(occlude_queries)
    if json_path and os.path.isdir(json_path):
        raise UserError(f"--json {json_path} is a directory; give a file name such as {json_path}/eval.json")
    strategy = distribution_strategy(distribute)  # before any other TensorFlow op
    with precision_policy(mixed_precision), strategy.scope():
        trained = load_trained(run_dir, stage, neck_feature)
        embedder = build_embedder(trained.parts)
        embedder.compile(jit_compile=jit_compile)
    config, stage = trained.config, trained.stage
    root = resolve_run_data(data, config.data, run_dir, log)
    dataset = load_dataset(root)
    warning = own_data_changed(config, data, dataset, root)
    if warning:
        log(warning)
    splits = ("query", "gallery") + (("train",) if any(m != "euclidean" for m in metrics) else ())
    dataset = verify_images(dataset, splits, run_dir, skip_bad_images, log, purpose="evaluate")
    if same_camera_ok:  # every query a camera of its own; the JSON is written once marked, below
        dataset = _same_camera_ok_dataset(dataset, log)
    try:
        results = _evaluate_embedder(embedder, dataset, config, run_dir, stage, root, metrics, rerank,
                                     None if same_camera_ok else json_path, log, occlude_queries)
        return _mark_same_camera_ok(results, json_path, log) if same_camera_ok else results
    except tf.errors.InvalidArgumentError as error:
        if not is_decode_error(error):  # a shape or dtype problem, not an image: TensorFlow's own error
            raise
        raise UserError(f"an image of {root} does not decode ({op_error_reason(error)}); "
                        f"find it with `python cli.py data check {root}` or pass --skip-bad-images") from None


def _evaluate_embedder(embedder, dataset, config, run_dir, stage, root, metrics, rerank, json_path, log,
                       occlude_queries=None):
    from aaa_keras.evaluation.occluded import evaluate_queries

    log(f"Evaluating stage {stage} of {run_dir} on {root}: "
        f"{len(dataset.query)} query, {len(dataset.gallery)} gallery images")

    def embed(records):
        return extract_embeddings(embedder, records, config.image_size)

    train_kwargs = {}
    if any(m != "euclidean" for m in metrics):
        train_records = dataset.train_identities()
        train_pids, train_camids = record_ids(train_records)
        train_kwargs = dict(
            train_features=embed(train_records), train_pids=train_pids, train_camids=train_camids,
            metric_dir=os.path.join(run_dir, stage, "metrics", _dataset_key(root)))
    results = evaluate_queries(embed, dataset, root, metrics, rerank, train_kwargs, occlude_queries, log)
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        write_json_atomically(json_path, results)
        log(f"Wrote {json_path}")
    return results


def _same_camera_ok_dataset(dataset, log):
    """``dataset`` with the cameras of ``rank.same_camera_ok_records`` (its own file never a match)."""
    import dataclasses

    from aaa_keras.evaluation.rank import SAME_CAMERA_OK, same_camera_ok_records

    query, gallery = same_camera_ok_records(dataset.query, dataset.gallery)
    log(f"Protocol: {SAME_CAMERA_OK} (same-camera gallery images of the query's identity count as matches, "
        "the query image itself never; not comparable with Market-1501's cross-camera protocol)")
    return dataclasses.replace(dataset, query=query, gallery=gallery)


def _mark_same_camera_ok(results: dict, json_path, log) -> dict:
    """``results`` marked ``same-camera-ok`` in every metric entry, written to ``json_path``."""
    from aaa_keras.evaluation.rank import mark_same_camera_ok

    results = mark_same_camera_ok(results)
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        write_json_atomically(json_path, results)
        log(f"Wrote {json_path}")
    return results


def _dataset_key(root: str) -> str:
    """A directory name for metric models learned on one dataset's training split."""
    return os.path.basename(os.path.normpath(root)) or "data"
