"""Deployment of a trained embedder: SavedModel for TF Serving, TFLite / LiteRT for cameras,
parity checks, and query-by-image search with an exported model.

Entry points (``python cli.py export | index | search``):

- :func:`export_run`: SavedModel + TFLite files, verified against Keras,
  written atomically, with ``parity.json`` (``aaa_keras.deploy.export``);
- :func:`build_index`, :func:`search` (with ``picture=``), :func:`format_search`:
  embed a folder of crops with any exported model,
  then rank it for query images (``aaa_keras.deploy.search``).

Modules: ``saved_model`` (the serving signatures), ``tflite`` (conversion,
checks, LiteRT runner), ``parity`` (cosines, mAP, thresholds), ``runtime``
(a SavedModel or .tflite as an embedder), ``export``, ``search``.
Importing this package imports TensorFlow (the CLI imports it inside commands).
"""

from aaa_keras.deploy.export import export_run
from aaa_keras.deploy.search import build_index, format_search, search

__all__ = ["build_index", "export_run", "format_search", "search"]
