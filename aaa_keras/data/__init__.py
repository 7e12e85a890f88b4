"""Datasets: the Market-1501 layout and its file names (``names.py``), the other layouts and your
own data (``layouts*.py``), loading, checking, and the built-in synthetic generator. Importing this
package never imports TensorFlow (the tf.data input pipeline lives in ``aaa_keras.data.pipeline``)."""

from aaa_keras.data.check import CheckReport, SplitStats, check_dataset, format_report
from aaa_keras.data.layouts import load_dataset
from aaa_keras.data.names import (
    DISTRACTOR_PID, IMAGE_EXTENSIONS, JUNK_PID, SPLITS, ImageRecord, ReidDataset,
    dataset_fingerprint, list_split, parse_name, relabel)
from aaa_keras.data.synth import default_synthetic_dir, ensure_synthetic, synthesize_market

__all__ = [
    "CheckReport", "DISTRACTOR_PID", "IMAGE_EXTENSIONS", "ImageRecord", "JUNK_PID",
    "ReidDataset", "SPLITS", "SplitStats", "check_dataset", "dataset_fingerprint",
    "default_synthetic_dir", "ensure_synthetic", "format_report", "list_split", "load_dataset",
    "parse_name", "relabel", "synthesize_market",
]
