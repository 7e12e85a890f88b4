"""BoxMOT's re-ID contract: the graphs, the sidecar and a runner for ``export --for boxmot`` files.

BoxMOT (https://github.com/mikel-brostrom/boxmot, ``boxmot/reid/``; read in
the 25.0.0 wheel, ``reid/backends/{base,onnx,openvino,tflite}_backend.py``,
``reid/core/{crops,preprocessing,formats,artifacts,registry}.py``) runs a re-ID
file through one backend class chosen by the file's suffix
(``reid/core/formats.py``): ``.onnx`` -> ``ONNXBackend``, a directory ending
``_openvino_model`` (or a ``.xml`` / ``.bin``) -> ``OpenVinoBackend``,
``.tflite`` -> ``TFLiteBackend``. Every backend gets the same crops
(``reid/core/crops.py``, ``prepare_crop_batch``):

1. the BGR crop resized to the model's ``H x W`` with ``cv2.resize(...,
   INTER_LINEAR)`` (preprocess ``resize``, the default);
2. BGR -> RGB, ``/ 255``, minus the ImageNet mean ``(0.485, 0.456, 0.406)``,
   divided by its std ``(0.229, 0.224, 0.225)``; float32 ``[N, 3, H, W]``;
3. ONNX and OpenVINO get that NCHW batch as is (``ONNXBackend`` refuses a
   rank-4 input that is not NCHW with 3 channels; static ``H`` and ``W`` in the
   ONNX graph override the configured size; OpenVINO compiles with
   ``INFERENCE_PRECISION_HINT`` f32); TFLite gets it quantised with the
   input's scale / zero point when that is an integer tensor
   (``round(x / scale + zp)``). ``TFLiteBackend`` means to transpose to NHWC
   for a model whose input is ``[N, H, W, 3]``, but in 25.0.0 it transposes
   twice (``BaseModelBackend.inference_preprocess`` and again in its
   ``forward``), so an NHWC model gets ``[N, W, 3, H]`` and LiteRT refuses it
   (measured: "Dimension mismatch. Got 32 but expected 64"); BoxMOT's own
   TFLite exports (litert-torch) are NCHW. Ours are NCHW too, in every format;
4. output 0 is the embedding (an integer TFLite output dequantised with its
   scale / zero point), L2-normalised by BoxMOT.

The crop size of OpenVINO and TFLite comes from the sidecar
``<file>.metadata.json`` (``model_kwargs.img_size``; BoxMOT's
``read_artifact_metadata``); for a directory artifact (``*_openvino_model``)
BoxMOT reads ``<dir>/manifest.json``. Without it BoxMOT assumes 256x128.

The exported models therefore take BoxMOT's normalised float input, and undo
the normalisation inside the graph (:func:`denormalize_layer`: an exact 1x1
convolution, ``x * 255 * std + 255 * mean``, after a transpose of NCHW to
NHWC) before the project's own 0-255 RGB embedder
(:mod:`aaa_keras.deploy.contract`). :class:`BoxmotEmbedder` runs such a file in this project
(``embed``, ``index``, the export's parity check) from 0-255 RGB pixels,
doing BoxMOT's steps 2-4 in numpy.
"""

from __future__ import annotations

import json
import os

import numpy as np

from aaa_keras.deploy.contract import checked_pixels, l2_normalized
from aaa_keras.errors import UserError
from aaa_keras.files import write_json_atomically

TARGET = "boxmot"
BOXMOT_VERSION_READ = "25.0.0"  # the version whose reid/ code this contract was read from and tested with
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, BoxMOT's BaseModelBackend.mean_array
IMAGENET_STD = (0.229, 0.224, 0.225)
CONTRACT_KEY = "aaa_keras_contract"  # in the sidecar: marks a file of ours in BoxMOT's contract
OPENVINO_SUFFIX = "_openvino_model"
DIRECTORY_MANIFEST = "manifest.json"  # BoxMOT's sidecar name for a directory artifact
METADATA_SUFFIX = ".metadata.json"


# === BoxMOT's preprocessing, in numpy ===

def normalize(pixels: np.ndarray) -> np.ndarray:
    """0-255 RGB ``[N, H, W, 3]`` -> BoxMOT's normalised float32 NHWC (``/ 255``, minus mean, over std)."""
    pixels = np.asarray(pixels, np.float32)
    return ((pixels / np.float32(255.0) - np.asarray(IMAGENET_MEAN, np.float32))
            / np.asarray(IMAGENET_STD, np.float32)).astype(np.float32)


def read_crops(paths, image_size) -> np.ndarray:
    """Image files as BoxMOT prepares them up to the normalisation: ``cv2.imread`` (BGR),
    ``cv2.resize`` to ``(W, H)`` INTER_LINEAR, BGR -> RGB; float32 0-255 ``[N, H, W, 3]``."""
    import cv2

    height, width = image_size
    crops = np.zeros((len(paths), height, width, 3), np.float32)
    for index, path in enumerate(paths):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise UserError(f"{path}: OpenCV cannot read this image")
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        crops[index] = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    return crops


def normalized_range() -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(min, max)`` of a normalised pixel: black and white."""
    black = normalize(np.zeros((1, 1, 1, 3), np.float32)).reshape(3)
    white = normalize(np.full((1, 1, 1, 3), 255.0, np.float32)).reshape(3)
    return black, white


# === The graphs ===

def denormalize_layer(name: str = "boxmot_denormalize"):
    """A built 1x1 convolution (NHWC) mapping BoxMOT's normalised input back to 0-255 RGB, exactly."""
    import keras

    layer = keras.layers.Conv2D(3, 1, name=name)
    layer.build((None, None, None, 3))
    std, mean = np.asarray(IMAGENET_STD, np.float32), np.asarray(IMAGENET_MEAN, np.float32)
    layer.set_weights([np.diag(255.0 * std).reshape(1, 1, 3, 3).astype(np.float32), 255.0 * mean])
    return layer


def nchw_model(embedder, image_size):
    """BoxMOT's graph (every format): normalised float32 ``[N, 3, H, W]`` -> ``embedder``'s output."""
    import keras

    height, width = image_size
    images = keras.Input((3, height, width), name="images")
    nhwc = keras.layers.Permute((2, 3, 1), name="nchw_to_nhwc")(images)
    model = keras.Model(images, embedder(denormalize_layer()(nhwc)), name="boxmot_embedder_nchw")
    model(np.zeros((1, 3, height, width), np.float32))  # Keras' ONNX export refuses a model never called
    return model


# === File names and the sidecar ===

def onnx_file_name(model_name: str, version: int) -> str:
    return f"{model_name}_v{version}.onnx"


def openvino_dir_name(model_name: str, version: int) -> str:
    """BoxMOT recognises the directory by its ``_openvino_model`` ending; the ``.xml`` is inside."""
    return f"{model_name}_v{version}{OPENVINO_SUFFIX}"


def tflite_file_name(model_name: str, version: int, quantization: str) -> str:
    return f"{model_name}_v{version}_{quantization}.tflite"


def metadata_path(artifact: str) -> str:
    """BoxMOT's ``artifact_metadata_path``: ``<file>.metadata.json``, or ``<dir>/manifest.json``."""
    if os.path.isdir(artifact) or artifact.rstrip("/").endswith(OPENVINO_SUFFIX):
        return os.path.join(artifact, DIRECTORY_MANIFEST)
    return artifact + METADATA_SUFFIX


def sidecar(model_name: str, image_size, embedding_dim: int, kind: str, precision: str, layout: str,
            extra: dict | None = None) -> dict:
    """The metadata BoxMOT reads (``model_name``, ``preprocess``, ``model_kwargs.img_size``) and ours."""
    height, width = (int(v) for v in image_size)
    return {
        "schema_version": 1, "model_name": model_name, "preprocess": "resize", "format": kind,
        "model_kwargs_schema_version": 1, "model_kwargs": {"img_size": [height, width]},
        "img_size": [height, width], "embedding_dim": int(embedding_dim), "precision": precision,
        "dynamic_batch": True,
        CONTRACT_KEY: {"target": TARGET, "boxmot_version_read": BOXMOT_VERSION_READ, "layout": layout,
                       "color": "RGB", "scale": "1/255", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                       "resize": "cv2.resize INTER_LINEAR to (W, H)", "output": "embedding (output 0)"},
        **(extra or {}),
    }


def write_sidecars(artifact: str, metadata: dict) -> list[str]:
    """Write the sidecar of ``artifact`` (atomically); an OpenVINO directory gets its ``manifest.json`` and
    the ``.xml``'s own ``<xml>.metadata.json`` (BoxMOT reads the one of the path it is given)."""
    paths = [metadata_path(artifact)]
    if artifact.rstrip("/").endswith(OPENVINO_SUFFIX):
        paths.append(_openvino_xml(artifact) + METADATA_SUFFIX)
    for path in paths:
        write_json_atomically(path, metadata, sort_keys=True)
    return paths


def read_sidecar(path: str) -> dict | None:
    """Our sidecar of ``path`` (a BoxMOT-contract file or directory), or None when it has none."""
    candidates = [metadata_path(path)]
    if path.lower().endswith(".xml"):
        candidates.append(os.path.join(os.path.dirname(path), DIRECTORY_MANIFEST))
    for candidate in candidates:
        try:
            with open(candidate) as f:
                value = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(value, dict) and isinstance(value.get(CONTRACT_KEY), dict):
            return value
    return None


def is_boxmot_artifact(path: str) -> bool:
    return read_sidecar(os.fspath(path)) is not None


def _openvino_xml(directory: str) -> str:
    names = sorted(n for n in os.listdir(directory) if n.endswith(".xml")) if os.path.isdir(directory) else []
    if len(names) != 1:
        raise UserError(f"--model {directory}: expected one .xml in this OpenVINO directory, found {len(names)}")
    return os.path.join(directory, names[0])


# === Running a BoxMOT-contract file here ===

class BoxmotEmbedder:
    """An ``export --for boxmot`` file (``.onnx``, ``*_openvino_model`` / ``.xml``, ``.tflite``) as an embedder
    with the project's runner interface: 0-255 RGB ``[N, H, W, 3]`` in (as :mod:`aaa_keras.deploy.runtime`),
    BoxMOT's normalisation, layout and int8 (de)quantisation done here, L2-normalised ``[N, D]`` out."""

    def __init__(self, path: str, num_threads: int = 2):
        self.path = os.fspath(path)
        self.metadata = read_sidecar(self.path)
        if self.metadata is None:
            raise UserError(f"--model {path}: no {METADATA_SUFFIX} sidecar of `export --for boxmot` beside it")
        lower = self.path.rstrip("/").lower()
        if lower.endswith(".onnx"):
            self._load_onnx(num_threads)
        elif lower.endswith((".xml", OPENVINO_SUFFIX)):
            self._load_openvino(num_threads)
        elif lower.endswith(".tflite"):
            self._load_tflite(num_threads)
        else:
            raise UserError(f"--model {path}: not a BoxMOT re-ID file (.onnx, *{OPENVINO_SUFFIX}, .xml, .tflite)")
        self.kind = f"boxmot_{self.format}"

    def _load_onnx(self, num_threads):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = num_threads, 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's error types derive from Exception directly
            raise UserError(f"--model {self.path}: ONNX Runtime cannot load it ({_one_line(error)})") from None
        shape = self._session.get_inputs()[0].shape
        if len(shape) != 4 or shape[1] != 3:
            raise UserError(f"--model {self.path}: expected an NCHW [N, 3, H, W] input, got {shape}")
        self.format, self.layout = "onnx", "NCHW"
        self.image_size = (int(shape[2]), int(shape[3]))
        self.embedding_dim = int(self._session.get_outputs()[0].shape[-1])

    def _load_openvino(self, num_threads):
        import openvino as ov

        xml = _openvino_xml(self.path) if not self.path.lower().endswith(".xml") else self.path
        core = ov.Core()
        try:
            self._compiled = core.compile_model(core.read_model(xml), "CPU", {
                "INFERENCE_NUM_THREADS": int(num_threads), "INFERENCE_PRECISION_HINT": "f32"})
        except RuntimeError as error:
            raise UserError(f"--model {self.path}: OpenVINO cannot load it ({_one_line(error)})") from None
        shape = self._compiled.inputs[0].get_partial_shape()
        if shape.rank.get_length() != 4 or shape[1].get_length() != 3:
            raise UserError(f"--model {self.path}: expected an NCHW [N, 3, H, W] input, got {shape}")
        self.format, self.layout = "openvino", "NCHW"
        self.image_size = (shape[2].get_length(), shape[3].get_length())
        self.embedding_dim = self._compiled.outputs[0].get_partial_shape()[-1].get_length()
        self._request = self._compiled.create_infer_request()

    def _load_tflite(self, num_threads):
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._interpreter = Interpreter(model_path=self.path, num_threads=num_threads)
        except (ValueError, RuntimeError) as error:
            raise UserError(f"--model {self.path}: LiteRT cannot load it ({_one_line(error)})") from None
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        shape = [int(v) for v in self._input["shape"]]
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise UserError(f"--model {self.path}: expected an [N, 3, H, W] or [N, H, W, 3] input, got {shape}")
        nhwc = shape[3] == 3 and shape[1] != 3  # BoxMOT's rule (TFLiteBackend.load_model)
        self.format, self.layout = "tflite", "NHWC" if nhwc else "NCHW"
        self.image_size = (shape[1], shape[2]) if nhwc else (shape[2], shape[3])
        self.embedding_dim = int(self._output["shape"][-1])
        self._batch = None

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Raw output 0 (float, dequantised) of a normalised NHWC batch (transposed to the file's layout)."""
        if self.layout == "NCHW":
            batch = np.ascontiguousarray(np.transpose(batch, (0, 3, 1, 2)))
        if self.format == "onnx":
            return self._session.run(None, {self._session.get_inputs()[0].name: batch})[0]
        if self.format == "openvino":
            self._request.infer({0: batch})
            return np.array(self._request.get_output_tensor(0).data, np.float32)
        if self._batch != len(batch):
            self._interpreter.resize_tensor_input(self._input["index"], list(batch.shape))
            self._interpreter.allocate_tensors()
            self._batch = len(batch)
        self._interpreter.set_tensor(self._input["index"], _quantized(batch, self._input))
        self._interpreter.invoke()
        return _dequantized(self._interpreter.get_tensor(self._output["index"]), self._output)

    def embed(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        images = checked_pixels(images, self.image_size, self.path)
        results = [l2_normalized(self.forward(normalize(images[start:start + batch_size])))
                   for start in range(0, len(images), batch_size)]
        return np.concatenate(results) if results else np.zeros((0, self.embedding_dim), np.float32)


def _quantized(values: np.ndarray, detail: dict) -> np.ndarray:
    """BoxMOT's ``TFLiteBackend._quantize_input``."""
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return values.astype(dtype, copy=False)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(values / float(scale) + int(zero_point)), info.min, info.max).astype(dtype)


def _dequantized(values: np.ndarray, detail: dict) -> np.ndarray:
    """BoxMOT's ``TFLiteBackend._dequantize_output``."""
    if not np.issubdtype(values.dtype, np.integer):
        return values.astype(np.float32, copy=False)
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - int(zero_point)) * float(scale)


def _one_line(error, limit: int = 300) -> str:
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return (text[:limit] + "...") if len(text) > limit else text or type(error).__name__
