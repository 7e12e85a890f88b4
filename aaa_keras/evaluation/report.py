"""From features to the numbers a user reads: per-metric results and a table.

``evaluate_features`` returns, per metric name (and ``<metric>+rerank`` when
re-ranking is on), the SPEC section 6 entry ``{"rank1", "rank5", "rank10",
"mAP", "mINP", "num_query"}`` in percent, the same dict ``evaluate --json``
writes. All features are L2-normalised first (the retrieval feature of the
spec); XQDA and KISSME are fitted on the normalised training features.

Re-ranking under a learned metric runs the k-reciprocal algorithm on the
features embedded so that squared Euclidean distance equals the learned one
(``QuadraticMetric.embed``: ``M = L L^T``). KISSME's kernel is PSD by
construction; XQDA's is PSD whenever all kept eigenvalues exceed 1 (the
normal case) and is clipped to its PSD part for re-ranking otherwise.
"""

from __future__ import annotations

import os

import numpy as np

from aaa_keras.errors import UserError
from aaa_keras.evaluation.distance import euclidean_distance, l2_normalize
from aaa_keras.evaluation.metric_learning import KISSME, XQDA, training_fingerprint
from aaa_keras.evaluation.rank import evaluate_rank
from aaa_keras.evaluation.rerank import re_ranking
from aaa_keras.vocabulary import METRICS

LEARNED_METRICS = {model.kind: model for model in (XQDA, KISSME)}
RERANK_SUFFIX = "+rerank"


def evaluate_features(
    qf,
    gf,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    metrics=("euclidean",),
    rerank=False,
    train_features=None,
    train_pids=None,
    train_camids=None,
    metric_dir=None,
    rerank_params=(20, 6, 0.3),
) -> dict:
    """Evaluate query/gallery features under each metric, optionally re-ranked.

    ``metrics`` holds names from :data:`aaa_keras.vocabulary.METRICS` or
    ``"all"``. A learned metric is loaded from ``metric_dir/<metric>.npz`` when
    that file was fitted on the same training data, else fitted on
    ``train_features`` / ``train_pids`` (/ ``train_camids``) and saved there.
    Returns ``{name: {"rank1", "rank5", "rank10", "mAP", "mINP", "num_query"}}``
    with percentages, in the order of ``metrics``.
    """
    names = _metric_names(metrics)
    k1, k2, lambda_value = _rerank_parameters(rerank_params)
    queries = l2_normalize(qf)
    gallery = l2_normalize(gf)
    labels = (q_pids, g_pids, q_camids, g_camids)
    _check_label_lengths(labels, len(queries), len(gallery))
    training = None
    if any(name in LEARNED_METRICS for name in names):
        training = _training_data(train_features, train_pids, train_camids)

    results = {}
    for name in names:
        model = None if name == "euclidean" else _fitted_metric(name, training, metric_dir)
        if model is None:
            distances = euclidean_distance(queries, gallery)
        else:
            distances = model.distance(queries, gallery)
        results[name] = summarize(evaluate_rank(distances, *labels))
        del distances
        if rerank:
            if model is None:
                space = (queries, gallery)
            else:
                space = (model.embed(queries), model.embed(gallery))
            reranked = re_ranking(*space, k1, k2, lambda_value)
            results[name + RERANK_SUFFIX] = summarize(evaluate_rank(reranked, *labels))
    return results


def summarize(rank_result: dict) -> dict:
    """The SPEC section 6 entry (percent) from an ``evaluate_rank`` result."""
    cmc = rank_result["cmc"]
    return {
        "rank1": _percent(cmc[0]),
        "rank5": _percent(cmc[min(4, len(cmc) - 1)]),
        "rank10": _percent(cmc[min(9, len(cmc) - 1)]),
        "mAP": _percent(rank_result["mAP"]),
        "mINP": _percent(rank_result["mINP"]),
        "num_query": int(rank_result["num_valid"]),
    }


def format_table(results: dict) -> str:
    """Fixed-width table, one row per metric: Rank-1/5/10, mAP, mINP (percent), queries."""
    names = list(results)
    width = max([len("metric"), *(len(name) for name in names)])
    columns = ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", "queries")
    keys = ("rank1", "rank5", "rank10", "mAP", "mINP")
    lines = [f"{'metric':<{width}}" + "".join(f"{column:>9}" for column in columns)]
    lines.append("-" * len(lines[0]))
    for name in names:
        entry = results[name]
        cells = "".join(f"{entry[key]:>9.2f}" for key in keys)
        lines.append(f"{name:<{width}}{cells}{entry['num_query']:>9d}")
    return "\n".join(lines)


def _training_data(train_features, train_pids, train_camids):
    """Normalised training data and its fingerprint, or None when not given."""
    if train_features is None or train_pids is None:
        return None
    features = l2_normalize(train_features)
    return {
        "features": features,
        "pids": train_pids,
        "camids": train_camids,
        "fingerprint": training_fingerprint(features, train_pids, train_camids),
    }


def _fitted_metric(name, training, metric_dir):
    """Load ``metric_dir/<name>.npz`` if it matches the training data, else fit (and save)."""
    model_class = LEARNED_METRICS[name]
    path = None if metric_dir is None else os.path.join(os.fspath(metric_dir), f"{name}.npz")
    if path is not None and os.path.exists(path):
        model = model_class.load(path)
        if training is None or model.fingerprint == training["fingerprint"]:
            return model
    if training is None:
        raise UserError(
            f"Metric {name!r} needs training features and pids to fit on (train_features, "
            f"train_pids), or a fitted model at <metric_dir>/{name}.npz; received neither."
        )
    model = model_class().fit(training["features"], training["pids"], training["camids"])
    if path is not None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        model.save(path)
    return model


def _check_label_lengths(labels, num_query: int, num_gallery: int) -> None:
    names = ("q_pids", "g_pids", "q_camids", "g_camids")
    for name, values, expected, features in zip(
        names, labels, (num_query, num_gallery) * 2, ("qf", "gf") * 2
    ):
        length = len(np.atleast_1d(np.asarray(values)))
        if length != expected:
            raise UserError(
                f"{name} has {length} entries but {features} has {expected} rows; "
                "they must match one to one."
            )


def _metric_names(metrics) -> list:
    if isinstance(metrics, str):
        metrics = (metrics,)
    names = []
    for metric in metrics:
        expanded = METRICS if metric == "all" else (metric,)
        for name in expanded:
            if name not in METRICS:
                raise UserError(
                    f"Unknown metric {name!r}; expected one of {', '.join(METRICS)} or 'all'."
                )
            if name not in names:
                names.append(name)
    if not names:
        raise UserError(f"metrics is empty; expected one or more of {', '.join(METRICS)}.")
    return names


def _rerank_parameters(params):
    try:
        k1, k2, lambda_value = params
    except (TypeError, ValueError) as error:
        raise UserError(
            f"rerank_params must be (k1, k2, lambda_value), e.g. (20, 6, 0.3); received {params!r}."
        ) from error
    return k1, k2, lambda_value


def _percent(fraction) -> float:
    return float(100.0 * fraction)
