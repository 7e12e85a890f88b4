"""``embed``: crops to an .npz of L2-normalised embeddings with every exported format, and its one-line errors.

The models are written once per module straight from an untrained tiny_resnet
(64x32; no training, no parity run: ``export`` is tested in test_export.py):
SavedModel, TFLite float32 and int8, ONNX, OpenVINO, and the ONNX / int8 TFLite
of ``export --for boxmot``.
"""

import dataclasses
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from aaa_keras.errors import DatasetError, UserError

IMAGE_SIZE = (64, 32)
# Per-image cosine to Keras each format must keep (the export's gates; int8 on its minimum here, 16 images)
COSINE_MIN = {"saved_model": 0.999, "float32": 0.999, "int8": 0.98, "onnx": 0.999, "openvino": 0.999,
              "boxmot_onnx": 0.999, "boxmot_int8": 0.98}


@pytest.fixture(scope="module")
def crops(tiny_data):
    """16 named crops of the tiny dataset (query + part of the gallery), copied into one folder."""
    import glob
    import tempfile

    folder = tempfile.mkdtemp(prefix="embed_crops_")
    paths = sorted(glob.glob(os.path.join(tiny_data, "query", "*.jpg")))
    paths += sorted(glob.glob(os.path.join(tiny_data, "bounding_box_test", "*.jpg")))[:16 - len(paths)]
    for path in paths:
        shutil.copy(path, folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def models(tiny_data, crops, tmp_path_factory):
    """{format: path} of one untrained tiny_resnet, and its Keras embeddings of ``crops``."""
    import keras

    from aaa_keras.config import make_config
    from aaa_keras.deploy import boxmot, onnx_openvino, saved_model
    from aaa_keras.deploy import tflite as tflite_lib
    from aaa_keras.deploy.boxmot_export import convert_int8
    from aaa_keras.deploy.runtime import read_images
    from aaa_keras.model.backbone import build_embedder
    from aaa_keras.run_dir import build_stage_parts

    out = tmp_path_factory.mktemp("embed_models")
    config = dataclasses.replace(make_config("demo", recipe="paper", data=tiny_data, backbone="tiny_resnet",
                                             attention_filters=16, image_height=IMAGE_SIZE[0],
                                             image_width=IMAGE_SIZE[1]), num_classes=4)
    parts, _ = build_stage_parts(config)
    embedder = build_embedder(parts)
    files = sorted(os.path.join(crops, name) for name in os.listdir(crops))
    pixels = read_images(files, IMAGE_SIZE)
    paths = {"saved_model": str(out / "saved_model")}
    saved_model.save(embedder, IMAGE_SIZE, paths["saved_model"])
    graph = tflite_lib.tflite_graph(parts)
    int8_graph = tflite_lib.tflite_graph(parts, normalize=False)
    for name, content in (("float32", tflite_lib.convert(graph, "float32")),
                          ("int8", tflite_lib.convert(int8_graph, "int8", pixels))):
        paths[name] = str(out / f"tiny_{name}.tflite")
        with open(paths[name], "wb") as f:
            f.write(content)
    paths["onnx"] = str(out / "tiny.onnx")
    onnx_openvino.save_onnx(embedder, paths["onnx"])
    paths["openvino"] = str(out / "tiny.xml")
    onnx_openvino.save_openvino(embedder, paths["openvino"])
    meta = dict(model_name="tiny", image_size=IMAGE_SIZE, embedding_dim=int(embedder.output.shape[-1]))
    paths["boxmot_onnx"] = str(out / "tiny_boxmot.onnx")
    onnx_openvino.save_onnx(boxmot.nchw_model(embedder, IMAGE_SIZE), paths["boxmot_onnx"])
    boxmot.write_sidecars(paths["boxmot_onnx"], boxmot.sidecar(**meta, kind="onnx", precision="float32",
                                                               layout="NCHW"))
    paths["boxmot_int8"] = str(out / "tiny_boxmot_int8.tflite")
    normalized = np.transpose(boxmot.normalize(pixels), (0, 3, 1, 2))
    with open(paths["boxmot_int8"], "wb") as f:
        f.write(convert_int8(boxmot.nchw_model(int8_graph, IMAGE_SIZE), normalized))
    boxmot.write_sidecars(paths["boxmot_int8"], boxmot.sidecar(**meta, kind="tflite", precision="int8",
                                                               layout="NCHW"))
    keras.backend.clear_session(free_memory=False)
    return {"paths": paths, "files": files, "keras": np.asarray(embedder.predict(pixels, verbose=0))}


def _cosines(a, b):
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("kind", sorted(COSINE_MIN))
def test_embed_writes_normalised_embeddings_paths_and_ids_with_every_format(kind, models, crops, tmp_path):
    from aaa_keras.data.names import parse_name
    from aaa_keras.deploy.embed import embed_to_file

    out = str(tmp_path / "embeddings.npz")
    result = embed_to_file(models["paths"][kind], crops, out, batch_size=5, log=lambda *_: None)
    saved = np.load(out)
    assert list(saved["paths"]) == models["files"]
    assert saved["embeddings"].shape == models["keras"].shape and saved["embeddings"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(saved["embeddings"], axis=1), 1.0, atol=1e-5)
    cosines = _cosines(saved["embeddings"], models["keras"])
    assert cosines.min() >= COSINE_MIN[kind], (kind, cosines.min())
    expected = [parse_name(path) for path in models["files"]]
    assert [(int(p), int(c)) for p, c in zip(saved["pid"], saved["camid"])] == expected
    assert saved["named"].all() and result["num_named"] == len(expected)
    assert str(saved["model_kind"]) == result["model_kind"]


def test_cli_embed_with_a_glob_prints_progress_and_unnamed_crops_carry_no_id(models, crops, tmp_path):
    from cli import cli

    unnamed = tmp_path / "unnamed"
    unnamed.mkdir()
    for index, path in enumerate(models["files"][:3]):
        shutil.copy(path, unnamed / f"person_{index}.jpg")
    out = tmp_path / "e.npz"
    runner = CliRunner()
    result = runner.invoke(cli, ["embed", "--model", models["paths"]["onnx"], "--images",
                                 str(tmp_path / "unnamed" / "*.jpg"), "--out", str(out), "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    assert "Wrote" in result.output and "embedding 3/3" in result.output  # the progress line (Progress)
    saved = np.load(out)
    assert not saved["named"].any() and (saved["pid"] == -1).all() and len(saved["paths"]) == 3
    np.testing.assert_allclose(saved["embeddings"], models["keras"][:3] / np.linalg.norm(
        models["keras"][:3], axis=1, keepdims=True), atol=1e-4)


def test_embed_errors_are_one_line_naming_the_argument_or_file(models, crops, tmp_path):
    from aaa_keras.deploy.embed import embed_to_file
    from cli import cli

    quiet = dict(log=lambda *_: None)
    model = models["paths"]["float32"]
    with pytest.raises(UserError, match=r"--images .*nomatch\*\.jpg: the pattern matches no file"):
        embed_to_file(model, str(tmp_path / "nomatch*.jpg"), str(tmp_path / "e.npz"), **quiet)
    with pytest.raises(UserError, match=r"--images .*missing_dir: no such folder"):
        embed_to_file(model, str(tmp_path / "missing_dir"), str(tmp_path / "e.npz"), **quiet)
    with pytest.raises(UserError, match=r"--model .*nothing\.onnx: no such file"):
        embed_to_file(str(tmp_path / "nothing.onnx"), crops, str(tmp_path / "e.npz"), **quiet)
    not_a_model = tmp_path / "garbage.tflite"
    not_a_model.write_bytes(b"not a flatbuffer")
    with pytest.raises(UserError, match=r"garbage\.tflite: not a TFLite model"):
        embed_to_file(str(not_a_model), crops, str(tmp_path / "e.npz"), **quiet)
    with pytest.raises(UserError, match=r"--out .*e\.csv: expected a \.npz"):
        embed_to_file(model, crops, str(tmp_path / "e.csv"), **quiet)

    broken = tmp_path / "with_bad"
    shutil.copytree(crops, broken)
    (broken / "0999_c1s1_000001_00.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(DatasetError, match=r"0999_c1s1_000001_00\.jpg"):
        embed_to_file(model, str(broken), str(tmp_path / "e.npz"), **quiet)
    assert not (tmp_path / "e.npz").exists()
    lines = []
    result = embed_to_file(model, str(broken), str(tmp_path / "e.npz"), skip_bad_images=True, log=lines.append)
    assert result["num_images"] == len(models["files"]) and result["num_skipped"] == 1
    assert any("--skip-bad-images: left out 1 image" in line and "0999_c1s1_000001_00.jpg" in line
               for line in lines)

    result = CliRunner().invoke(cli, ["embed", "--model", model, "--images", str(tmp_path / "nomatch*.jpg"),
                                      "--out", str(tmp_path / "e2.npz")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0 and result.output.startswith("Error: --images")
