"""The fixed choices of the command line that are not run settings, each named once.

Pure Python (no TensorFlow, no NumPy), so ``cli.py`` builds its
``click.Choice`` lists from here and ``--help`` stays instant. The choices of
a run's settings (stages, backbones, occlusion points, attention losses,
masks, presets, strategies, precisions) live beside :class:`RunConfig` in
:mod:`aaa_keras.config`.
"""

from __future__ import annotations

# Distances of `evaluate` / `ablate --metric` (aaa_keras/evaluation/report.py):
# Euclidean on the embeddings, or a metric learned on the training split (the
# ``kind`` of a class of aaa_keras/evaluation/metric_learning.py).
METRICS = ("euclidean", "xqda", "kissme")

# Pictures of `visualize --what` (aaa_keras/visualize.py); "all" means every one.
VISUALIZATIONS = ("ranks", "attention", "occlusion", "curves")

# Formats of `export --format` (aaa_keras/deploy/export.py) and TFLite variants of `--quantize`
# (aaa_keras/deploy/tflite.py).
EXPORT_FORMATS = ("saved_model", "tflite", "onnx", "openvino")
QUANTIZATIONS = ("float32", "float16", "int8")
# Contracts of `export --for`: the project's own (RGB 0-255 NHWC) or BoxMOT's re-ID (aaa_keras/deploy/boxmot.py).
EXPORT_TARGETS = ("aaa-keras", "boxmot")

# Gallery index types of `index --index-type` (aaa_keras/deploy/index_types.py: what each one is).
INDEX_TYPES = ("exact", "ivf-pq", "ivf-sq8", "pca-ivf-sq8", "pca-ivf-sq8-refine", "pca-ivf-sq8-refine-sq6",
               "opq-ivf-pq-refine", "pca-hnsw", "pca-hnsw-sq8")

# Tables of `ablate --table` (aaa_keras/ablate/).
ABLATION_TABLES = ("3", "4", "5", "controls", "occlusion")

ALL = "all"  # the choice that stands for every value of a list above
