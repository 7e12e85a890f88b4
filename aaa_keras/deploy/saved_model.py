"""The SavedModel TF Serving loads: three signatures around the Keras embedder.

Signatures (``saved_model_cli show --dir DIR --all`` lists them):

- ``serving_default``: ``images`` float32 ``[N, H, W, 3]``, RGB 0-255, already
  resized to the model's input size -> ``embedding`` float32 ``[N, D]``,
  L2-normalised (the ImageNet preprocessing is inside the graph). Through
  TF Serving's REST API, JSON numbers (integers too) feed it directly.
- ``serving_uint8``: the same with ``images`` uint8 (a gRPC client sending
  camera pixels as bytes: 4x less on the wire than float32). A signature input
  has one dtype, hence a second signature rather than a cast in the first.
- ``serve_bytes``: ``image_bytes`` string ``[N]``, each an encoded JPEG or
  PNG of any size -> decoded (3 channels), bilinearly resized to ``H x W`` and
  clipped to 0-255 inside the graph exactly like the training/evaluation
  pipeline (``aaa_keras.data.pipeline.decode_image``), then embedded.

Malformed bytes fail the request with ``InvalidArgumentError`` naming the
image (its index in the batch) and the problem: empty, neither JPEG nor PNG,
a truncated JPEG (no end-of-image marker) or PNG (no IEND chunk), larger than
:data:`MAX_IMAGE_SIDE`. One bad image fails the whole batch (a TF graph cannot
return a partial result); send one image per request when you need per-image
failures. JPEGs are decoded strictly: ``decode_jpeg(try_recover_truncated=True)``
loops forever (one CPU core at 100 %, the request never returns) on some
truncated inputs, e.g. ``b"\\xff\\xd8\\xff"`` or a file cut right after an
``0xFF`` byte (measured with TF 2.21), so a truncated JPEG is refused instead.

The module is a plain ``tf.Module`` (each variable stored once; a
``keras.export.ExportArchive`` stored them twice here), and it loads with
``tf.saved_model.load`` in a process that never imports ``aaa_keras``.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from aaa_keras.errors import UserError

SIGNATURE_FLOAT = "serving_default"
SIGNATURE_UINT8 = "serving_uint8"
SIGNATURE_BYTES = "serve_bytes"
SIGNATURES = (SIGNATURE_FLOAT, SIGNATURE_UINT8, SIGNATURE_BYTES)
INPUT_IMAGES = "images"
INPUT_BYTES = "image_bytes"
OUTPUT_EMBEDDING = "embedding"
MAX_IMAGE_SIDE = 4096  # pixels; a larger "crop" is refused before it is decoded

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TAIL_BYTES = 1024  # where the end-of-image marker (JPEG) / IEND chunk (PNG) is looked for


class EmbedderServing(tf.Module):
    """``tf.Module`` holding the embedder and its three serving functions."""

    def __init__(self, embedder, image_size, max_image_side: int = MAX_IMAGE_SIDE):
        super().__init__(name="aaa_net_embedder")
        self.embedder = embedder
        self.image_height, self.image_width = (int(v) for v in image_size)
        self.max_image_side = int(max_image_side)
        shape = [None, self.image_height, self.image_width, 3]
        self.serving_default = tf.function(
            self._embed_float, input_signature=[tf.TensorSpec(shape, tf.float32, name=INPUT_IMAGES)])
        self.serving_uint8 = tf.function(
            self._embed_uint8, input_signature=[tf.TensorSpec(shape, tf.uint8, name=INPUT_IMAGES)])
        self.serve_bytes = tf.function(
            self._embed_bytes, input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_BYTES)])

    def signatures(self) -> dict:
        return {
            SIGNATURE_FLOAT: self.serving_default.get_concrete_function(),
            SIGNATURE_UINT8: self.serving_uint8.get_concrete_function(),
            SIGNATURE_BYTES: self.serve_bytes.get_concrete_function(),
        }

    # === Signatures ===

    def _embed(self, images):
        """The embedder, with an empty batch answered by ``[0, D]`` (oneDNN's batch norm fails on it)."""
        dim = int(self.embedder.output.shape[-1])
        return {OUTPUT_EMBEDDING: tf.cond(
            tf.shape(images)[0] > 0,
            lambda: tf.cast(self.embedder(images, training=False), tf.float32),
            lambda: tf.zeros([0, dim], tf.float32))}

    def _embed_float(self, images):
        return self._embed(images)

    def _embed_uint8(self, images):
        return self._embed(tf.cast(images, tf.float32))

    def _embed_bytes(self, image_bytes):
        count = tf.shape(image_bytes)[0]
        images = tf.map_fn(
            self._decode_one, (image_bytes, tf.range(count)),
            fn_output_signature=tf.TensorSpec([self.image_height, self.image_width, 3], tf.float32))
        return self._embed(images)

    # === Decoding one image, with checks that name the problem ===

    def _decode_one(self, item):
        data, index = item
        length = tf.strings.length(data)
        is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), JPEG_MAGIC)
        is_png = tf.equal(tf.strings.substr(data, 0, 8), PNG_MAGIC)
        tail = tf.io.decode_raw(tf.strings.substr(data, tf.maximum(length - TAIL_BYTES, 0), TAIL_BYTES),
                                tf.uint8)
        has_eoi = _contains(tail, b"\xff\xd9")
        has_iend = _contains(tail, b"IEND")
        problem = tf.case([
            (tf.equal(length, 0), lambda: tf.constant("is empty (0 bytes); expected JPEG or PNG bytes")),
            (tf.logical_not(tf.logical_or(is_jpeg, is_png)),
             lambda: tf.constant("is neither JPEG nor PNG (unknown leading bytes)")),
            (tf.logical_and(is_jpeg, tf.logical_not(has_eoi)),
             lambda: tf.constant("is a truncated JPEG (no end-of-image marker FF D9 at its end)")),
            (tf.logical_and(is_png, tf.logical_not(has_iend)),
             lambda: tf.constant("is a truncated PNG (no IEND chunk at its end)")),
        ], default=lambda: tf.constant(""))
        valid = tf.debugging.Assert(tf.equal(problem, ""), ["serve_bytes: image", index, "of the batch", problem])
        with tf.control_dependencies([valid]):
            height, width = self._encoded_size(data, is_jpeg)
        small_enough = tf.debugging.Assert(
            tf.logical_and(tf.maximum(height, width) <= self.max_image_side, tf.minimum(height, width) > 0),
            ["serve_bytes: image", index, "of the batch is", height, "x", width,
             "pixels; accepted: 1 to", self.max_image_side, "pixels per side"])
        with tf.control_dependencies([small_enough]):
            decoded = tf.cond(is_jpeg, lambda: tf.io.decode_jpeg(data, channels=3),
                              lambda: tf.io.decode_png(data, channels=3))
        resized = tf.image.resize(tf.cast(decoded, tf.float32), (self.image_height, self.image_width),
                                  method="bilinear")
        return tf.clip_by_value(resized, 0.0, 255.0)

    @staticmethod
    def _encoded_size(data, is_jpeg):
        """``(height, width)`` from the header, before decoding anything."""

        def png_size():
            header = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.uint8), tf.int64)
            header = tf.concat([header, tf.zeros([8], tf.int64)], 0)[:8]  # a short header reads as 0 x 0
            width = header[0] * 2 ** 24 + header[1] * 2 ** 16 + header[2] * 2 ** 8 + header[3]
            height = header[4] * 2 ** 24 + header[5] * 2 ** 16 + header[6] * 2 ** 8 + header[7]
            return tf.stack([height, width])

        size = tf.cond(is_jpeg, lambda: tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64), png_size)
        return size[0], size[1]


def _contains(values, pattern: bytes):
    """Whether the uint8 vector ``values`` contains the byte string ``pattern``."""
    size = len(pattern)
    count = tf.maximum(tf.shape(values)[0] - size + 1, 0)
    found = tf.ones([count], tf.bool)
    for offset, byte in enumerate(pattern):
        found = tf.logical_and(found, tf.equal(values[offset:offset + count], byte))
    return tf.reduce_any(found)


def save(embedder, image_size, path: str) -> None:
    """Write the SavedModel of ``embedder`` to ``path`` (a new directory)."""
    module = EmbedderServing(embedder, image_size)
    tf.saved_model.save(module, path, signatures=module.signatures())


def load_signatures(path: str) -> dict:
    """``{name: concrete function}`` of a SavedModel directory (plain ``tf.saved_model.load``)."""
    loaded = tf.saved_model.load(path)
    return {name: loaded.signatures[name] for name in loaded.signatures}, loaded


def embed_images(signature, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Run ``serving_default`` / ``serving_uint8`` in batches; ``(N, D)`` float32."""
    spec = signature.structured_input_signature[1][INPUT_IMAGES]
    results = [signature(**{INPUT_IMAGES: tf.constant(images[start:start + batch_size], spec.dtype)})
               [OUTPUT_EMBEDDING].numpy() for start in range(0, len(images), batch_size)]
    dim = signature.structured_outputs[OUTPUT_EMBEDDING].shape[-1]
    return np.concatenate(results) if results else np.zeros((0, dim), np.float32)


def embed_bytes(signature, encoded: list[bytes], batch_size: int = 32) -> np.ndarray:
    """Run ``serve_bytes`` in batches; ``(N, D)`` float32."""
    results = [signature(**{INPUT_BYTES: tf.constant(encoded[start:start + batch_size], tf.string)})
               [OUTPUT_EMBEDDING].numpy() for start in range(0, len(encoded), batch_size)]
    dim = signature.structured_outputs[OUTPUT_EMBEDDING].shape[-1]
    return np.concatenate(results) if results else np.zeros((0, dim), np.float32)


def embed_files(signature, paths, model_path: str) -> np.ndarray:
    """``serve_bytes`` on the encoded bytes of image files; UserError naming ``model_path`` when it refuses one."""
    encoded = []
    for file_path in paths:
        with open(file_path, "rb") as f:
            encoded.append(f.read())
    try:
        return embed_bytes(signature, encoded)
    except tf.errors.InvalidArgumentError as error:
        raise UserError(f"{model_path}: serve_bytes refused the test images "
                        f"({str(error).splitlines()[0]})") from None


def is_saved_model_dir(path: str) -> bool:
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, "saved_model.pb"))
                                    or os.path.isfile(os.path.join(path, "saved_model.pbtxt")))
