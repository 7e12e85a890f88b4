"""``export --for boxmot``: BoxMOT's re-ID contract, the parity gate, and BoxMOT's own backends loading the files.

Default set (seconds): the graph undoes BoxMOT's normalisation exactly, the
sidecars sit where BoxMOT reads them, the int8 (de)quantisation is BoxMOT's.
Slow set: a tiny run exported with the CLI (layout, parity, a broken graph
rejected), and the files loaded by BoxMOT's ``ONNXBackend``, ``OpenVinoBackend``
and ``TFLiteBackend`` in BoxMOT's own virtual environment (created on first use
under ``~/.cache/aaa_keras/boxmot-venv``, or ``$AAA_KERAS_BOXMOT_VENV``; skipped
with the reason when BoxMOT cannot be installed), which must give the Keras
embeddings: cosine min >= 0.999 float, the export's int8 gate for int8.
"""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from aaa_keras.deploy import boxmot
from aaa_keras.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOXMOT_SCRIPT = os.path.join(REPO, "export", "boxmot_reid.py")
# What the slow test installs in BoxMOT's environment: the version whose reid/ code the contract was read
# from, and the runtimes of its three backends at the versions BoxMOT asks for (reid/backends/dependencies.py).
BOXMOT_REQUIREMENTS = (f"boxmot=={boxmot.BOXMOT_VERSION_READ}", "onnxruntime==1.24.3", "openvino>=2025.2.0",
                       "ai-edge-litert>=2.1.0")


def _tiny_embedder(seed=0):
    """A small 0-255 RGB NHWC embedder (conv, pool, L2), as the project's embedders take pixels."""
    import keras

    keras.utils.set_random_seed(seed)
    images = keras.Input((16, 8, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(images)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(images, keras.layers.UnitNormalization()(x))


def test_the_nchw_graph_undoes_boxmots_normalisation_exactly():
    embedder = _tiny_embedder()
    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 8, 3)).astype(np.float32)
    normalized = np.transpose(boxmot.normalize(pixels), (0, 3, 1, 2))  # what BoxMOT feeds: NCHW
    model = boxmot.nchw_model(embedder, (16, 8))
    assert tuple(model.input.shape) == (None, 3, 16, 8)
    difference = np.abs(np.asarray(model.predict(normalized, verbose=0)) - embedder.predict(pixels, verbose=0))
    assert difference.max() < 1e-5
    # BoxMOT's order: / 255, minus the mean, over the std (reid/core/crops.py, prepare_crop_batch)
    expected = (pixels[0, 0, 0] / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(boxmot.normalize(pixels)[0, 0, 0], expected, rtol=1e-6)
    low, high = boxmot.normalized_range()
    np.testing.assert_allclose(low, -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225]), rtol=1e-6)
    assert (high > 2.2).all()


def test_sidecars_sit_where_boxmot_reads_them_and_carry_its_keys(tmp_path):
    onnx = tmp_path / "m_v1.onnx"
    onnx.write_bytes(b"x")
    openvino = tmp_path / "m_v1_openvino_model"
    openvino.mkdir()
    (openvino / "m_v1.xml").write_text("<net/>")
    metadata = boxmot.sidecar("aaa_net", (128, 64), 512, "onnx", "float32", "NCHW")
    assert boxmot.write_sidecars(str(onnx), metadata) == [str(onnx) + ".metadata.json"]
    written = boxmot.write_sidecars(str(openvino), metadata)
    assert written == [str(openvino / "manifest.json"), str(openvino / "m_v1.xml.metadata.json")]
    saved = json.loads((tmp_path / "m_v1.onnx.metadata.json").read_text())
    # what BoxMOT's registry reads: model_name, preprocess, model_kwargs (schema 1) with img_size [H, W]
    assert saved["model_name"] == "aaa_net" and saved["preprocess"] == "resize"
    assert saved["model_kwargs_schema_version"] == 1 and saved["model_kwargs"] == {"img_size": [128, 64]}
    for path in (onnx, openvino, openvino / "m_v1.xml"):
        assert boxmot.is_boxmot_artifact(str(path)), path
    other = tmp_path / "plain.onnx"
    other.write_bytes(b"x")
    assert not boxmot.is_boxmot_artifact(str(other))
    with pytest.raises(UserError, match="no .metadata.json sidecar"):
        boxmot.BoxmotEmbedder(str(other))


def test_int8_input_and_output_are_quantised_as_boxmots_tflite_backend_does():
    detail = {"dtype": np.int8, "quantization": (0.0187, -14)}
    values = np.array([-3.0, -2.1179, 0.0, 2.64, 9.0], np.float32)
    quantized = boxmot._quantized(values, detail)
    # TFLiteBackend._quantize_input: round(x / scale + zero_point), clipped to the dtype
    np.testing.assert_array_equal(quantized, np.clip(np.round(values / 0.0187 - 14), -128, 127).astype(np.int8))
    np.testing.assert_allclose(boxmot._dequantized(quantized, detail), (quantized.astype(np.float32) + 14) * 0.0187)
    assert boxmot._quantized(values, {"dtype": np.float32, "quantization": (0.0, 0)}) is values


# === Slow: a tiny run exported for BoxMOT with the CLI ===

def _quiet(*_args):
    pass


@pytest.fixture(scope="module")
def run_dir(tiny_data, tmp_path_factory):
    from aaa_keras.config import make_config
    from aaa_keras.training import fit

    path = tmp_path_factory.mktemp("boxmot_run") / "run"
    config = make_config("demo", recipe="paper", data=tiny_data, backbone="tiny_resnet", batch_size=8, epochs=1,
                         steps_per_epoch=2, attention_filters=16, image_height=64, image_width=32)
    fit("baseline", config, str(path), log=_quiet)
    return str(path)


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    from cli import cli

    out = tmp_path_factory.mktemp("boxmot_models")
    result = CliRunner().invoke(cli, ["export", "--run-dir", run_dir, "--out", str(out), "--for", "boxmot"])
    assert result.exit_code == 0, result.output
    directory = out / "boxmot" / "aaa_net" / "1"
    return {"out": str(out), "dir": str(directory), "output": result.output,
            "models": [str(directory / name) for name in (
                "aaa_net_v1.onnx", "aaa_net_v1_openvino_model", "aaa_net_v1_openvino_model/aaa_net_v1.xml",
                "aaa_net_v1_float32.tflite", "aaa_net_v1_float16.tflite", "aaa_net_v1_int8.tflite")]}


@pytest.mark.slow
def test_cli_export_for_boxmot_writes_the_files_their_sidecars_and_a_passing_parity(exported):
    directory = exported["dir"]
    names = sorted(os.listdir(directory))
    assert names == sorted(["aaa_net_v1.onnx", "aaa_net_v1.onnx.metadata.json", "aaa_net_v1_openvino_model",
                            "aaa_net_v1_float32.tflite", "aaa_net_v1_float32.tflite.metadata.json",
                            "aaa_net_v1_float16.tflite", "aaa_net_v1_float16.tflite.metadata.json",
                            "aaa_net_v1_int8.tflite", "aaa_net_v1_int8.tflite.metadata.json", "parity.json"])
    assert sorted(os.listdir(os.path.join(directory, "aaa_net_v1_openvino_model"))) == [
        "aaa_net_v1.bin", "aaa_net_v1.xml", "aaa_net_v1.xml.metadata.json", "manifest.json"]
    report = json.load(open(os.path.join(directory, "parity.json")))
    assert report["passed"] and report["target"] == "boxmot"
    assert report["onnx"]["cosine_min"] >= 0.999 and report["openvino"]["cosine_min"] >= 0.999
    assert report["tflite"]["float32"]["cosine_min"] >= 0.999 and report["tflite"]["int8"]["cosine_p1"] >= 0.98
    assert report["tflite"]["int8"]["input"]["dtype"] == "int8" and report["onnx"]["input"]["layout"] == "NCHW"
    for model in exported["models"]:
        runner = boxmot.BoxmotEmbedder(model)
        assert runner.layout == "NCHW" and runner.image_size == (64, 32)
    assert "Parity passed" in exported["output"]


@pytest.mark.slow
def test_a_boxmot_export_whose_graph_misses_the_normalisation_is_rejected_and_installs_nothing(
        run_dir, tmp_path, monkeypatch):
    from aaa_keras.deploy.boxmot_export import export_boxmot

    original = boxmot.denormalize_layer

    def without_mean(name="boxmot_denormalize"):  # the graph forgets the mean: x * 255 * std
        layer = original(name)
        layer.set_weights([layer.get_weights()[0], np.zeros(3, np.float32)])
        return layer

    monkeypatch.setattr(boxmot, "denormalize_layer", without_mean)
    with pytest.raises(UserError, match=r"parity missed: onnx per-image cosine to Keras min"):
        export_boxmot(run_dir, str(tmp_path), formats=("onnx",), log=_quiet)
    assert not os.path.exists(tmp_path / "boxmot" / "aaa_net" / "1")
    assert os.listdir(tmp_path / "_rejected")


# === Slow: BoxMOT's own backends, in BoxMOT's own environment ===

def _cpu_torch_index() -> list[str]:
    """PyTorch's CPU wheel index when it answers (PyPI's torch brings several GB of CUDA libraries)."""
    import urllib.request

    url = "https://download.pytorch.org/whl/cpu/"
    try:
        urllib.request.urlopen(url, timeout=5).close()
    except OSError:
        return []
    return ["--extra-index-url", url]


def _boxmot_python() -> str:
    """The Python of a virtual environment with BoxMOT, made on first use; skips the test when it cannot be."""
    venv = os.environ.get("AAA_KERAS_BOXMOT_VENV", os.path.expanduser("~/.cache/aaa_keras/boxmot-venv"))
    python = os.path.join(venv, "bin", "python")
    probe = [python, "-c", "import boxmot, onnxruntime, openvino, ai_edge_litert; print(boxmot.__version__)"]
    if os.path.exists(python) and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    steps = [[sys.executable, "-m", "venv", venv],
             [python, "-m", "pip", "install", "--quiet", *_cpu_torch_index(), *BOXMOT_REQUIREMENTS]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as error:
            pytest.skip(f"BoxMOT cannot be installed here ({' '.join(step[:4])}: {error})")
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"BoxMOT cannot be installed here ({' '.join(step[:4])}: {reason})")
    if subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("BoxMOT was installed but does not import in its environment")
    return python


def _odd_crops(tiny_data, folder) -> list[str]:
    """Crops of other sizes than the model's (BoxMOT resizes each): cut from test images, 4 shapes."""
    import glob

    sources = sorted(glob.glob(os.path.join(tiny_data, "bounding_box_test", "*.jpg")))[:4]
    paths = []
    for index, (source, (top, left, height, width)) in enumerate(zip(sources, [
            (0, 0, 128, 64), (10, 5, 100, 50), (3, 9, 77, 41), (20, 0, 90, 64)])):
        image = cv2.imread(source)[top:top + height, left:left + width]
        paths.append(os.path.join(folder, f"odd_{index}.png"))
        cv2.imwrite(paths[-1], image)
    return paths


@pytest.mark.slow
def test_boxmots_own_backends_load_every_file_and_give_the_keras_embeddings(exported, run_dir, tiny_data,
                                                                            tmp_path):
    from aaa_keras.data.layouts import load_dataset
    from aaa_keras.deploy import parity as parity_lib
    from aaa_keras.model.backbone import build_embedder
    from aaa_keras.run_dir import load_trained

    python = _boxmot_python()
    dataset = load_dataset(tiny_data)
    held = parity_lib.HeldSet(list(dataset.query), list(dataset.gallery))
    crops = [r.path for r in held.records] + _odd_crops(tiny_data, str(tmp_path))
    out = tmp_path / "boxmot.npz"
    arguments = [python, BOXMOT_SCRIPT, "embed", "--out", str(out), "--crops", *crops]
    for model in exported["models"]:
        arguments += ["--model", model]
    env = dict(os.environ, PYTHONPATH="")  # BoxMOT's environment, never this project
    done = subprocess.run(arguments, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = np.load(out)
    backends = [str(b) for b in saved["backends"]]
    assert [b.split()[0] for b in backends] == ["ONNXBackend", "OpenVinoBackend", "OpenVinoBackend",
                                                "TFLiteBackend", "TFLiteBackend", "TFLiteBackend"]
    assert all("(64, 32)" in b for b in backends), backends

    trained = load_trained(run_dir, neck_feature="before")
    keras_embeddings = np.asarray(build_embedder(trained.parts).predict(
        boxmot.read_crops(crops, trained.config.image_size), verbose=0))
    reference = parity_lib.Reference(held, keras_embeddings[:len(held.records)])
    report, cosines = {"keras": reference.retrieval, "tflite": {}}, {}
    keys = ("onnx", "openvino", "openvino", "float32", "float16", "int8")  # the .xml is judged as OpenVINO too
    for index, (model, key) in enumerate(zip(exported["models"], keys)):
        embeddings = saved[f"emb_{index}"]
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
        entry = reference.compare(embeddings[:len(held.records)])
        entry.update(held.retrieval(embeddings[:len(held.records)]))
        odd = parity_lib.cosines(keras_embeddings[len(held.records):], embeddings[len(held.records):])
        entry["odd_crops_cosine_min"] = round(float(odd.min()), 6)
        (report["tflite"] if key in ("float32", "float16", "int8") else report)[key] = entry
        assert parity_lib.failures(report) == [], (model, entry)  # the export's gates, on what BoxMOT returns
        cosines[os.path.relpath(model, exported["dir"])] = {
            k: entry[k] for k in ("cosine_min", "cosine_p1", "cosine_mean", "odd_crops_cosine_min", "mAP")}
    print("BoxMOT backends vs Keras:", json.dumps(cosines, indent=1))
    for name, entry in cosines.items():
        assert entry["odd_crops_cosine_min"] >= (0.98 if "int8" in name else 0.999), (name, entry)

    done = subprocess.run([python, BOXMOT_SCRIPT, "track", "--crops", *crops[:6], "--model", exported["models"][0]],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    tracked = json.loads(done.stdout.strip().splitlines()[-1])
    assert tracked["track_ids"][-1] == list(range(6)), tracked  # BotSort with the AAA-Net re-ID keeps 6 tracks
    assert tracked["backend"] == "ONNXBackend" and tracked["embedding_width"] == saved["emb_0"].shape[1], tracked


def test_the_boxmot_script_needs_neither_aaa_keras_nor_boxmot_for_its_help():
    env = dict(os.environ, PYTHONPATH="")
    result = subprocess.run([sys.executable, "-c", "import runpy, sys; sys.argv = sys.argv[1:]; "
                             "runpy.run_path(sys.argv[0], run_name='__main__')", BOXMOT_SCRIPT, "--help"],
                            capture_output=True, text=True, env=env, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    assert "Examples:" in result.stdout and "export/boxmot_reid.py embed" in result.stdout


def test_format_choice_for_boxmot_keeps_its_three_formats_and_refuses_the_saved_model_alone():
    from aaa_keras.deploy.boxmot_export import _formats

    assert _formats(("all",)) == ("onnx", "openvino", "tflite")
    assert _formats(("saved_model", "onnx")) == ("onnx",)
    with pytest.raises(UserError, match="--for boxmot: --format saved_model has no BoxMOT format"):
        _formats(("saved_model",))
