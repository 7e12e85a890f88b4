"""ONNX and OpenVINO IR models of the embedder: conversion, and runners (ONNX Runtime, OpenVINO).

Both are written from the same Keras embedder as the SavedModel and the
TFLite files, with ``model.export(format="onnx" | "openvino")`` (Keras 3.15;
ONNX through tf2onnx, OpenVINO through its TensorFlow frontend), and have the
same contract: ``images`` float32 ``[N, H, W, 3]``, RGB 0-255, already resized
-> ``embedding`` float32 ``[N, D]``, L2-normalised. The ImageNet
preprocessing is inside the graph. A camera's uint8 pixels are fed as
``pixels.astype(np.float32)`` (an ONNX / OpenVINO input has one dtype).

After the Keras export the files are tidied so that a deployer sees the
SavedModel's names: the ONNX input is renamed ``images``, its output
``embedding`` and the batch dimension ``batch``; the OpenVINO model keeps only
the embedding output (the TensorFlow frontend also emits the identity
classifier's logits, which the embedder computes but does not return) and
gets the same tensor names. Neither conversion needed a workaround here
(tiny_resnet, ResNet-50, MobileNetV3-Large, EfficientNet-B0; TF 2.21,
tf2onnx 1.17, OpenVINO 2026.4) once EfficientNet's ``keras.layers.Normalization``
is built as ``model.backbone.VariableNormalization``: the stock layer's
mean / variance are constants captured by the traced function, which tf2onnx
turned into two extra graph inputs (3 inputs, refused below).

OpenVINO's CPU plugin chooses its own inference precision: bfloat16 on CPUs
with AMX / AVX512-BF16 (like the build machine), float32 elsewhere; ``parity.json``
records which precision parity ran at (``inference_precision``). bfloat16 keeps about
three significant digits: on networks whose BatchNorm statistics are settled
(random weights, moving statistics set from a batch of crops; 128x64) it gave
a per-image cosine to Keras of 0.972 (ResNet-50), 0.994 (EfficientNet-B0) and
0.996 (MobileNetV3-Large), below the 0.999 threshold, where f32 gives 1.0000
(freshly initialised ones pass; an EfficientNet-B0 run trained 2 steps per
stage at 64x32 missed: 0.995), and trained networks missed too (0.97-0.996).
So :class:`OpenVINOEmbedder` compiles with ``INFERENCE_PRECISION_HINT`` f32 by
default (the accuracy the parity gate asks for; the same on every CPU), and
parity is measured that way; ``precision=None`` takes the plugin's own choice.
A deployer on a bf16 CPU who compiles the IR without the hint runs bf16 and
should measure its retrieval accuracy first (docs/deployment.md).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np

from aaa_keras.deploy.contract import checked_pixels
from aaa_keras.errors import UserError
from aaa_keras.files import atomic_path, partial_path

INPUT_NAME = "images"
OUTPUT_NAME = "embedding"
BATCH_DIM = "batch"


def onnx_file_name(model_name: str, version: int) -> str:
    return f"{model_name}_v{version}.onnx"


def openvino_file_name(model_name: str, version: int) -> str:
    """The ``.xml`` file; the weights are the ``.bin`` beside it."""
    return f"{model_name}_v{version}.xml"


@contextlib.contextmanager
def _quiet():
    """tf2onnx / the Keras exporters print and warn (np.object FutureWarning); keep the CLI's output clean."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# === ONNX ===

def save_onnx(embedder, path: str, opset: int | None = None) -> dict:
    """Write the ONNX model of ``embedder`` to ``path`` (atomically); returns ``{"opset", "ops"}``."""
    import onnx

    with atomic_path(path) as tmp:
        with _quiet():
            embedder.export(tmp, format="onnx", verbose=False, opset_version=opset)
        model = onnx.load(tmp)
        graph = model.graph
        if len(graph.input) != 1 or len(graph.output) != 1:
            raise UserError(f"{path}: tf2onnx wrote {len(graph.input)} inputs and {len(graph.output)} outputs; "
                            "expected one image input and one embedding output")
        renames = {graph.input[0].name: INPUT_NAME, graph.output[0].name: OUTPUT_NAME}
        for node in graph.node:
            node.input[:] = [renames.get(name, name) for name in node.input]
            node.output[:] = [renames.get(name, name) for name in node.output]
        for value in (graph.input[0], graph.output[0]):
            value.name = renames[value.name]
            value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
        onnx.checker.check_model(model)
        onnx.save(model, tmp)
    opset_version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset_version, "ops": sorted({node.op_type for node in graph.node})}


class OnnxEmbedder:
    """An ``.onnx`` embedder run with ONNX Runtime (CPU): float32 0-255 images in, embeddings out."""

    kind = "onnx"

    def __init__(self, path: str, num_threads: int = 2):
        import onnxruntime as ort

        self.path = path
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        load_errors = (OSError, RuntimeError, ValueError, ort_errors.InvalidProtobuf, ort_errors.Fail,
                       ort_errors.InvalidArgument, ort_errors.NoSuchFile, ort_errors.InvalidGraph,
                       ort_errors.NoModel)
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except load_errors as error:  # onnxruntime's own types derive from Exception directly
            raise UserError(f"--model {path}: not an ONNX model ONNX Runtime can load "
                            f"({_one_line(error)})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[3] != 3:
            raise UserError(f"--model {path}: expected one [N, H, W, 3] image input and one embedding output, "
                            f"got inputs {[i.shape for i in inputs]} and outputs {[o.shape for o in outputs]}")
        self._input, self._output = inputs[0].name, outputs[0].name
        self.image_size = (int(inputs[0].shape[1]), int(inputs[0].shape[2]))
        self.embedding_dim = int(outputs[0].shape[-1])

    def embed(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        images = checked_pixels(images, self.image_size, self.path)
        results = [self.session.run([self._output], {self._input: images[start:start + batch_size]})[0]
                   for start in range(0, len(images), batch_size)]
        return np.concatenate(results).astype(np.float32) if results else np.zeros((0, self.embedding_dim),
                                                                                    np.float32)


# === OpenVINO ===

def save_openvino(embedder, path: str) -> dict:
    """Write the OpenVINO IR (``path`` ``.xml`` + ``.bin``) of ``embedder``; returns ``{"ops"}``.

    Both files are written atomically, the ``.bin`` first (OpenVINO finds the
    weights by the ``.xml``'s name, so a reader never sees an IR without them).
    """
    import openvino as ov

    raw = partial_path(path[:-len(".xml")] + "_keras.xml")  # Keras's own export, a scratch file
    leftovers = [raw, raw[:-len(".xml")] + ".bin"]
    try:
        with _quiet():
            embedder.export(raw, format="openvino", verbose=False)
        model = ov.Core().read_model(raw)
        dim = int(embedder.output.shape[-1])
        # The TensorFlow frontend also returns the classifier logits; the function's output is the Identity.
        outputs = [o for o in model.outputs if any(n.startswith("Identity") for n in o.get_names())
                   and o.get_partial_shape()[-1].get_length() == dim]
        if len(outputs) != 1 or len(model.inputs) != 1:
            raise UserError(f"{path}: the OpenVINO conversion gave inputs {model.inputs} and outputs "
                            f"{model.outputs}; expected one image input and one [N, {dim}] embedding output")
        pruned = ov.Model(outputs, model.get_parameters(), "aaa_net_embedder")
        pruned.inputs[0].get_tensor().set_names({INPUT_NAME})
        pruned.get_parameters()[0].set_friendly_name(INPUT_NAME)
        pruned.outputs[0].get_tensor().set_names({OUTPUT_NAME})
        with atomic_path(path) as xml_tmp, atomic_path(path[:-len(".xml")] + ".bin") as bin_tmp:
            leftovers.append(xml_tmp[:-len(".xml")] + ".bin")
            ov.save_model(pruned, xml_tmp, compress_to_fp16=False)
            os.replace(leftovers[-1], bin_tmp)
        ops = sorted({op.get_type_name() for op in pruned.get_ordered_ops()})
    finally:
        for leftover in leftovers:
            if os.path.exists(leftover):
                os.remove(leftover)
    return {"ops": ops}


class OpenVINOEmbedder:
    """An OpenVINO IR embedder (``.xml`` + ``.bin``) on the CPU plugin: float32 0-255 images in.

    ``precision``: the CPU plugin's ``INFERENCE_PRECISION_HINT`` (default f32; None = the
    plugin's choice, bf16 on CPUs with AVX512-BF16 / AMX).
    """

    kind = "openvino"

    def __init__(self, path: str, num_threads: int = 2, precision: str | None = "f32"):
        import openvino as ov

        self.path = path
        if not os.path.isfile(path[:-len(".xml")] + ".bin"):
            raise UserError(f"--model {path}: the weights file {os.path.basename(path)[:-4]}.bin is not beside it")
        core = ov.Core()
        try:
            model = core.read_model(path)
            settings = {"INFERENCE_NUM_THREADS": int(num_threads)}
            if precision:
                settings["INFERENCE_PRECISION_HINT"] = precision
            self.compiled = core.compile_model(model, "CPU", settings)
        except RuntimeError as error:
            raise UserError(f"--model {path}: not an OpenVINO model the runtime can load "
                            f"({_one_line(error)})") from None
        inputs, outputs = self.compiled.inputs, self.compiled.outputs
        shape = inputs[0].get_partial_shape() if len(inputs) == 1 else None
        if shape is None or len(outputs) != 1 or shape.rank.get_length() != 4 or shape[3].get_length() != 3 \
                or not (shape[1].is_static and shape[2].is_static):
            raise UserError(f"--model {path}: expected one [N, H, W, 3] image input and one embedding output, "
                            f"got inputs {inputs} and outputs {outputs}")
        self.image_size = (shape[1].get_length(), shape[2].get_length())
        self.embedding_dim = outputs[0].get_partial_shape()[-1].get_length()
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self._request = self.compiled.create_infer_request()

    def embed(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        images = checked_pixels(images, self.image_size, self.path)
        results = []
        for start in range(0, len(images), batch_size):
            self._request.infer({0: images[start:start + batch_size]})
            results.append(np.array(self._request.get_output_tensor(0).data, np.float32))
        return np.concatenate(results) if results else np.zeros((0, self.embedding_dim), np.float32)


def _one_line(error, limit: int = 300) -> str:
    """A runtime's multi-line exception text as one line (OpenVINO puts the reason after a source location)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return (text[:limit] + "...") if len(text) > limit else text or type(error).__name__
