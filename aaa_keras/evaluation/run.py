"""Evaluate a trained stage of a run directory: embed query/gallery, rank, report.

This is the TensorFlow side of evaluation (the rest of the package is numpy):
it builds the stage's embedder, extracts L2-normalised embeddings with the
evaluation pipeline and hands them to :func:`evaluate_features`.
"""

from __future__ import annotations

import json
import os

import numpy as np

from aaa_keras.data.names import ImageRecord, load_dataset
from aaa_keras.data.pipeline import eval_dataset
from aaa_keras.evaluation.report import evaluate_features, format_table
from aaa_keras.model.backbone import build_embedder

METRICS = ("euclidean", "xqda", "kissme")


def extract_embeddings(embedder, records: list[ImageRecord], image_size, batch_size: int = 64) -> np.ndarray:
    """``(N, D)`` float32 L2-normalised embeddings of ``records``, in order."""
    if not records:
        return np.zeros((0, embedder.output.shape[-1]), np.float32)
    dataset = eval_dataset([r.path for r in records], image_size, batch_size)
    return np.asarray(embedder.predict(dataset, verbose=0), np.float32)


def _ids(records):
    return (np.array([r.pid for r in records], np.int64), np.array([r.camid for r in records], np.int64))


def evaluate_run(run_dir: str, stage: str | None = None, data: str | None = None,
                 metrics=("euclidean",), rerank: bool = False, json_path: str | None = None,
                 log=print) -> dict:
    """Evaluate ``stage`` of ``run_dir`` on ``data`` (default: the run's own dataset)."""
    from aaa_keras.training import load_trained, resolve_data

    config, parts, _, stage = load_trained(run_dir, stage)
    root = resolve_data(data or config.data, log)
    dataset = load_dataset(root)
    embedder = build_embedder(parts)
    log(f"Evaluating stage {stage} of {run_dir} on {root}: "
        f"{len(dataset.query)} query, {len(dataset.gallery)} gallery images")
    qf = extract_embeddings(embedder, dataset.query, config.image_size)
    gf = extract_embeddings(embedder, dataset.gallery, config.image_size)
    train_kwargs = {}
    if any(m != "euclidean" for m in metrics):
        train_records = dataset.train_identities()
        train_pids, train_camids = _ids(train_records)
        train_kwargs = dict(
            train_features=extract_embeddings(embedder, train_records, config.image_size),
            train_pids=train_pids, train_camids=train_camids,
            metric_dir=os.path.join(run_dir, stage, "metrics", _dataset_key(root)))
    q_pids, q_camids = _ids(dataset.query)
    g_pids, g_camids = _ids(dataset.gallery)
    results = evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metrics=tuple(metrics),
                                rerank=rerank, **train_kwargs)
    log(format_table(results))
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        tmp = json_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, json_path)
        log(f"Wrote {json_path}")
    return results


def _dataset_key(root: str) -> str:
    """A directory name for metric models learned on one dataset's training split."""
    return os.path.basename(os.path.normpath(root)) or "data"
