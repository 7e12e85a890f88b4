"""TFLite / LiteRT models of the embedder: conversion, checks, and a runner.

Three quantisations (SPEC section 4), all from the same Keras graph:

- ``float32``: plain conversion;
- ``float16``: weights stored as float16 (half the size), computed in float32;
- ``int8``: full-integer post-training quantisation (every op int8, weights
  per-channel) calibrated on representative images from the training split,
  with **uint8 pixel input** (scale 1, zero point 0: a camera feeds its raw
  0-255 RGB pixels) and **int8 un-normalised embedding output**: the graph
  ends before the L2 normalisation (:data:`INT8_OUTPUT_L2_NORMALIZED`), whose
  ``SQUARE`` LiteRT's converter keeps in float between a ``DEQUANTIZE`` and a
  ``QUANTIZE``; the reader dequantises with the output tensor's scale / zero
  point and L2-normalises. :func:`check_tflite` refuses an int8 model with
  any op that reads or writes a float tensor (:func:`float_ops`).

The graph converted is :func:`tflite_graph`, not ``build_embedder``'s: the
ImageNet preprocessing (RGB -> BGR, minus the mean) becomes an exactly
equivalent 1x1 convolution. With ``keras.ops.flip`` the converter emits a
``REVERSE_V2`` op whose int8 output gets other quantisation parameters than
its input while the kernel only copies bytes, so every pixel reaches the
first convolution as ``1.46 * x - 117`` instead of ``x`` (measured with TF
2.21 / LiteRT 2.3; int8 cosine to Keras 0.955 instead of 0.9997 on a tiny
model). :func:`check_tflite` refuses any model that still has such an op.
The camera backbones (mobilenet_v3_large, efficientnet_b0) normalise 0-255
RGB themselves with per-channel multiply / add (keras.applications'
``Rescaling`` / ``Normalization``; no channel flip, no ``REVERSE_V2``), so
their graph runs ``parts.network`` unchanged. In their int8 models every
backbone op is int8, as in ResNet-50's: MobileNetV3's hard-swish is LiteRT's
int8 ``HARD_SWISH``, its squeeze-excite blocks ``MEAN`` / ``CONV_2D`` /
``MUL``; EfficientNet's swish is ``LOGISTIC`` + ``MUL``.

Every model is run with ``ai_edge_litert.interpreter.Interpreter``
(``tf.lite.Interpreter`` is deprecated).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import keras
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from keras import layers

from aaa_keras.deploy.contract import checked_pixels, l2_normalized
from aaa_keras.errors import UserError
from aaa_keras.model.backbone import IMAGENET_BGR_MEAN, ImageNetPreprocessing, ReidParts

from aaa_keras.vocabulary import QUANTIZATIONS
# Bytes per weight of each quantisation; a model far below it holds no weights.
BYTES_PER_WEIGHT = {"float32": 4, "float16": 2, "int8": 1}
# Ops that mean the weights were not frozen into the model (the 0.2 MB NaN trap).
VARIABLE_OPS = ("READ_VARIABLE", "VAR_HANDLE", "ASSIGN_VARIABLE", "CALL_ONCE")
# The int8 graph ends at the un-normalised embedding: an L2 normalisation in it runs its SQUARE in float
# between a DEQUANTIZE and a QUANTIZE (what LiteRT's int8 converter makes of it), which an int8-only
# accelerator cannot run. Every reader of the file L2-normalises after dequantising.
INT8_OUTPUT_L2_NORMALIZED = False
FLOAT_TYPES = ("float32", "float16", "float64", "bfloat16")


# === The graph that is converted ===

def tflite_graph(parts: ReidParts, normalize: bool = True) -> keras.Model:
    """``build_embedder(parts)`` with the preprocessing as a 1x1 convolution; ``normalize=False`` ends at
    the un-normalised embedding (the int8 graph: :data:`INT8_OUTPUT_L2_NORMALIZED`).

    Same weights (shared layers), same outputs in float32 (the permutation and
    mean subtraction are exact), but no ``REVERSE_V2`` op for the converter to
    mis-quantise. The camera backbones, whose stem is ``Input -> backbone``
    with their own preprocessing inside, run ``parts.network`` unchanged
    (the int8 check still runs).
    """
    images = keras.Input(parts.network.input.shape[1:], name="image")
    stem_layers = [layer for layer in parts.stem.layers if not isinstance(layer, layers.InputLayer)]
    if len(stem_layers) != 2 or not isinstance(stem_layers[0], ImageNetPreprocessing):
        embedding, _ = parts.network(images, training=False)
    else:
        to_bgr = layers.Conv2D(3, 1, name="imagenet_preprocessing_1x1")
        preprocessed = to_bgr(images)
        kernel = np.zeros((1, 1, 3, 3), np.float32)
        for bgr_channel in range(3):
            kernel[0, 0, 2 - bgr_channel, bgr_channel] = 1.0  # output B <- input channel 2 (R G B)
        to_bgr.set_weights([kernel, -np.asarray(IMAGENET_BGR_MEAN, np.float32)])
        embedding, _ = parts.tail(stem_layers[1](preprocessed), training=False)
    output = layers.Activation("linear", dtype="float32", name="to_float32")(embedding)
    if normalize:
        output = layers.UnitNormalization(axis=-1, name="l2_normalize")(output)
    return keras.Model(images, output, name="embedder_tflite")


# === Conversion ===

def with_range_anchor(images: np.ndarray) -> np.ndarray:
    """A copy whose first image has one black and one white pixel.

    Calibration then sees exactly the input range [0, 255], so the int8
    model's uint8 input has scale 1 and zero point 0: raw pixels, no rescale.
    """
    anchored = np.array(images, np.float32, copy=True)
    anchored[0, 0, 0, :] = 0.0
    anchored[0, 0, -1, :] = 255.0
    return anchored


def convert(model: keras.Model, quantization: str, representative: np.ndarray | None = None) -> bytes:
    """The ``.tflite`` flatbuffer of ``model`` for one quantisation."""
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise UserError(f"--quantize: got {quantization!r}; expected one of {QUANTIZATIONS} or all")
    # from_keras_model exports a temporary SavedModel and prints its endpoints: keep stdout clean.
    with contextlib.redirect_stdout(io.StringIO()):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        if representative is None or len(representative) == 0:
            raise UserError("int8 quantisation needs representative images from the training split")
        return convert_integer(converter, with_range_anchor(representative), tf.uint8)
    return _converted(converter)


def convert_integer(converter, calibration: np.ndarray, input_type) -> bytes:
    """Full-integer conversion: ``input_type`` (tf.uint8 raw pixels, or tf.int8 for BoxMOT's normalised
    input) in, the int8 un-normalised embedding out, with its range widened (``widen_embedding_range``);
    ``calibration``'s images (already anchored to the input's full range) are the representative set."""
    import tensorflow as tf

    def representative_dataset():
        for image in calibration:
            yield [image[None]]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = input_type
    converter.inference_output_type = tf.int8
    return widen_embedding_range(_converted(converter), EMBEDDING_HEADROOM)


def _converted(converter) -> bytes:
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": the legacy quantized_input_stats, unused here.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()


EMBEDDING_HEADROOM = 1.5


def widen_embedding_range(content: bytes, factor: float = EMBEDDING_HEADROOM) -> bytes:
    """Give the int8 pooled embedding ``factor`` x its calibrated range (scale x factor, same zero point).

    Min/max calibration clips the global-average-pooled embedding of crops
    unlike the training images: on the demo run (tiny_resnet 128x64, three
    stages), a heavily cropped, blurred junk detection of the synthetic test
    split has a component 1.66x the largest seen on 100 training images, and
    clipping it made its int8 cosine to Keras 0.979 (< 0.98). With 1.5x
    headroom it is 0.9988 and the mean over the test split is unchanged
    (0.99962 -> 0.99972); 2x gave 0.9987, 3x 0.9982 (coarser steps). Kernels derive their
    requantisation multipliers from the tensors' parameters when the model is
    prepared, so changing the parameters of the tensor keeps the model
    consistent. The tensor is the output of the graph's last ``MEAN`` op.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    subgraph = model.subgraphs[0]
    means = [op.outputs[0] for op in subgraph.operators
             if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "MEAN"]
    if not means:
        return content
    quantization = subgraph.tensors[means[-1]].quantization
    if quantization is None or quantization.scale is None or len(quantization.scale) != 1:
        return content
    quantization.scale = [float(quantization.scale[0]) * factor]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


MAX_INT8_ACTIVATION = 1e8  # larger (or non-finite) float activations cannot be quantised to 8 bits


def check_activation_range(float32_content: bytes, images: np.ndarray) -> float:
    """Largest |activation| of the float32 model on ``images``; UserError when int8 cannot hold it.

    Every op output of the float32 TFLite model is inspected. A non-finite or
    huge activation (an unsettled BatchNorm after a few training steps reaches
    1e20 and overflows) makes int8 meaningless, and TF 2.21's MLIR quantiser
    crashes the process (segmentation fault) on such calibration statistics.
    """
    with warnings.catch_warnings():  # "intended for debugging purposes only": that is the purpose here
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_content=float32_content, experimental_preserve_all_tensors=True)
    source = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(source["index"], list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], np.asarray(images, np.float32))
    interpreter.invoke()
    names = {detail["index"]: detail["name"] for detail in interpreter.get_tensor_details()}
    largest, where = 0.0, ""
    for op in interpreter._get_ops_details():
        for index in op["outputs"]:
            values = interpreter.get_tensor(index)
            if values.dtype != np.float32 or not values.size:
                continue
            magnitude = float(np.max(np.abs(values)))
            if not np.isfinite(magnitude) or magnitude > largest:
                largest, where = magnitude, names[index]
            if not np.isfinite(magnitude):
                break
    if not np.isfinite(largest) or largest > MAX_INT8_ACTIVATION:
        raise UserError(
            f"int8: the network's activations reach {largest:.3g} ({where}) on training images; 8-bit "
            "quantisation cannot represent that (and the TFLite quantiser crashes on it). The BatchNorm "
            "statistics of this run have not settled: train longer, or export --quantize float32 / float16")
    return largest


def expected_min_bytes(num_weights: int, quantization: str) -> int:
    """Half of what the weights alone take: a smaller model lost its weights."""
    return int(num_weights * BYTES_PER_WEIGHT[quantization] * 0.5)


def check_tflite(content: bytes, quantization: str, num_weights: int, name: str = "model") -> None:
    """Refuse a converted model that cannot be right (STACK-NOTES' silent traps).

    - smaller than half its weights at that precision, or with variable ops:
      the converter kept resource variables instead of freezing them (a
      ~0.2 MB model that outputs NaN);
    - an int8 ``REVERSE_V2`` whose output quantisation differs from its input
      (the kernel copies bytes, so the values are silently wrong).
    """
    minimum = expected_min_bytes(num_weights, quantization)
    if len(content) < minimum:
        raise UserError(f"{name}: the {quantization} TFLite model is {len(content)} bytes, less than "
                        f"half of its {num_weights} weights at that precision ({minimum} bytes): the "
                        "converter did not freeze the weights; not writing it")
    interpreter = Interpreter(model_content=content)
    ops = interpreter._get_ops_details()
    variable_ops = sorted({op["op_name"] for op in ops if op["op_name"] in VARIABLE_OPS})
    if variable_ops:
        raise UserError(f"{name}: the {quantization} TFLite model contains {', '.join(variable_ops)} "
                        "ops (unfrozen variables, outputs NaN); not writing it")
    if quantization == "int8":
        floating = float_ops(interpreter)
        if floating:
            raise UserError(f"{name}: the int8 model computes in float at {len(floating)} ops ("
                            f"{', '.join(floating[:5])}{', ...' if len(floating) > 5 else ''}); an int8-only "
                            "accelerator cannot run it. Export float16 for this network, or report the op")
        tensors = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
        for op in ops:
            if op["op_name"] != "REVERSE_V2":
                continue
            source, target = tensors[op["inputs"][0]], tensors[op["outputs"][0]]
            if source["quantization"] != target["quantization"]:
                raise UserError(
                    f"{name}: the int8 model has a REVERSE_V2 op ({target['name']}) whose output "
                    f"quantisation {target['quantization']} differs from its input's "
                    f"{source['quantization']}; LiteRT copies the bytes, so the values would be wrong")


def op_types(interpreter) -> list[tuple[str, list[str], list[str]]]:
    """``(op name, input dtypes, output dtypes)`` of every op of a loaded model, in execution order."""
    dtypes = {detail["index"]: np.dtype(detail["dtype"]).name for detail in interpreter.get_tensor_details()}
    return [(op["op_name"], [dtypes[i] for i in op["inputs"] if i >= 0], [dtypes[i] for i in op["outputs"]])
            for op in interpreter._get_ops_details()]


def float_ops(interpreter) -> list[str]:
    """``"OP (dtypes)"`` for every op that reads or writes a float tensor (DEQUANTIZE / QUANTIZE at a float
    boundary included): empty for a model that is integer from its input to its output."""
    return [f"{name} ({', '.join(inputs)} -> {', '.join(outputs)})" for name, inputs, outputs in
            op_types(interpreter) if any(dtype in FLOAT_TYPES for dtype in inputs + outputs)]


# === Running a .tflite model ===

class TFLiteEmbedder:
    """Runs an embedder ``.tflite`` with LiteRT: float32 0-255 images in, embeddings out.

    Handles float and quantised (uint8 / int8) input and output tensors with
    their scale / zero point; the returned embeddings are dequantised and
    L2-normalised again.
    """

    kind = "tflite"

    def __init__(self, model_path: str | None = None, model_content: bytes | None = None,
                 num_threads: int = 2):
        self.path = model_path
        try:
            self.interpreter = Interpreter(model_path=model_path, model_content=model_content,
                                           num_threads=num_threads)
        except (ValueError, RuntimeError) as error:
            raise UserError(f"{model_path or 'model'}: not a TFLite model LiteRT can load "
                            f"({str(error).splitlines()[0]})") from None
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0]["shape"]) != 4:
            raise UserError(f"{model_path or 'model'}: expected one [N, H, W, 3] image input and one "
                            f"embedding output, got {len(inputs)} inputs and {len(outputs)} outputs")
        self._input, self._output = inputs[0], outputs[0]
        _, height, width, channels = (int(v) for v in self._input["shape"])
        if channels != 3:
            raise UserError(f"{model_path or 'model'}: the input has {channels} channels, expected 3")
        self.image_size = (height, width)
        self.embedding_dim = int(self._output["shape"][-1])
        self.input_dtype = np.dtype(self._input["dtype"]).name
        self.output_dtype = np.dtype(self._output["dtype"]).name
        self._batch = None

    def io_details(self) -> dict:
        """Input / output dtypes and ``(scale, zero_point)``, JSON-ready."""
        return {
            "input": {"dtype": self.input_dtype, "shape": [-1, *self.image_size, 3],
                      "quantization": [float(v) for v in self._input["quantization"]]},
            "output": {"dtype": self.output_dtype, "shape": [-1, self.embedding_dim],
                       "quantization": [float(v) for v in self._output["quantization"]]},
        }

    def _quantize_input(self, images: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self._input["dtype"])
        if dtype == np.float32:
            return images.astype(np.float32, copy=False)
        scale, zero_point = self._input["quantization"]
        info = np.iinfo(dtype)
        values = np.round(images / scale + zero_point) if scale else images
        return np.clip(values, info.min, info.max).astype(dtype)

    def _dequantize_output(self, values: np.ndarray) -> np.ndarray:
        """Dequantised with the output's scale / zero point, then L2-normalised (the int8 model's output is
        not normalised: :data:`INT8_OUTPUT_L2_NORMALIZED`)."""
        if values.dtype != np.float32:
            scale, zero_point = self._output["quantization"]
            values = (values.astype(np.float32) - zero_point) * (scale or 1.0)
        return l2_normalized(values)

    def embed(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """``(N, D)`` float32 L2-normalised embeddings of float32 0-255 images ``(N, H, W, 3)``."""
        images = checked_pixels(images, self.image_size, self.path or "model")
        results = []
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            if self._batch != len(batch):
                self.interpreter.resize_tensor_input(self._input["index"], [len(batch), *self.image_size, 3])
                self.interpreter.allocate_tensors()
                self._batch = len(batch)
            self.interpreter.set_tensor(self._input["index"], self._quantize_input(batch))
            self.interpreter.invoke()
            results.append(self._dequantize_output(self.interpreter.get_tensor(self._output["index"])))
        if not results:
            return np.zeros((0, self.embedding_dim), np.float32)
        return np.concatenate(results).astype(np.float32)


def tflite_file_name(model_name: str, version: int, quantization: str) -> str:
    """``<model_name>_v<version>_<quantization>.tflite``: self-describing once copied to a camera."""
    return f"{model_name}_v{version}_{quantization}.tflite"

