"""Any exported model as an embedder: a SavedModel directory, a ``.tflite``, ``.onnx`` or OpenVINO ``.xml`` file.

``load_exported(path)`` detects which, and returns an object with
``kind``, ``path``, ``image_size``, ``embedding_dim`` and ``embed(images)``
(float32 0-255 RGB ``[N, H, W, 3]`` -> L2-normalised ``[N, D]``; other pixel scales are refused:
:mod:`aaa_keras.deploy.contract`). Images are
read with the training / evaluation decoder
(:func:`aaa_keras.data.pipeline.decode_image`), so an exported model sees the
pixels ``evaluate`` fed the Keras model.
"""

from __future__ import annotations

import os
import re

import numpy as np

from aaa_keras.data.names import is_image_file
from aaa_keras.deploy.contract import checked_pixels
from aaa_keras.errors import UserError


class SavedModelEmbedder:
    """The ``serving_default`` signature of an exported SavedModel."""

    kind = "saved_model"

    def __init__(self, path: str):
        import tensorflow as tf

        from aaa_keras.deploy import saved_model

        self.path = path
        try:
            self._loaded = tf.saved_model.load(path)
        except (OSError, ValueError, tf.errors.OpError) as error:
            raise UserError(f"--model {path}: cannot load this SavedModel "
                            f"({str(error).splitlines()[0]})") from None
        signature = self._loaded.signatures.get(saved_model.SIGNATURE_FLOAT)
        inputs = signature.structured_input_signature[1] if signature is not None else {}
        if signature is None or saved_model.INPUT_IMAGES not in inputs:
            raise UserError(f"--model {path}: this SavedModel has no {saved_model.SIGNATURE_FLOAT} "
                            f"signature with an '{saved_model.INPUT_IMAGES}' input; export it with "
                            "`python cli.py export`")
        shape = inputs[saved_model.INPUT_IMAGES].shape
        self._signature = signature
        self.image_size = (int(shape[1]), int(shape[2]))
        self.embedding_dim = int(signature.structured_outputs[saved_model.OUTPUT_EMBEDDING].shape[-1])

    def embed(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        from aaa_keras.deploy.saved_model import embed_images

        return embed_images(self._signature, checked_pixels(images, self.image_size, self.path), batch_size)


MODEL_KINDS = "a SavedModel directory, a .tflite, .onnx or OpenVINO .xml file (or an `export --for boxmot` file)"


def load_exported(path: str, num_threads: int = 2):
    """A SavedModel directory, a ``.tflite``, ``.onnx`` or OpenVINO ``.xml`` file, as an embedder.

    A version directory of ONNX or OpenVINO (``models/onnx/aaa_net/1``) holding
    one such file is accepted too, and so are the files of ``export --for boxmot``
    (recognised by their sidecar: :mod:`aaa_keras.deploy.boxmot`). UserError otherwise.
    """
    from aaa_keras.deploy.saved_model import is_saved_model_dir

    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"--model {path}: no such file or directory; expected {MODEL_KINDS} made by "
                        "`python cli.py export` (e.g. models/aaa_net/1)")
    from aaa_keras.deploy import boxmot

    if boxmot.is_boxmot_artifact(path):  # `export --for boxmot`: normalised NCHW input, its sidecar says so
        return boxmot.BoxmotEmbedder(path, num_threads)
    if os.path.isdir(path):
        if is_saved_model_dir(path):
            return SavedModelEmbedder(path)
        models = [name for name in sorted(os.listdir(path)) if name.lower().endswith((".onnx", ".xml"))]
        if len(models) == 1:
            return load_exported(os.path.join(path, models[0]), num_threads)
        versions = sorted((name for name in os.listdir(path) if name.isdigit()), key=int)
        hint = f"; did you mean {os.path.join(path, versions[-1])}?" if versions else ""
        raise UserError(f"--model {path}: this directory is not a SavedModel (no saved_model.pb){hint}")
    lower = path.lower()
    if lower.endswith(".tflite"):
        from aaa_keras.deploy.tflite import TFLiteEmbedder

        return TFLiteEmbedder(model_path=path, num_threads=num_threads)
    if lower.endswith(".onnx"):
        from aaa_keras.deploy.onnx_openvino import OnnxEmbedder

        return OnnxEmbedder(path, num_threads=num_threads)
    if lower.endswith(".xml"):
        from aaa_keras.deploy.onnx_openvino import OpenVINOEmbedder

        return OpenVINOEmbedder(path, num_threads=num_threads)
    raise UserError(f"--model {path}: expected {MODEL_KINDS}")


def read_image(path: str, image_size) -> np.ndarray:
    """One image file -> float32 ``(H, W, 3)`` 0-255, resized; UserError naming the file."""
    import tensorflow as tf

    from aaa_keras.data.pipeline import decode_image

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such image file")
    if not is_image_file(os.path.basename(path)):
        raise UserError(f"{path}: not an image file name (expected .jpg, .jpeg or .png)")
    try:
        return decode_image(path, tuple(image_size)).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.PermissionDeniedError) as error:
        reason = re.sub(r"\{\{[^}]*\}\}\s*", "", str(error).strip().splitlines()[-1] if str(error) else "")
        reason = reason.split("[Op:")[0].strip() or type(error).__name__
        raise UserError(f"{path}: cannot read this image ({reason})") from None


def read_images(paths, image_size) -> np.ndarray:
    height, width = image_size
    if not paths:
        return np.zeros((0, height, width, 3), np.float32)
    return np.stack([read_image(path, image_size) for path in paths])


def embed_files(model, paths, batch_size: int = 32, log=None) -> np.ndarray:
    """Embeddings of image files, read ``batch_size`` at a time, with a count and ETA (``Progress``)."""
    from aaa_keras.progress import Progress

    chunks = []
    with Progress("embedding", len(paths), min_total=batch_size + 1) as progress:
        for start in range(0, len(paths), batch_size):
            batch = paths[start:start + batch_size]
            chunks.append(model.embed(read_images(batch, model.image_size), batch_size))
            progress.update(len(batch))
    if not chunks:
        return np.zeros((0, model.embedding_dim), np.float32)
    return np.concatenate(chunks).astype(np.float32)
