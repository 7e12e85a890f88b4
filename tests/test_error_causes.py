"""An error is explained only when its cause is known; anything else surfaces as itself.

- ``--backbone-weights imagenet``: a failed download (or weight file) is a
  UserError that keeps the cause; a bug inside Keras is not "could not download".
- ``evaluate``: a TensorFlow decode error is "an image does not decode"; any
  other InvalidArgumentError is re-raised unchanged.
"""

import types

import numpy as np
import pytest
import tensorflow as tf

from aaa_keras.data.pipeline import eval_dataset, is_decode_error, op_error_reason
from aaa_keras.errors import UserError
from aaa_keras.evaluation import run as run_lib
from aaa_keras.model.backbone import build_parts


def _resnet50_raising(monkeypatch, error):
    import keras

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(keras.applications, "ResNet50", fail)


@pytest.mark.parametrize("error, says", [
    (Exception("URL fetch failure on https://storage.googleapis.com/x.h5: 403 -- Forbidden"),
     "could not download"),
    (ValueError("Incomplete or corrupted file detected. The sha256 file hash does not match"),
     "could not download"),
    (OSError(28, "No space left on device"), "could not download or read"),
])
def test_a_failed_imagenet_download_names_its_cause_and_the_offline_way(monkeypatch, error, says):
    _resnet50_raising(monkeypatch, error)
    with pytest.raises(UserError) as caught:
        build_parts(3, (64, 32), "resnet50", "conv3", backbone_weights="imagenet")
    message = str(caught.value)
    assert f"--backbone-weights imagenet: {says} the ImageNet weights" in message
    assert f"{type(error).__name__}: {error}" in message and "--backbone-weights PATH" in message
    assert caught.value.__cause__ is error


@pytest.mark.parametrize("error", [TypeError("ResNet50() got an unexpected keyword argument"),
                                   ValueError("The input must have 3 channels")])
def test_another_error_while_building_resnet50_is_not_called_a_download_failure(monkeypatch, error):
    _resnet50_raising(monkeypatch, error)
    with pytest.raises(type(error)) as caught:
        build_parts(3, (64, 32), "resnet50", "conv3", backbone_weights="imagenet")
    assert caught.value is error


# === evaluate: decode errors and other invalid arguments ===

def _pipeline_error(tmp_path, content: bytes):
    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    good.write_bytes(tf.io.encode_png(np.zeros((8, 4, 3), np.uint8)).numpy())
    bad.write_bytes(content)
    try:
        for _ in eval_dataset([str(good), str(bad)], (8, 4), 2):
            pass
    except tf.errors.OpError as error:
        return error
    raise AssertionError("the pipeline decoded a bad file")


def _other_invalid_argument():
    try:
        tf.reshape(tf.zeros(3), (2,))
    except tf.errors.InvalidArgumentError as error:
        return error
    raise AssertionError("reshape accepted 3 values into 2")


def test_decode_errors_are_told_apart_from_other_invalid_arguments(tmp_path):
    for content, reason in ((b"not an image", "Unknown image file format"), (b"", "Input is empty")):
        error = _pipeline_error(tmp_path, content)
        assert is_decode_error(error), error.message
        assert op_error_reason(error).startswith(reason)
        assert "{{" not in op_error_reason(error) and "[Op:" not in op_error_reason(error)
    assert not is_decode_error(_other_invalid_argument())
    assert not is_decode_error(ValueError("DecodeImage"))


def _evaluate_raising(monkeypatch, tmp_path, error):
    import aaa_keras.data.source
    import aaa_keras.run_dir

    trained = types.SimpleNamespace(parts=None, stage="baseline", config=types.SimpleNamespace(data=""))
    monkeypatch.setattr(aaa_keras.run_dir, "load_trained", lambda run_dir, stage, neck_feature=None: trained)
    monkeypatch.setattr(aaa_keras.data.source, "resolve_run_data",
                        lambda data, saved, run_dir, log: str(tmp_path / "data"))
    monkeypatch.setattr(run_lib, "build_embedder", lambda parts: types.SimpleNamespace(compile=lambda **_: None))
    monkeypatch.setattr(run_lib, "load_dataset", lambda root: "dataset")
    monkeypatch.setattr(run_lib, "verify_images", lambda dataset, *args, **kwargs: dataset)

    def extraction_fails(*args):
        raise error

    monkeypatch.setattr(run_lib, "_evaluate_embedder", extraction_fails)
    return run_lib.evaluate_run(str(tmp_path / "run"), log=lambda *_: None)


def test_evaluate_explains_an_image_that_does_not_decode(monkeypatch, tmp_path):
    error = _pipeline_error(tmp_path, b"not an image")
    with pytest.raises(UserError, match=r"an image of .*data does not decode \(Unknown image file format"):
        _evaluate_raising(monkeypatch, tmp_path, error)


def test_evaluate_reraises_another_invalid_argument_unchanged(monkeypatch, tmp_path):
    error = _other_invalid_argument()
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        _evaluate_raising(monkeypatch, tmp_path, error)
    assert caught.value is error


def test_evaluate_logs_the_changed_own_data_warning(monkeypatch, tmp_path):
    import aaa_keras.data.source
    import aaa_keras.run_dir

    lines = []
    monkeypatch.setattr(aaa_keras.data.source, "own_data_changed",
                        lambda config, data, dataset, root: "warning: data changed")
    trained = types.SimpleNamespace(parts=None, stage="baseline", config=types.SimpleNamespace(data=""))
    monkeypatch.setattr(aaa_keras.run_dir, "load_trained", lambda run_dir, stage, neck_feature=None: trained)
    monkeypatch.setattr(aaa_keras.data.source, "resolve_run_data", lambda data, saved, run_dir, log: "data")
    monkeypatch.setattr(run_lib, "build_embedder", lambda parts: types.SimpleNamespace(compile=lambda **_: None))
    monkeypatch.setattr(run_lib, "load_dataset", lambda root: "dataset")
    monkeypatch.setattr(run_lib, "verify_images", lambda dataset, *args, **kwargs: dataset)
    monkeypatch.setattr(run_lib, "_evaluate_embedder", lambda *args: {})
    run_lib.evaluate_run(str(tmp_path / "run"), log=lines.append)
    assert "warning: data changed" in lines
