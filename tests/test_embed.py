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


class _Models:
    """One untrained tiny_resnet; each format written on first use (the default set needs only three)."""

    def __init__(self, tiny_data, files, out):
        import keras

        from aaa_keras.config import make_config
        from aaa_keras.deploy.runtime import read_images
        from aaa_keras.model.backbone import build_embedder
        from aaa_keras.run_dir import build_stage_parts

        config = dataclasses.replace(make_config("demo", recipe="paper", data=tiny_data, backbone="tiny_resnet",
                                                 attention_filters=16, image_height=IMAGE_SIZE[0],
                                                 image_width=IMAGE_SIZE[1]), num_classes=4)
        keras.utils.set_random_seed(0)
        self.parts, _ = build_stage_parts(config)
        self.embedder = build_embedder(self.parts)
        self.files, self.out, self._paths = files, out, {}
        self.pixels = read_images(files, IMAGE_SIZE)
        self.keras = np.asarray(self.embedder.predict(self.pixels, verbose=0))

    def path(self, kind: str) -> str:
        if kind not in self._paths:
            self._paths[kind] = self._write(kind)
        return self._paths[kind]

    def _write(self, kind: str) -> str:
        from aaa_keras.deploy import boxmot, onnx_openvino, saved_model
        from aaa_keras.deploy import tflite as tflite_lib
        from aaa_keras.deploy.boxmot_export import convert_int8

        out, embedder = self.out, self.embedder
        meta = dict(model_name="tiny", image_size=IMAGE_SIZE, embedding_dim=int(embedder.output.shape[-1]))
        if kind == "saved_model":
            saved_model.save(embedder, IMAGE_SIZE, str(out / "saved_model"))
            return str(out / "saved_model")
        if kind in ("float32", "int8"):
            graph = tflite_lib.tflite_graph(self.parts, normalize=kind == "float32")
            (out / f"tiny_{kind}.tflite").write_bytes(tflite_lib.convert(graph, kind, self.pixels))
            return str(out / f"tiny_{kind}.tflite")
        if kind == "onnx":
            onnx_openvino.save_onnx(embedder, str(out / "tiny.onnx"))
            return str(out / "tiny.onnx")
        if kind == "openvino":
            onnx_openvino.save_openvino(embedder, str(out / "tiny.xml"))
            return str(out / "tiny.xml")
        if kind == "boxmot_onnx":
            path = str(out / "tiny_boxmot.onnx")
            onnx_openvino.save_onnx(boxmot.nchw_model(embedder, IMAGE_SIZE), path)
            boxmot.write_sidecars(path, boxmot.sidecar(**meta, kind="onnx", precision="float32", layout="NCHW"))
            return path
        assert kind == "boxmot_int8", kind
        path = str(out / "tiny_boxmot_int8.tflite")
        normalized = np.transpose(boxmot.normalize(self.pixels), (0, 3, 1, 2))
        int8_graph = boxmot.nchw_model(tflite_lib.tflite_graph(self.parts, normalize=False), IMAGE_SIZE)
        (out / "tiny_boxmot_int8.tflite").write_bytes(convert_int8(int8_graph, normalized))
        boxmot.write_sidecars(path, boxmot.sidecar(**meta, kind="tflite", precision="int8", layout="NCHW"))
        return path


@pytest.fixture(scope="module")
def models(tiny_data, crops, tmp_path_factory):
    files = sorted(os.path.join(crops, name) for name in os.listdir(crops))
    return _Models(tiny_data, files, tmp_path_factory.mktemp("embed_models"))


def _cosines(a, b):
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# the default set: one runner of each family (ONNX Runtime, LiteRT, BoxMOT's contract); the rest slow
QUICK = ("onnx", "float32", "boxmot_onnx")


@pytest.mark.parametrize("kind", [kind if kind in QUICK else pytest.param(kind, marks=pytest.mark.slow)
                                  for kind in sorted(COSINE_MIN)])
def test_embed_writes_normalised_embeddings_paths_and_ids_with_every_format(kind, models, crops, tmp_path):
    from aaa_keras.data.names import parse_name
    from aaa_keras.deploy.embed import embed_to_file

    out = str(tmp_path / "embeddings.npz")
    result = embed_to_file(models.path(kind), crops, out, batch_size=5, log=lambda *_: None)
    saved = np.load(out)
    assert list(saved["paths"]) == models.files
    assert saved["embeddings"].shape == models.keras.shape and saved["embeddings"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(saved["embeddings"], axis=1), 1.0, atol=1e-5)
    cosines = _cosines(saved["embeddings"], models.keras)
    assert cosines.min() >= COSINE_MIN[kind], (kind, cosines.min())
    expected = [parse_name(path) for path in models.files]
    assert [(int(p), int(c)) for p, c in zip(saved["pid"], saved["camid"])] == expected
    assert saved["named"].all() and result["num_named"] == len(expected)
    assert str(saved["model_kind"]) == result["model_kind"]


def test_cli_embed_with_a_glob_prints_progress_and_unnamed_crops_carry_no_id(models, crops, tmp_path):
    from cli import cli

    unnamed = tmp_path / "unnamed"
    unnamed.mkdir()
    for index, path in enumerate(models.files[:3]):
        shutil.copy(path, unnamed / f"person_{index}.jpg")
    out = tmp_path / "e.npz"
    runner = CliRunner()
    result = runner.invoke(cli, ["embed", "--model", models.path("onnx"), "--images",
                                 str(tmp_path / "unnamed" / "*.jpg"), "--out", str(out), "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    assert "Wrote" in result.output and "embedding 3/3" in result.output  # the progress line (Progress)
    saved = np.load(out)
    assert not saved["named"].any() and (saved["pid"] == -1).all() and len(saved["paths"]) == 3
    np.testing.assert_allclose(saved["embeddings"], models.keras[:3] / np.linalg.norm(
        models.keras[:3], axis=1, keepdims=True), atol=1e-4)


def test_embed_errors_are_one_line_naming_the_argument_or_file(models, crops, tmp_path):
    from aaa_keras.deploy.embed import embed_to_file
    from cli import cli

    quiet = dict(log=lambda *_: None)
    model = models.path("float32")
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
    assert result["num_images"] == len(models.files) and result["num_skipped"] == 1
    assert any("--skip-bad-images: left out 1 image" in line and "0999_c1s1_000001_00.jpg" in line
               for line in lines)

    result = CliRunner().invoke(cli, ["embed", "--model", model, "--images", str(tmp_path / "nomatch*.jpg"),
                                      "--out", str(tmp_path / "e2.npz")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0 and result.output.startswith("Error: --images")
