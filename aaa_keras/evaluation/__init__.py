"""Evaluation of retrieval features: ranking metrics, learned metrics, re-ranking.

Pure numpy / scipy so it imports fast and runs without TensorFlow.
Contract (SPEC section 6): ``evaluate_rank(distmat, q_pids, g_pids, q_camids,
g_camids, max_rank=50)`` returns ``cmc``, ``mAP``, ``mINP`` (fractions) and
``num_valid``.
"""

from aaa_keras.evaluation.distance import euclidean_distance, l2_normalize
from aaa_keras.evaluation.metric_learning import KISSME, XQDA
from aaa_keras.evaluation.rank import evaluate_rank
from aaa_keras.evaluation.report import evaluate_features, format_table
from aaa_keras.evaluation.rerank import re_ranking, re_ranking_reference

__all__ = [
    "KISSME",
    "XQDA",
    "euclidean_distance",
    "evaluate_features",
    "evaluate_rank",
    "format_table",
    "l2_normalize",
    "re_ranking",
    "re_ranking_reference",
]
