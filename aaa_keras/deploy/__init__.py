"""Deployment of a trained embedder: SavedModel for TF Serving, TFLite / LiteRT for cameras,
parity checks, and query-by-image search with an exported model.

Entry points (``python cli.py export | index | search``):

- :func:`export_run`: SavedModel + TFLite files, verified against Keras,
  written atomically, with ``parity.json`` (``aaa_keras.deploy.export``);
- :func:`build_index`, :func:`search` (with ``picture=``), :func:`format_search`:
  embed a folder of crops with any exported model,
  then rank it for query images (``aaa_keras.deploy.search``).

Modules: ``saved_model`` (the serving signatures), ``tflite`` (conversion,
checks, LiteRT runner), ``onnx_openvino`` (ONNX and OpenVINO conversion and
runners), ``parity`` (the held set, cosines, mAP, thresholds), ``install``
(the versioned atomic install: partial directories, commit, reject),
``runtime`` (any exported model as an embedder), ``gallery`` (the FAISS +
SQLite index), ``export``, ``search``. ``export_run`` is imported on first use (it imports TensorFlow);
``import aaa_keras.deploy.gallery`` or ``.search`` does not import TensorFlow
(the models are loaded inside the functions).
"""

from aaa_keras.deploy.search import build_index, format_search, search

__all__ = ["build_index", "export_run", "format_search", "search"]


def __getattr__(name):
    if name == "export_run":
        from aaa_keras.deploy.export import export_run

        return export_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
