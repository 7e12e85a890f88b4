"""The Keras internals ``--distribute multiworker`` patches: applied, and refused on another Keras."""

import keras
import pytest
from keras.src.backend.tensorflow import trainer

from aaa_keras import multiworker
from aaa_keras.errors import UserError


@pytest.fixture
def unpatched(monkeypatch):
    """Keras as installed; whatever a test patches is restored afterwards."""
    monkeypatch.setattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build",
                        trainer.TensorFlowTrainer._maybe_symbolic_build)
    monkeypatch.setattr(trainer, "reduce_per_replica", trainer.reduce_per_replica)
    monkeypatch.setattr(multiworker, "_patched", False)


def test_the_patch_replaces_both_keras_internals(unpatched):
    originals = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica
    multiworker.patch_keras_symbolic_build()
    patched = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica
    for original, function in zip(originals, patched):
        assert function is not original
        assert function.__module__ == "aaa_keras.multiworker", function
    assert multiworker._patched


def test_the_installed_keras_is_the_one_the_patch_was_written_for():
    multiworker.check_patchable(keras.__version__, trainer)  # requirements.txt pins it


def test_another_keras_version_is_refused_in_one_line(unpatched, monkeypatch):
    monkeypatch.setattr(keras, "__version__", "3.16.0")
    original = trainer.TensorFlowTrainer._maybe_symbolic_build
    with pytest.raises(UserError) as raised:
        multiworker.patch_keras_symbolic_build()
    message = str(raised.value)
    assert "Keras 3.16.0 is installed" in message and "keras==3.15.*" in message and "\n" not in message
    assert trainer.TensorFlowTrainer._maybe_symbolic_build is original  # nothing patched


def test_a_changed_signature_is_refused_in_one_line(unpatched, monkeypatch):
    def reduce_per_replica(values, strategy, reduction, axis=None):
        return values

    monkeypatch.setattr(trainer, "reduce_per_replica", reduce_per_replica)
    with pytest.raises(UserError) as raised:
        multiworker.patch_keras_symbolic_build()
    message = str(raised.value)
    assert "reduce_per_replica is (values, strategy, reduction, axis=None)" in message
    assert "expects (values, strategy, reduction)" in message and "\n" not in message
    assert trainer.reduce_per_replica is reduce_per_replica


def test_a_missing_function_is_refused(unpatched, monkeypatch):
    monkeypatch.delattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build")
    with pytest.raises(UserError, match="_maybe_symbolic_build is missing"):
        multiworker.check_patchable(keras.__version__, trainer)
