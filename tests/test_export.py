"""Deployment: SavedModel, TFLite, ONNX, OpenVINO export, parity, atomicity, malformed bytes, index / search, clients.

One tiny run is trained and exported once per module; the exported models
are then checked in subprocesses that never import aaa_keras, as a deployer
would run them.
"""

import base64
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from aaa_keras.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME_SCRIPT = os.path.join(REPO, "tests", "scripts", "exported_runtime.py")
COSINE_MIN = {"saved_model": 0.999, "saved_model_uint8": 0.999, "tflite_float32": 0.999,
              "tflite_float16": 0.999, "tflite_int8": 0.98}


def _quiet(*_args):
    pass


def _cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def _clean_env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)  # the subprocess must not even be able to import aaa_keras
    return env


# Runs a script as __main__ (argv after -c), then fails if it imported a forbidden package.
_RUN_SCRIPT = """import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})
assert not heavy, heavy
"""


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"_{name}", os.path.join(REPO, "export", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_dir(tiny_data, tmp_path_factory):
    from aaa_keras.config import make_config
    from aaa_keras.training import fit

    path = tmp_path_factory.mktemp("export_run") / "run"
    config = make_config("demo", recipe="paper", data=tiny_data, backbone="tiny_resnet", batch_size=8, epochs=1,
                         steps_per_epoch=2, attention_filters=16, image_height=64, image_width=32)
    fit("baseline", config, str(path), log=_quiet)
    return str(path)


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    from aaa_keras.deploy import export_run

    out = tmp_path_factory.mktemp("models")
    result = export_run(run_dir, str(out), log=_quiet)
    result["out"] = str(out)
    return result


@pytest.fixture(scope="module")
def keras_reference(run_dir, tiny_data):
    """Test-split images (float32 0-255, as the pipeline decodes them) and their Keras embeddings."""
    from aaa_keras.data.layouts import load_dataset
    from aaa_keras.data.pipeline import decode_image
    from aaa_keras.model.backbone import build_embedder
    from aaa_keras.run_dir import load_trained

    trained = load_trained(run_dir)
    config, parts = trained.config, trained.parts
    embedder = build_embedder(parts)
    dataset = load_dataset(tiny_data)
    records = dataset.query + dataset.gallery
    images = np.stack([decode_image(r.path, config.image_size).numpy() for r in records])
    return {"paths": [r.path for r in records], "images": images,
            "embeddings": np.asarray(embedder.predict(images, verbose=0)),
            "rounded": np.asarray(embedder.predict(np.round(images), verbose=0)), "embedder": embedder,
            "image_size": config.image_size}


# === Export layout and parity ===

def test_export_writes_serving_layout_tflite_files_and_passing_parity(exported):
    out = exported["out"]
    assert exported["version"] == 1
    assert exported["saved_model"] == os.path.join(out, "aaa_net", "1")
    assert os.path.isfile(os.path.join(out, "aaa_net", "1", "saved_model.pb"))
    assert sorted(exported["tflite"]) == ["float16", "float32", "int8"]
    sizes = {q: os.path.getsize(p) for q, p in exported["tflite"].items()}
    assert sizes["float16"] < 0.6 * sizes["float32"] and sizes["int8"] < 0.4 * sizes["float32"]
    assert sizes["int8"] > 200_000  # real weights, not the READ_VARIABLE stub
    report = json.loads(open(os.path.join(out, "tflite", "aaa_net", "1", "parity.json")).read())
    assert report == json.loads(open(os.path.join(out, "aaa_net", "1", "assets.extra", "parity.json")).read())
    assert report["passed"] and report["failures"] == []
    for quantization, gated, threshold in (("float32", "cosine_min", 0.999), ("float16", "cosine_min", 0.999),
                                           ("int8", "cosine_p1", 0.98)):  # what parity gates each on
        entry = report["tflite"][quantization]
        assert entry[gated] >= threshold and entry["cosine_min"] <= entry.get("cosine_p1", 1.0), (quantization, entry)
        assert {"cosine_mean", "centred_cosine_min", "centred_cosine_mean", "mAP", "rank1"} <= set(entry)
    assert report["tflite"]["float32"]["mAP"] - report["tflite"]["int8"]["mAP"] <= 1.0
    assert report["tflite"]["int8"]["input"] == {"dtype": "uint8", "shape": [-1, 64, 32, 3],
                                                 "quantization": [1.0, 0.0]}
    assert report["tflite"]["int8"]["output"]["dtype"] == "int8"
    assert report["saved_model"]["serve_bytes_cosine_min"] >= 0.9999
    assert abs(report["tflite"]["float32"]["mAP"] - report["keras"]["mAP"]) < 0.5
    noise = report["keras"]["pixel_noise"]  # the float network's own sensitivity, beside int8's parity
    assert noise["sigma"] == 2.0 and 0.9 < noise["cosine_min"] <= noise["cosine_mean"] <= 1.0
    assert not glob.glob(os.path.join(out, "**", "_partial_*"), recursive=True)


def test_onnx_and_openvino_pass_parity_in_their_own_runtimes_without_tensorflow(exported, keras_reference,
                                                                              tmp_path):
    out = exported["out"]
    assert exported["onnx"] == os.path.join(out, "onnx", "aaa_net", "1", "aaa_net_v1.onnx")
    assert exported["openvino"] == os.path.join(out, "openvino", "aaa_net", "1", "aaa_net_v1.xml")
    assert sorted(os.listdir(os.path.join(out, "openvino", "aaa_net", "1"))) == [
        "aaa_net_v1.bin", "aaa_net_v1.xml", "parity.json"]
    report = json.loads(open(os.path.join(out, "onnx", "aaa_net", "1", "parity.json")).read())
    assert report == exported["report"] and report["passed"]
    for kind in ("onnx", "openvino"):
        assert report[kind]["cosine_min"] >= 0.999 and abs(report[kind]["mAP"] - report["keras"]["mAP"]) < 0.5
        assert report[kind]["input"]["shape"] == [-1, 64, 32, 3] and report[kind]["output"]["shape"] == [-1, 128]
    assert report["onnx"]["bytes"] > 400_000 and report["openvino"]["bytes"] > 400_000  # float32 weights
    assert report["openvino"]["inference_precision"] == "f32"  # the hint, also on a bf16 CPU

    np.save(tmp_path / "images.npy", keras_reference["images"])
    subprocess.run([sys.executable, RUNTIME_SCRIPT, "portable", exported["onnx"], exported["openvino"],
                    str(tmp_path / "images.npy"), str(tmp_path / "out")],
                   check=True, env=_clean_env(), cwd=str(tmp_path), timeout=300)
    for name in ("onnx", "onnx_uint8", "openvino", "openvino_uint8"):
        embeddings = np.load(tmp_path / "out" / f"{name}.npy")
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-3)
        reference = keras_reference["rounded" if name.endswith("uint8") else "embeddings"]
        assert _cosines(embeddings, reference).min() >= 0.999, name


def _corrupt_onnx(path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    weights = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    values = numpy_helper.to_array(weights)
    noise = np.random.default_rng(0).normal(0, 3 * float(values.std()) + 1e-3, values.shape).astype(values.dtype)
    weights.CopyFrom(numpy_helper.from_array(values + noise, weights.name))
    onnx.save(model, path)


def _corrupt_openvino(xml_path):
    import xml.etree.ElementTree as ElementTree

    constants = [layer.find("data").attrib for layer in ElementTree.parse(xml_path).iter("layer")
                 if layer.get("type") == "Const" and layer.find("data").get("element_type") == "f32"]
    largest = max(constants, key=lambda data: int(data["size"]))
    bin_path = xml_path[:-len(".xml")] + ".bin"
    content = bytearray(open(bin_path, "rb").read())
    start, size = int(largest["offset"]), int(largest["size"])
    values = np.frombuffer(bytes(content[start:start + size]), np.float32)
    noise = np.random.default_rng(0).normal(0, 3 * float(values.std()) + 1e-3, values.shape)
    content[start:start + size] = (values + noise).astype(np.float32).tobytes()
    open(bin_path, "wb").write(bytes(content))


@pytest.mark.parametrize("kind", ["onnx", "openvino"])
def test_onnx_or_openvino_file_that_differs_from_keras_is_rejected_and_nothing_installed(
        kind, run_dir, tmp_path, monkeypatch):
    """The gate measures the written file in its runtime: corrupt the weights after the conversion."""
    from aaa_keras.deploy import export_run
    from aaa_keras.deploy import onnx_openvino

    save_name = "save_onnx" if kind == "onnx" else "save_openvino"
    original = getattr(onnx_openvino, save_name)

    def save_then_corrupt(embedder, path, *args, **kwargs):
        info = original(embedder, path, *args, **kwargs)
        (_corrupt_onnx if kind == "onnx" else _corrupt_openvino)(path)
        return info

    monkeypatch.setattr(onnx_openvino, save_name, save_then_corrupt)
    with pytest.raises(UserError, match=rf"^parity missed: {kind} per-image cosine to Keras min -?\d\.\d+ < 0\.999"):
        export_run(run_dir, str(tmp_path), formats=("saved_model", kind), log=_quiet)
    installed = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files
                 if "_rejected" not in os.path.relpath(d, tmp_path).split(os.sep)]
    assert installed == []  # neither the failing file nor the SavedModel that passed
    assert not glob.glob(str(tmp_path / "**" / "1"), recursive=True)
    rejected = glob.glob(str(tmp_path / "_rejected" / "aaa_net_v1_*" / kind / "parity.json"))
    assert len(rejected) == 1
    report = json.loads(open(rejected[0]).read())
    assert report["passed"] is False and report["saved_model"]["cosine_min"] >= 0.999


def test_int8_embedding_range_headroom_keeps_the_model_consistent(exported, keras_reference):
    from ai_edge_litert.tools import flatbuffer_utils

    from aaa_keras.deploy import tflite as tflite_lib

    def pooled_scale(content):
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
        means = [op.outputs[0] for op in model.subgraphs[0].operators
                 if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "MEAN"]
        return model.subgraphs[0].tensors[means[-1]].quantization.scale[0]

    with open(exported["tflite"]["int8"], "rb") as f:
        content = f.read()
    wider = tflite_lib.widen_embedding_range(content, 1.5)
    assert pooled_scale(wider) == pytest.approx(1.5 * pooled_scale(content))
    embeddings = tflite_lib.TFLiteEmbedder(model_content=wider).embed(keras_reference["images"])
    assert _cosines(embeddings, keras_reference["embeddings"]).min() >= 0.98
    assert exported["report"]["tflite"]["int8"]["embedding_range_headroom"] == tflite_lib.EMBEDDING_HEADROOM


def test_int8_file_is_integer_from_input_to_output(exported, keras_reference):
    """No op of the exported int8 file reads or writes a float tensor (an int8-only NPU runs all of it);
    the output is the un-normalised embedding, which the runners normalise."""
    from ai_edge_litert.interpreter import Interpreter

    from aaa_keras.deploy.runtime import load_exported

    interpreter = Interpreter(model_path=exported["tflite"]["int8"])
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    ops = [(op["op_name"], [dtypes[i] for i in op["inputs"] if i >= 0], [dtypes[i] for i in op["outputs"]])
           for op in interpreter._get_ops_details()]
    assert len(ops) > 10 and {"CONV_2D", "MEAN"} <= {name for name, _, _ in ops}
    floating = [op for op in ops if {"float32", "float16"} & set(op[1] + op[2])]
    assert floating == [], floating
    assert np.dtype(interpreter.get_input_details()[0]["dtype"]) == np.uint8
    output = interpreter.get_output_details()[0]
    assert np.dtype(output["dtype"]) == np.int8
    assert exported["report"]["tflite"]["int8"]["output"]["l2_normalized"] is False
    assert exported["report"]["tflite"]["float32"]["output"]["l2_normalized"] is True
    embeddings = load_exported(exported["tflite"]["int8"]).embed(keras_reference["images"])
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    assert _cosines(embeddings, keras_reference["embeddings"]).min() >= 0.98


def test_round_trip_in_a_process_that_never_imports_aaa_keras(exported, keras_reference, tmp_path):
    np.save(tmp_path / "images.npy", keras_reference["images"])
    tflite_dir = os.path.dirname(exported["tflite"]["int8"])
    subprocess.run([sys.executable, RUNTIME_SCRIPT, "roundtrip", exported["saved_model"], tflite_dir,
                    str(tmp_path / "images.npy"), str(tmp_path / "out")],
                   check=True, env=_clean_env(), cwd=str(tmp_path), timeout=300)
    for name, threshold in COSINE_MIN.items():
        reference = keras_reference["rounded" if name.endswith("uint8") else "embeddings"]
        cosine = _cosines(np.load(tmp_path / "out" / f"{name}.npy"), reference)
        assert cosine.min() >= threshold, (name, cosine.min())
    assert _cosines(np.load(tmp_path / "out" / "saved_model.npy"), keras_reference["embeddings"]).min() > 0.99999


def test_saved_model_cli_lists_both_signatures(exported):
    command = shutil.which("saved_model_cli")
    args = [command] if command else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    shown = subprocess.run(args + ["show", "--dir", exported["saved_model"], "--all"], capture_output=True,
                           text=True, env=_clean_env(), timeout=180, check=True).stdout
    for signature in ("serving_default", "serve_bytes", "serving_uint8"):
        assert f"signature_def['{signature}']" in shown
    assert "inputs['image_bytes'] tensor_info:" in shown and "dtype: DT_STRING" in shown
    assert "outputs['embedding'] tensor_info:" in shown and "shape: (-1, 64, 32, 3)" in shown


def test_bytes_signature_equals_image_signature_on_the_same_decoded_image(exported, keras_reference):
    import cv2
    import tensorflow as tf

    loaded = tf.saved_model.load(exported["saved_model"])
    jpeg_path = keras_reference["paths"][0]
    with open(jpeg_path, "rb") as f:
        jpeg = f.read()
    png = cv2.imencode(".png", cv2.imread(jpeg_path))[1].tobytes()
    from_bytes = loaded.signatures["serve_bytes"](image_bytes=tf.constant([jpeg, png]))["embedding"].numpy()
    decoded = np.stack([
        tf.clip_by_value(tf.image.resize(tf.cast(tf.io.decode_image(data, channels=3), tf.float32), (64, 32)),
                         0, 255).numpy() for data in (jpeg, png)])
    from_images = loaded.signatures["serving_default"](images=tf.constant(decoded))["embedding"].numpy()
    np.testing.assert_allclose(from_bytes, from_images, atol=1e-6)
    np.testing.assert_allclose(from_bytes[0], keras_reference["embeddings"][0], atol=1e-5)
    empty = loaded.signatures["serve_bytes"](image_bytes=tf.constant([], tf.string))["embedding"]
    assert empty.shape == (0, 128)


def test_malformed_bytes_raise_invalid_argument_and_never_hang_or_crash(exported, keras_reference, tmp_path):
    import cv2

    jpeg_path = keras_reference["paths"][0]
    png_path = str(tmp_path / "good.png")
    cv2.imwrite(png_path, cv2.imread(jpeg_path))
    out = tmp_path / "malformed.json"
    subprocess.run([sys.executable, RUNTIME_SCRIPT, "malformed", exported["saved_model"], jpeg_path, png_path,
                    str(out)], check=True, env=_clean_env(), timeout=300)
    results = json.loads(out.read_text())
    assert results.pop("good_batch_after_errors") == "[2, 128]"
    assert sum(name.startswith("jpeg_cut_after_ff_") for name in results) >= 3
    for name, outcome in results.items():
        assert outcome.startswith("InvalidArgumentError: "), (name, outcome)
    assert "image] [1] [of the batch] [is empty" in results["empty"]
    assert "is neither JPEG nor PNG" in results["garbage"] and "is neither JPEG nor PNG" in results["gif"]
    assert "is a truncated JPEG" in results["truncated_jpeg_half"]
    assert "is a truncated JPEG" in results["truncated_jpeg_soi_ff"]
    assert "is a truncated PNG" in results["truncated_png"]


# === Atomicity and versions ===

def test_interrupted_export_leaves_previous_version_and_no_partial_directory(exported, run_dir, monkeypatch):
    from aaa_keras.deploy import export_run
    from aaa_keras.deploy import tflite as tflite_lib

    out = exported["out"]

    def snapshot():
        return {os.path.relpath(os.path.join(d, f), out): os.path.getsize(os.path.join(d, f))
                for d, _, files in os.walk(out) for f in files}

    before = snapshot()

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt("simulated Ctrl-C during the TFLite conversion")

    monkeypatch.setattr(tflite_lib, "convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_run(run_dir, out, log=_quiet)  # the SavedModel of version 2 was written, then interrupted
    assert snapshot() == before
    assert sorted(os.listdir(os.path.join(out, "aaa_net"))) == ["1"]
    assert sorted(os.listdir(os.path.join(out, "tflite", "aaa_net"))) == ["1"]
    monkeypatch.undo()

    # A killed export leaves a _partial_ directory; the next export removes it and takes version 2.
    stale = os.path.join(out, "aaa_net", "_partial_2_999999999")
    os.makedirs(os.path.join(stale, "variables"))
    messages = []
    result = export_run(run_dir, out, formats=("saved_model",), log=messages.append)
    assert result["version"] == 2 and not os.path.exists(stale)
    assert any("interrupted export" in m for m in messages)
    assert sorted(os.listdir(os.path.join(out, "aaa_net"))) == ["1", "2"]
    assert {k: v for k, v in snapshot().items() if k in before} == before
    with pytest.raises(UserError, match=r"--version 1: aaa_net version 1 already exists"):
        export_run(run_dir, out, version=1, log=_quiet)


def test_missed_parity_installs_nothing_and_says_why(run_dir, tmp_path, monkeypatch):
    from aaa_keras.deploy import export_run
    from aaa_keras.deploy import parity

    monkeypatch.setitem(parity.COSINE_THRESHOLDS, "int8", 0.99999999)
    with pytest.raises(UserError, match=r"^parity missed: int8 per-image cosine to Keras 1st percentile 0\.\d+ "
                                        r"< 0\.99\d+ \(min 0\.\d+, mean"):
        export_run(run_dir, str(tmp_path), formats="tflite", quantizations=("int8",), log=_quiet)
    assert not os.path.exists(tmp_path / "tflite" / "aaa_net" / "1")
    rejected = glob.glob(str(tmp_path / "_rejected" / "aaa_net_v1_*" / "tflite" / "parity.json"))
    assert len(rejected) == 1 and json.loads(open(rejected[0]).read())["passed"] is False


def test_int8_map_gate_compares_with_keras_when_float32_is_not_exported():
    from aaa_keras.deploy import parity

    int8 = {"cosine_min": 0.999, "cosine_p1": 0.999, "cosine_mean": 0.9995, "mAP": 37.0}
    alone = parity.failures({"keras": {"mAP": 40.0}, "tflite": {"int8": int8}})
    assert alone == ["int8 mAP 37.00 is 3.00 points below keras's 40.00 (at most 1.0 allowed)"]
    beside = {"keras": {"mAP": 40.0}, "tflite": {"int8": int8, "float32": {**int8, "mAP": 37.5}}}
    assert parity.failures(beside) == []  # float32 TFLite, when exported, is the reference
    assert parity.int8_map_drop(beside) == {"reference": "float32", "reference_mAP": 37.5, "points": 0.5}


def test_int8_exported_alone_is_judged_by_map_too(run_dir, tmp_path, monkeypatch):
    from aaa_keras.deploy import export_run
    from aaa_keras.deploy import parity

    monkeypatch.setattr(parity, "MAX_INT8_MAP_DROP", -1000.0)  # any int8 mAP now misses, if it is judged
    with pytest.raises(UserError, match=r"^parity missed: int8 mAP \d+\.\d+ is -?\d+\.\d+ points below keras's"):
        export_run(run_dir, str(tmp_path), formats="tflite", quantizations=("int8",), log=_quiet)
    report = json.loads(open(glob.glob(str(tmp_path / "_rejected" / "*" / "tflite" / "parity.json"))[0]).read())
    assert report["int8_map_reference"] == "keras"
    assert report["int8_map_drop_points"] == pytest.approx(report["keras"]["mAP"] - report["tflite"]["int8"]["mAP"],
                                                           rel=1e-6, abs=1e-3)


def test_broken_uint8_serving_signature_is_caught_and_nothing_installed(run_dir, tmp_path, monkeypatch):
    """serving_uint8 is measured and gates the install: a SavedModel whose uint8 path inverts the pixels."""
    import tensorflow as tf

    from aaa_keras.deploy import export_run
    from aaa_keras.deploy import saved_model

    def inverted(self, images):
        return self._embed(255.0 - tf.cast(images, tf.float32))

    monkeypatch.setattr(saved_model.EmbedderServing, "_embed_uint8", inverted)
    with pytest.raises(UserError, match=r"^parity missed: saved_model serving_uint8 cosine to Keras min "
                                        r"-?\d\.\d+ < 0\.999\. The export was not installed"):
        export_run(run_dir, str(tmp_path), formats=("saved_model",), log=_quiet)
    assert not os.path.exists(tmp_path / "aaa_net" / "1")
    rejected = glob.glob(str(tmp_path / "_rejected" / "aaa_net_v1_*" / "saved_model" / "assets.extra"
                             / "parity.json"))
    assert len(rejected) == 1
    report = json.loads(open(rejected[0]).read())
    assert report["passed"] is False and len(report["failures"]) == 1
    assert report["saved_model"]["cosine_min"] >= 0.999  # serving_default is fine
    assert report["saved_model"]["serve_bytes_cosine_min"] >= 0.999
    assert report["saved_model"]["serving_uint8_cosine_min"] < 0.999


def test_saved_model_signatures_are_checked_on_the_whole_held_set_with_map(exported, keras_reference, tmp_path,
                                                                         run_dir, monkeypatch):
    """serve_bytes wrong on one held image (not one of an evenly spread subset): caught, indexed in the full set."""
    from aaa_keras.deploy import export_run
    from aaa_keras.deploy import saved_model

    entry, held = exported["report"]["saved_model"], len(keras_reference["paths"])
    assert entry["num_images"] == held
    for prefix in ("", "serving_uint8_", "serve_bytes_"):
        assert entry[f"{prefix}mAP"] == pytest.approx(exported["report"]["keras"]["mAP"], rel=0.02)
    with open(keras_reference["paths"][1], "rb") as f:
        broken = f.read()
    embed_bytes = saved_model.embed_bytes

    def wrong_on_one_image(signature, encoded, batch_size=32):
        embeddings = embed_bytes(signature, encoded, batch_size)
        return np.where(np.array([data == broken for data in encoded])[:, None], -embeddings, embeddings)

    monkeypatch.setattr(saved_model, "embed_bytes", wrong_on_one_image)
    with pytest.raises(UserError, match=r"^parity missed: saved_model serve_bytes cosine to Keras min -1\.0000"):
        export_run(run_dir, str(tmp_path), formats=("saved_model",), log=_quiet)
    report = json.loads(open(glob.glob(str(tmp_path / "_rejected" / "*" / "saved_model" / "assets.extra"
                                           / "parity.json"))[0]).read())
    assert report["saved_model"]["serve_bytes_worst_image"] == 1
    assert report["saved_model"]["cosine_min"] >= 0.999  # serving_default is fine


def test_parity_verdict_covers_every_saved_model_signature():
    from aaa_keras.deploy import parity

    good = {"cosine_min": 0.99995, "cosine_mean": 0.99999, "serving_uint8_cosine_min": 0.9999,
            "serve_bytes_cosine_min": 0.9999}
    assert parity.failures({"saved_model": good}) == []
    for key, signature in (("serving_uint8_cosine_min", "serving_uint8"), ("serve_bytes_cosine_min", "serve_bytes")):
        for bad in (0.5, float("nan")):
            problems = parity.failures({"saved_model": {**good, key: bad}})
            assert len(problems) == 1 and problems[0].startswith(f"saved_model {signature} cosine to Keras min ")


def test_a_missed_int8_cosine_says_whether_the_float_network_itself_is_that_sensitive():
    from aaa_keras.deploy import parity

    int8 = {"tflite": {"int8": {"cosine_min": 0.71, "cosine_p1": 0.72, "cosine_mean": 0.87}}}
    fragile = parity.failures({**int8, "keras": {"pixel_noise": {"sigma": 2.0, "cosine_min": 0.94}}})
    assert len(fragile) == 1 and "0.9400 under Gaussian pixel noise of 2 grey levels" in fragile[0]
    assert "amplifies small perturbations" in fragile[0]
    robust = parity.failures({**int8, "keras": {"pixel_noise": {"sigma": 2.0, "cosine_min": 0.9990}}})
    assert "0.9990 under" in robust[0] and "amplifies" not in robust[0]
    assert "pixel noise" not in parity.failures(int8)[0]


def test_int8_is_gated_on_a_low_percentile_of_the_cosine_and_float_formats_on_the_minimum():
    from aaa_keras.deploy import parity

    rng = np.random.default_rng(0)
    keras = rng.normal(size=(500, 16))
    candidate = keras + rng.normal(scale=0.05, size=keras.shape)
    candidate[7] = -keras[7]  # one image of 500 lost entirely
    entry = parity.compare(keras, candidate)
    assert entry["cosine_min"] == pytest.approx(-1.0, rel=1e-6) and entry["worst_image"] == 7
    expected = np.sort(parity.cosines(keras, candidate))[4]  # 1st percentile of 500: the 5th lowest
    assert entry["cosine_p1"] == pytest.approx(expected, rel=1e-5)
    assert entry["cosine_p1"] > 0.98
    assert parity.failures({"tflite": {"int8": entry}}) == []  # one bad image of 500 does not reject int8
    assert parity.failures({"tflite": {"float32": entry}})[0].startswith("float32 per-image cosine to Keras min ")
    worse = {**entry, "cosine_p1": 0.975}
    assert parity.failures({"tflite": {"int8": worse}}) == [
        f"int8 per-image cosine to Keras 1st percentile 0.9750 < 0.98 (min -1.0000, mean {entry['cosine_mean']:.4f})"]


@pytest.fixture(scope="module")
def bnneck_run_dir(tiny_data, tmp_path_factory):
    from aaa_keras.config import make_config
    from aaa_keras.training import fit

    path = tmp_path_factory.mktemp("bnneck_run") / "run"
    config = make_config("demo", recipe="strong", data=tiny_data, backbone="tiny_resnet", batch_size=8, epochs=1,
                         steps_per_epoch=2, image_height=64, image_width=32)
    assert config.bnneck and config.neck_feature == "after"
    fit("baseline", config, str(path), log=_quiet)
    return str(path)


def test_export_with_int8_retrieves_before_the_bnneck_in_every_format_unless_told(bnneck_run_dir, tmp_path,
                                                                                 monkeypatch):
    from aaa_keras.deploy import export_run
    from aaa_keras.deploy import parity
    from aaa_keras.deploy.runtime import embed_files, load_exported

    monkeypatch.setattr(parity, "MAX_INT8_MAP_DROP", 100.0)  # 7 queries of a 2-step network: mAP is noise here

    both = export_run(bnneck_run_dir, str(tmp_path), formats=("tflite", "onnx"), quantizations=("int8",),
                      log=_quiet)
    report = both["report"]
    assert (report["neck_feature"], report["neck_feature_from"]) == ("before", "default where int8 is exported")
    # one feature per model: the ONNX model's embeddings answer the int8 model's queries
    paths = glob.glob(os.path.join(report["data"], "query", "*.jpg"))[:12]
    onnx, int8 = (embed_files(load_exported(path), paths) for path in (both["onnx"], both["tflite"]["int8"]))
    assert _cosines(onnx, int8).min() >= 0.98
    alone = export_run(bnneck_run_dir, str(tmp_path), formats=("onnx",), log=_quiet)["report"]
    assert (alone["neck_feature"], alone["neck_feature_from"]) == ("after", "the run's")
    told = export_run(bnneck_run_dir, str(tmp_path), formats=("onnx",), neck_feature="before", log=_quiet)["report"]
    assert (told["neck_feature"], told["neck_feature_from"]) == ("before", "--neck-feature")
    assert told["onnx"]["mAP"] == pytest.approx(report["onnx"]["mAP"], rel=1e-6)
    assert alone["keras"]["mAP"] != pytest.approx(report["keras"]["mAP"], rel=1e-9)  # another feature indeed


# === The versioned install ===

def test_stale_partial_cleanup_removes_only_dead_export_directories(tmp_path):
    from aaa_keras.deploy.install import partial_dir_name, remove_stale_partials
    from aaa_keras.files import partial_path

    dead, alive = tmp_path / partial_dir_name(2, 999999999), tmp_path / partial_dir_name(2)
    per_file = partial_path(str(tmp_path / "2"))  # files.atomic_path's temporary: _partial_<pid>-<hex>_2
    for directory in (dead, alive):
        (directory / "variables").mkdir(parents=True)
    open(per_file, "w").close()
    (tmp_path / "_partial_3_999999999.txt").write_text("a file, not an export directory")
    messages = []
    remove_stale_partials(str(tmp_path), messages.append)
    assert not dead.exists() and alive.is_dir() and os.path.isfile(per_file)
    assert (tmp_path / "_partial_3_999999999.txt").is_file()
    assert messages == [f"Removed {dead}, left by an interrupted export"]


def test_versioned_install_commits_in_order_discards_on_error_and_rejects(tmp_path, monkeypatch):
    from aaa_keras.deploy.install import versioned_install

    parents = {name: str(tmp_path / name) for name in ("a", "b")}
    renamed = []
    original = os.rename
    monkeypatch.setattr(os, "rename", lambda src, dst: renamed.append(dst) or original(src, dst))
    with versioned_install(1, order=("b", "a"), clean=parents.values(), log=_quiet) as install:
        for name in ("a", "b"):
            with open(os.path.join(install.partial(name, parents[name]), "f"), "w") as f:
                f.write(name)
    assert renamed == [os.path.join(parents["b"], "1"), os.path.join(parents["a"], "1")]  # in order
    assert all(os.listdir(parent) == ["1"] for parent in parents.values())

    with pytest.raises(KeyboardInterrupt):
        with versioned_install(2, log=_quiet) as install:
            install.partial("a", parents["a"])
            raise KeyboardInterrupt
    assert os.listdir(parents["a"]) == ["1"]  # the partial directory removed, version 1 untouched

    os.makedirs(os.path.join(parents["a"], "3", "variables"))  # another export took version 3 meanwhile
    with pytest.raises(UserError, match=r"a/3: cannot move the finished export into place"):
        with versioned_install(3, order=("b", "a"), log=_quiet) as install:
            for name in ("a", "b"):
                install.partial(name, parents[name])
    assert sorted(os.listdir(parents["b"])) == ["1"]  # b/3 was moved, then taken back: all or nothing
    assert sorted(os.listdir(parents["a"])) == ["1", "3"]

    with pytest.raises(UserError, match="rejected"):
        with versioned_install(4, log=_quiet) as install:
            install.partial("a", parents["a"])
            rejected = install.reject(str(tmp_path / "_rejected"), "m_v4")
            raise UserError(f"rejected to {rejected}")
    assert os.listdir(rejected) == ["a"] and sorted(os.listdir(parents["a"])) == ["1", "3"]


# === Index and search ===

def _protocol_rank1(query_paths, rankings):
    """Rank-1 (percent) under the Market-1501 protocol from full search rankings."""
    from aaa_keras.data.names import parse_name

    hits = valid = 0
    for path, ranking in zip(query_paths, rankings):
        pid, camid = parse_name(path)
        kept = [e for e in ranking if e["pid"] != -1 and not (e["pid"] == pid and e["camid"] == camid)]
        if any(e["pid"] == pid for e in kept):
            valid += 1
            hits += kept[0]["pid"] == pid
    return 100.0 * hits / valid


@pytest.fixture(scope="module")
def index_path(exported, tiny_data, tmp_path_factory):
    from aaa_keras.deploy import build_index

    path = str(tmp_path_factory.mktemp("index") / "gallery")
    info = build_index(exported["saved_model"], os.path.join(tiny_data, "bounding_box_test"), path, log=_quiet)
    assert info["num_images"] == info["num_named"] == 43 and info["embedding_dim"] == 128
    return path


def test_index_and_search_give_the_rank1_of_evaluate(exported, index_path, run_dir, tiny_data, tmp_path):
    from aaa_keras.deploy import build_index, search
    from aaa_keras.evaluation.run import evaluate_run

    queries = sorted(glob.glob(os.path.join(tiny_data, "query", "*.jpg")))
    expected = evaluate_run(run_dir, log=_quiet)["euclidean"]["rank1"]
    rankings = search(index_path, exported["saved_model"], queries, top=1000)
    assert len(rankings) == len(queries) and len(rankings[0]) == 43
    assert _protocol_rank1(queries, rankings) == pytest.approx(expected, abs=0.01)
    distances = [e["distance"] for e in rankings[0]]
    assert distances == sorted(distances) and 0.0 <= distances[0] <= 2.0
    # The int8 camera model indexes the same gallery with the same Rank-1 on this split.
    int8_index = str(tmp_path / "int8")
    build_index(exported["tflite"]["int8"], os.path.join(tiny_data, "bounding_box_test"), int8_index, log=_quiet)
    int8_rankings = search(int8_index, exported["tflite"]["int8"], queries, top=1000)
    assert _protocol_rank1(queries, int8_rankings) == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize("kind", ["onnx", "openvino"])
def test_exact_index_search_equals_brute_force_with_onnx_and_openvino_models(kind, exported, tiny_data, tmp_path):
    from aaa_keras.deploy import build_index, search
    from aaa_keras.deploy.runtime import embed_files, load_exported

    gallery_dir = os.path.join(tiny_data, "bounding_box_test")
    info = build_index(exported[kind], gallery_dir, str(tmp_path / "index"), log=_quiet)
    assert info["model_kind"] == kind and info["num_images"] == 43 and info["index_type"] == "exact"
    queries = sorted(glob.glob(os.path.join(tiny_data, "query", "*.jpg")))
    rankings = search(str(tmp_path / "index"), exported[kind], queries, top=10)

    model = load_exported(exported[kind])  # brute force: every gallery image against every query, in NumPy
    files = sorted(os.listdir(gallery_dir))
    gallery = embed_files(model, [os.path.join(gallery_dir, f) for f in files])
    distances = np.sqrt(np.maximum(2 - 2 * embed_files(model, queries) @ gallery.T, 0))
    for ranking, row in zip(rankings, distances):
        order = np.argsort(row, kind="stable")[:10]
        assert [e["file"] for e in ranking] == [files[g] for g in order]
        np.testing.assert_allclose([e["distance"] for e in ranking], row[order], atol=1e-4)


def test_append_embeds_only_new_crops_then_search_finds_them_and_keeps_old_results(exported, keras_reference,
                                                                                  tmp_path, monkeypatch):
    import importlib

    from aaa_keras.deploy import build_index, runtime, search

    search_lib = importlib.import_module("aaa_keras.deploy.search")  # the module; the package exports the function

    model = exported["onnx"]
    day1, day2 = tmp_path / "crops" / "day1", tmp_path / "crops" / "day2"
    day1.mkdir(parents=True)
    day2.mkdir()
    paths = keras_reference["paths"]
    for path in paths[10:30]:
        shutil.copy(path, day1)
    queries = paths[:3]
    monkeypatch.setattr(search_lib, "LARGE_EXACT_GALLERY", 23)  # the note on large exact indexes, at test size
    logged = []
    build_index(model, str(tmp_path / "crops"), str(tmp_path / "index"), log=logged.append)
    assert not [line for line in logged if "--index-type pca-ivf-sq8-refine-sq6" in line]  # 20 images: no note
    before = search(str(tmp_path / "index"), model, queries, top=20)

    for i, path in enumerate(queries):  # new crops: exact copies of the queries, so each is found first
        shutil.copy(path, day2 / f"new_{i}.jpg")
    embedded = []
    original = runtime.embed_files
    monkeypatch.setattr(runtime, "embed_files", lambda m, files, *a, **k: embedded.extend(files) or original(
        m, files, *a, **k))
    logged.clear()
    info = build_index(model, str(tmp_path / "crops"), str(tmp_path / "index"), append=True, log=logged.append)
    assert info["num_added"] == 3 and info["num_skipped"] == 20 and info["num_images"] == 23
    notes = [line for line in logged if line.startswith("Note: 23 images in an exact index")]
    assert len(notes) == 1 and "--index-type pca-ivf-sq8-refine-sq6" in notes[0] and "\n" not in notes[0], logged
    assert sorted(os.path.basename(p) for p in embedded) == ["new_0.jpg", "new_1.jpg", "new_2.jpg"]
    monkeypatch.undo()

    after = search(str(tmp_path / "index"), model, queries, top=23)
    for i, (old, new) in enumerate(zip(before, after)):
        assert new[0]["file"] == os.path.join("day2", f"new_{i}.jpg") and new[0]["distance"] < 1e-3
        kept = [(e["file"], round(e["distance"], 5)) for e in new if e["file"].startswith("day1")]
        assert kept == [(e["file"], round(e["distance"], 5)) for e in old]
    again = build_index(model, str(tmp_path / "crops"), str(tmp_path / "index"), append=True, log=_quiet)
    assert again["num_added"] == 0 and again["num_images"] == 23


def test_cli_index_append_and_search_with_the_openvino_model(exported, tiny_data, tmp_path):
    from click.testing import CliRunner

    from cli import cli

    def run(*args):
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.output

    crops = tmp_path / "crops"
    shutil.copytree(os.path.join(tiny_data, "bounding_box_test"), crops / "day1")
    model = os.path.dirname(exported["openvino"])  # the version directory is accepted too
    code, output = run("index", "--model", model, "--gallery", crops, "--out", tmp_path / "gallery")
    assert code == 0 and "43 images added, 43 in the index" in output, output
    query = sorted(glob.glob(os.path.join(tiny_data, "query", "*.jpg")))[0]
    (crops / "day2").mkdir()
    shutil.copy(query, crops / "day2" / "new_crop.jpg")
    code, output = run("index", "--model", model, "--gallery", crops, "--out", tmp_path / "gallery", "--append")
    assert code == 0 and "43 already indexed, not re-embedded" in output and "1 images added, 44 in" in output
    code, output = run("search", "--index", tmp_path / "gallery", "--model", exported["openvino"], query,
                       "--top", "2")
    assert code == 0 and output.splitlines()[1].endswith(os.path.join("day2", "new_crop.jpg")), output
    code, output = run("index", "--model", model, "--gallery", crops, "--out", tmp_path / "other", "--append")
    assert code == 2 and output.count("Error:") == 1 and "--append needs an existing index" in output


def test_search_prints_and_draws_the_ranked_list(exported, index_path, tiny_data, tmp_path):
    from aaa_keras.deploy import format_search, search

    queries = sorted(glob.glob(os.path.join(tiny_data, "query", "*.jpg")))[:2]
    crop = str(tmp_path / "crop.jpg")  # a crop whose name carries no id
    shutil.copy(queries[0], crop)
    picture = str(tmp_path / "ranks.png")
    rankings = search(index_path, exported["tflite"]["float32"], queries + [crop], top=3, picture=picture)
    assert [len(r) for r in rankings] == [3, 3, 3]
    assert rankings[0][0].keys() == {"rank", "file", "path", "distance", "pid", "camid", "time"}
    assert rankings[2][0]["file"] == rankings[0][0]["file"]  # same pixels, same nearest neighbour
    assert os.path.getsize(picture) > 10_000
    text = format_search(queries + [crop], rankings)
    assert f"Query {crop}:" in text and "  1. " in text and " cam " in text


def test_index_of_a_folder_of_unnamed_crops(exported, keras_reference, tmp_path):
    from aaa_keras.deploy import build_index

    folder = tmp_path / "crops" / "camera7"
    folder.mkdir(parents=True)
    for i, path in enumerate(keras_reference["paths"][:3]):
        shutil.copy(path, folder / f"detection_{i}.jpg")
    shutil.copy(keras_reference["paths"][3], folder / keras_reference["paths"][3].rsplit(os.sep, 1)[-1])
    from aaa_keras.deploy.gallery import GalleryIndex

    info = build_index(exported["tflite"]["int8"], str(tmp_path / "crops"), str(tmp_path / "i"), log=_quiet)
    assert info["num_images"] == 4 and info["num_named"] == 1
    index = GalleryIndex(str(tmp_path / "i"))
    rows = index.rows(range(4))
    entries = {row["file"]: (row["pid"], row["camid"]) for row in rows}
    assert entries[os.path.join("camera7", "detection_0.jpg")] == (None, None)
    named = os.path.join("camera7", os.path.basename(keras_reference["paths"][3]))
    assert entries[named][0] >= 0 and entries[named][1] >= 1
    assert list(entries) == sorted(entries)
    assert all(row["path"] == os.path.join(str(tmp_path / "crops"), row["file"]) and row["time"] for row in rows)
    np.testing.assert_allclose(np.linalg.norm(index.vectors(range(4)), axis=1), 1.0, atol=1e-5)


# === Errors a user can make ===

def test_user_errors_name_the_file_or_argument(exported, index_path, run_dir, tiny_data, tmp_path):
    from aaa_keras.deploy import build_index, export_run, search

    query = sorted(glob.glob(os.path.join(tiny_data, "query", "*.jpg")))[0]
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    cases = [
        (lambda: export_run(str(tmp_path / "nope"), str(tmp_path / "m")), r"--run-dir .*nope: no such directory"),
        (lambda: export_run(run_dir, str(tmp_path / "m"), stage="adversarial"),
         r"stage 'adversarial' is not trained there"),
        (lambda: export_run(run_dir, str(tmp_path / "m"), quantizations=("int4",)), r"--quantize: got 'int4'"),
        (lambda: export_run(run_dir, str(tmp_path / "m"), formats="torchscript"), r"--format: got 'torchscript'"),
        (lambda: export_run(run_dir, str(tmp_path / "m"), model_name="../x"), r"--model-name: got '../x'"),
        (lambda: build_index(str(tmp_path / "missing.tflite"), tiny_data, str(tmp_path / "i")),
         r"--model .*missing\.tflite: no such file"),
        (lambda: build_index(os.path.dirname(exported["saved_model"]), query, str(tmp_path / "i")),
         r"is not a SavedModel .*did you mean .*aaa_net/\d+\?"),
        (lambda: build_index(exported["saved_model"], tiny_data, str(tmp_path / "i")),
         r"--gallery .*: this is a dataset root"),
        (lambda: build_index(exported["saved_model"], str(empty), str(tmp_path / "i")),
         r"--gallery .*empty: no images"),
        (lambda: search(str(tmp_path / "none"), exported["saved_model"], [query]), r"--index .*none: no such index"),
        (lambda: build_index(exported["saved_model"], query, str(tmp_path / "g.npz")),
         r"--out .*g\.npz: an index is now a directory"),
        (lambda: build_index(exported["saved_model"], tiny_data, index_path), r"--out .*gallery: already exists"),
        (lambda: build_index(exported["saved_model"], tiny_data, str(tmp_path / "new"), append=True),
         r"--out .*new: --append needs an existing index"),
        (lambda: search(index_path, exported["saved_model"], [str(tmp_path / "q.jpg")]), r"q\.jpg: no such image"),
        (lambda: search(index_path, exported["saved_model"], [query], top=0), r"--top: expected a positive"),
    ]
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    cases.append((lambda: search(index_path, exported["saved_model"], [str(tmp_path / "bad.jpg")]),
                  r"bad\.jpg: cannot read this image"))
    from aaa_keras.deploy.gallery import GalleryIndex

    indexed = GalleryIndex(index_path)
    rows = indexed.rows(range(indexed.size))
    GalleryIndex.create(str(tmp_path / "other_dim"), np.ones((len(rows), 64), np.float32) / 8.0, rows)
    cases.append((lambda: search(str(tmp_path / "other_dim"), exported["saved_model"], [query]),
                  r"made with a model of 64-d embeddings but --model .* gives 128-d"))
    GalleryIndex.create(str(tmp_path / "other_model"), np.roll(indexed.vectors(range(len(rows))), 7, axis=1), rows)
    cases.append((lambda: search(str(tmp_path / "other_model"), exported["saved_model"], [query]),
                  r"was made with another model"))
    for call, pattern in cases:
        with pytest.raises(UserError, match=pattern) as error:
            call()
        assert "\n" not in str(error.value)


# === The clients a deployer copies ===

def test_serving_client_runs_the_saved_model_locally_without_aaa_keras(exported, keras_reference, tmp_path):
    out = tmp_path / "embeddings.npy"
    script = os.path.join(REPO, "export", "serving_client.py")
    for signature in ("serve_bytes", "serving_uint8"):
        result = subprocess.run(
            [sys.executable, "-c", _RUN_SCRIPT.format(forbidden=("aaa_keras",)), script, "--model-dir",
             exported["saved_model"], "--signature", signature, *keras_reference["paths"][:3], "--out", str(out)],
            capture_output=True, text=True, env=_clean_env(), timeout=300)
        assert result.returncode == 0, result.stderr
        reference = keras_reference["embeddings" if signature == "serve_bytes" else "rounded"][:3]
        assert _cosines(np.load(out), reference).min() > 0.9999, signature
    assert "cosine similarity matrix" in result.stdout


class _FakeServing(BaseHTTPRequestHandler):
    """TF Serving's REST :predict, answered by the real SavedModel."""

    signatures = None
    requests = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        import tensorflow as tf

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        encoded = [base64.b64decode(item["b64"]) for item in body["inputs"]["image_bytes"]]
        try:
            result = self.signatures[body["signature_name"]](image_bytes=tf.constant(encoded))
            status, reply = 200, {"outputs": result["embedding"].numpy().tolist()}
        except tf.errors.InvalidArgumentError as error:
            status, reply = 400, {"error": str(error).splitlines()[0]}
        payload = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_args):
        pass


def test_serving_client_posts_the_rest_predict_json(exported, keras_reference, tmp_path, capsys):
    import tensorflow as tf

    client = _load_script("serving_client")
    _FakeServing.signatures = tf.saved_model.load(exported["saved_model"]).signatures
    server = HTTPServer(("127.0.0.1", 0), _FakeServing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        out = tmp_path / "rest.npy"
        assert client.main(["--server", url, "--model-name", "aaa_net", "--version", "1",
                            *keras_reference["paths"][:2], "--out", str(out)]) == 0
        path, body = _FakeServing.requests[-1]
        assert path == "/v1/models/aaa_net/versions/1:predict"
        assert body["signature_name"] == "serve_bytes" and len(body["inputs"]["image_bytes"]) == 2
        assert _cosines(np.load(out), keras_reference["embeddings"][:2]).min() > 0.9999
        (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff")
        assert client.main(["--server", url, str(tmp_path / "bad.jpg")]) == 2
        assert "HTTP 400" in capsys.readouterr().err
    finally:
        server.shutdown()
    request = client.rest_request("serving_default", pixels=np.zeros((1, 2, 1, 3), np.float32), row_format=True)
    assert request == {"signature_name": "serving_default", "instances": [{"images": [[[0.0] * 3], [[0.0] * 3]]}]}


def test_serving_client_grpc_request_or_a_clear_message(keras_reference, capsys):
    client = _load_script("serving_client")
    try:
        import tensorflow_serving.apis.predict_pb2  # noqa: F401
    except ImportError:
        assert client.main(["--grpc", "localhost:8500", keras_reference["paths"][0]]) == 2
        assert "pip install tensorflow-serving-api" in capsys.readouterr().err
        return
    with open(keras_reference["paths"][0], "rb") as f:
        data = f.read()
    request = client.grpc_request("aaa_net", "serve_bytes", 3, encoded=[data, data])
    assert request.model_spec.name == "aaa_net" and request.model_spec.signature_name == "serve_bytes"
    assert request.model_spec.version.value == 3
    assert list(request.inputs["image_bytes"].string_val) == [data, data]


def test_tflite_embed_needs_only_litert_numpy_and_opencv(exported, keras_reference, tmp_path):
    script = os.path.join(REPO, "export", "tflite_embed.py")
    code = _RUN_SCRIPT.format(forbidden=("tensorflow", "keras", "aaa_keras"))
    for quantization, threshold in (("float32", 0.999), ("int8", 0.98)):
        out = tmp_path / f"{quantization}.npy"
        subprocess.run([sys.executable, "-c", code, script, exported["tflite"][quantization],
                        *keras_reference["paths"][:4], "--out", str(out)],
                       check=True, capture_output=True, env=_clean_env(), timeout=120)
        assert _cosines(np.load(out), keras_reference["embeddings"][:4]).min() >= threshold, quantization
    failed = subprocess.run([sys.executable, script, exported["tflite"]["int8"], str(tmp_path / "none.jpg")],
                            capture_output=True, text=True, env=_clean_env(), timeout=120)
    assert failed.returncode == 2 and "none.jpg: cannot read this image" in failed.stderr


# What each normalisation convention makes of the crops; every one must be refused, real pixels never.
NOT_0_255 = {"0-1 floats": lambda x: x / 255.0, "[-1, 1]": lambda x: x / 127.5 - 1.0,
             "ImageNet mean / std": lambda x: (x / 255.0 - 0.45) / 0.225, "caffe mean": lambda x: x - 116.0}


def test_runners_refuse_pixels_that_are_not_0_255_and_accept_every_real_crop(exported):
    from aaa_keras.deploy.contract import pixel_range_problem
    from aaa_keras.deploy.runtime import load_exported, read_images

    models = [exported["saved_model"], exported["onnx"], exported["openvino"], *exported["tflite"].values()]
    paths = sorted(glob.glob(os.path.join(exported["report"]["data"], "*", "*.jpg")))
    for path in paths:  # every crop of the data set, alone: real pixels are never refused
        assert pixel_range_problem(read_images([path], (64, 32))) is None, path
    images = read_images(paths[:6], (64, 32))
    for path in models:
        model = load_exported(path)
        assert model.embed(images).shape == (6, model.embedding_dim)
        assert np.isfinite(model.embed(np.zeros_like(images))).all()  # black crops are black on any scale
        for transform in NOT_0_255.values():
            with pytest.raises(UserError, match=rf"^{re.escape(path)}: pixel values from .*expected RGB 0-255"):
                model.embed(transform(images))


def test_clients_refuse_pixels_that_are_not_0_255(exported, keras_reference):
    client, camera = _load_script("serving_client"), _load_script("tflite_embed")
    embedder = camera.CropEmbedder(exported["tflite"]["int8"])
    crop = keras_reference["images"][0]
    assert embedder.embed(crop.astype(np.uint8)).shape == embedder.embed(crop).shape
    for transform in NOT_0_255.values():
        with pytest.raises(ValueError, match=r"^pixel values from .*expected RGB 0-255"):
            embedder.embed(transform(crop))
        with pytest.raises(client.ClientError, match=r"^pixel values from .*expected RGB 0-255"):
            client.rest_request("serving_default", pixels=transform(keras_reference["images"][:2]))


@pytest.mark.parametrize("script", ["serving_client.py", "tflite_embed.py"])
def test_client_help_shows_examples(script):
    result = subprocess.run([sys.executable, os.path.join(REPO, "export", script), "--help"],
                            capture_output=True, text=True, env=_clean_env(), timeout=60, check=True)
    assert "examples:" in result.stdout and f"export/{script}" in result.stdout


# === The product backbone ===

@pytest.mark.slow
def test_resnet50_export_refuses_an_unsettled_run_and_passes_parity_with_sane_weights(tiny_data, tmp_path):
    """ResNet-50, the product backbone, end to end.

    Two SGD steps leave its BatchNorm moving statistics half-updated: the
    activations reach ~1e20 and the L2-normalised embedding is the zero vector
    (in Keras too). Export must refuse that with a clear message (the TFLite
    int8 quantiser would segfault on it). With freshly initialised weights
    (what benchmarks/bench_export.py measures) the whole export passes parity.
    No ImageNet or fully trained ResNet-50 is available offline here.
    """
    from aaa_keras.config import load_config, make_config
    from aaa_keras.deploy import export_run
    from aaa_keras.run_dir import build_stage_parts
    from aaa_keras.training import fit

    run = tmp_path / "resnet50"
    config = make_config("demo", recipe="paper", data=tiny_data, backbone="resnet50", batch_size=8, epochs=1, steps_per_epoch=2,
                         image_height=64, image_width=32)
    fit("baseline", config, str(run), log=_quiet)
    with pytest.raises(UserError, match=r"zero or non-finite embedding .* BatchNorm statistics have not settled"):
        export_run(str(run), str(tmp_path / "models"), log=_quiet)
    assert not os.path.exists(tmp_path / "models" / "aaa_net" / "1")

    parts, _ = build_stage_parts(load_config(str(run)))  # fresh ResNet-50 weights, moving statistics at init
    parts.network.save_weights(str(run / "baseline" / "network.weights.h5"))
    result = export_run(str(run), str(tmp_path / "models"), log=_quiet)
    report = result["report"]
    assert report["passed"] and report["embedding_dim"] == 2048 and result["version"] == 1
    assert report["tflite"]["int8"]["cosine_p1"] >= 0.98  # the gate's statistic; the minimum is reported
    assert report["tflite"]["float32"]["cosine_min"] >= 0.999 and report["tflite"]["float16"]["cosine_min"] >= 0.999
    assert report["tflite"]["float32"]["bytes"] > 90e6 and report["tflite"]["int8"]["bytes"] < 30e6
    assert report["saved_model"]["bytes"] < 1.3 * report["tflite"]["float32"]["bytes"]  # variables stored once
    print(json.dumps({q: {k: e[k] for k in ("cosine_min", "centred_cosine_min", "mAP", "bytes")}
                      for q, e in report["tflite"].items()}))
