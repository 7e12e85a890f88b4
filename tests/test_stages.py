"""Which variables each stage's train_step changes, and that steps learn."""

import numpy as np
import pytest
import keras
import tensorflow as tf

from aaa_keras.model.attention import build_attention_branch
from aaa_keras.model.backbone import build_parts
from aaa_keras.model.occlusion import top_fraction_mask
from aaa_keras.model.stages import AdversarialModel, AttentionAssignmentModel, BaselineModel

NUM_CLASSES = 5


def _batch(seed=0, size=8):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (size, 64, 32, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size).astype(np.int32)
    return tf.constant(images), tf.constant(labels)


def _parts():
    keras.utils.set_random_seed(0)
    parts = build_parts(NUM_CLASSES, (64, 32), "tiny_resnet", "conv3", dropout=0.0)
    attention = build_attention_branch(parts.stem.output.shape[1:], filters=8, seed=0)
    return parts, attention


def _compile(model, lr=0.05):
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9))
    model(tf.zeros((1, 64, 32, 3)))
    return model


def _snapshot(variables):
    return {v.path: v.numpy().copy() for v in variables}


def _changed(before, variables):
    return {v.path for v in variables if not np.array_equal(before[v.path], v.numpy())}


def test_baseline_step_lowers_the_loss_and_changes_every_trainable_variable():
    parts, _ = _parts()
    model = _compile(BaselineModel(parts))
    images, labels = _batch()
    before = _snapshot(model.trainable_variables)
    losses = [float(model.train_on_batch(images, labels, return_dict=True)["loss"]) for _ in range(8)]
    assert losses[-1] < losses[0]
    assert _changed(before, model.trainable_variables) == set(before)


def test_attention_stage_trains_only_the_attention_branch():
    parts, attention = _parts()
    model = _compile(AttentionAssignmentModel(parts, attention, grid_size=4))
    assert {id(v) for v in model.trainable_variables} == {id(v) for v in attention.trainable_variables}
    frozen = parts.stem.variables + parts.tail.variables  # weights and BatchNorm statistics
    frozen_before = _snapshot(frozen)
    attention_before = _snapshot(attention.trainable_variables)
    images, labels = _batch()
    for _ in range(2):
        metrics = model.train_on_batch(images, labels, return_dict=True)
    assert _changed(frozen_before, frozen) == set()
    assert _changed(attention_before, attention.trainable_variables) == set(attention_before)
    assert {"loss", "attention_loss", "regularization_loss"} <= set(metrics)


@pytest.mark.parametrize("take_turns", [False, True])
def test_adversarial_stage_changes_stem_tail_classifier_and_attention(take_turns):
    parts, attention = _parts()
    # omega = -1 opens the gate for every sample, so the attention branch must move
    model = _compile(AdversarialModel(parts, attention, omega=-1.0, take_turns=take_turns))
    groups = {
        "stem": parts.stem.trainable_variables,
        "tail": [v for v in parts.tail.trainable_variables if "classifier" not in v.path],
        "classifier": [v for v in parts.tail.trainable_variables if "classifier" in v.path],
        "attention": attention.trainable_variables,
    }
    before = {name: _snapshot(variables) for name, variables in groups.items()}
    images, labels = _batch()
    metrics = model.train_on_batch(images, labels, return_dict=True)  # step 0: unabridged if take_turns
    if take_turns:
        assert _changed(before["attention"], groups["attention"]) == set()
        assert metrics["gate_rate"] == 0.0  # no occluded step has been taken yet
        metrics = model.train_on_batch(images, labels, return_dict=True)
    for name, variables in groups.items():
        assert _changed(before[name], variables), f"{name} did not change"
    assert metrics["gate_rate"] == pytest.approx(1.0)
    for key in ("p_bf", "p_af", "ce_before", "ce_after", "adversarial_loss", "attention_loss",
                "regularization_loss", "accuracy"):
        assert np.isfinite(metrics[key]), key


def test_closed_gate_leaves_the_attention_branch_unchanged():
    parts, attention = _parts()
    model = _compile(AdversarialModel(parts, attention, omega=2.0, take_turns=False))
    before = _snapshot(attention.trainable_variables)
    metrics = model.train_on_batch(*_batch(), return_dict=True)
    assert metrics["gate_rate"] == 0.0
    assert _changed(before, attention.trainable_variables) == set()


def test_attention_branch_is_bit_identical_after_an_unabridged_step():
    # its own optimizer: after an occluded step has built momentum, the unabridged step
    # (attention loss off) must not move the branch (a shared SGD would, by momentum)
    parts, attention = _parts()
    model = _compile(AdversarialModel(parts, attention, omega=-1.0, take_turns=True))
    images, labels = _batch()
    model.train_on_batch(images, labels)  # step 0: unabridged
    model.train_on_batch(images, labels)  # step 1: occluded, the branch moves
    before = _snapshot(attention.trainable_variables)
    network_before = _snapshot(parts.network.trainable_variables)
    model.train_on_batch(images, labels)  # step 2: unabridged
    assert _changed(before, attention.trainable_variables) == set()
    assert _changed(network_before, parts.network.trainable_variables)  # the network did move
    assert model.attention_optimizer is not model.optimizer
    assert int(model.attention_optimizer.iterations) == 1


class _NoOcclusion(AdversarialModel):
    """Stage 3 whose occluded pass is the clean pass (a mask of ones)."""

    def _occluded_terms(self, *args):
        import aaa_keras.model.stages as stages

        original = stages.top_fraction_mask
        stages.top_fraction_mask = lambda scores, fraction: tf.ones_like(scores)
        try:
            return super()._occluded_terms(*args)
        finally:
            stages.top_fraction_mask = original


def test_gate_does_not_fire_on_dropout_noise():
    keras.utils.set_random_seed(0)
    parts = build_parts(NUM_CLASSES, (64, 32), "tiny_resnet", "conv3", dropout=0.5)
    attention = build_attention_branch(parts.stem.output.shape[1:], filters=8, seed=0)
    model = _compile(_NoOcclusion(parts, attention, omega=0.0, take_turns=False, seed=0))
    metrics = model.train_on_batch(*_batch(size=16), return_dict=True)
    assert metrics["p_bf"] == pytest.approx(metrics["p_af"], rel=1e-5)
    assert metrics["gate_rate"] == 0.0


def test_response_mask_occludes_the_top_third_of_the_channel_mean():
    parts, _ = _parts()
    model = AdversarialModel(parts, None, mask="response")
    features = parts.stem(_batch()[0])
    scores = model._mask_scores(features, training=False).numpy()[..., 0]
    mask = top_fraction_mask(scores[..., None]).numpy()[..., 0]
    response = features.numpy().mean(axis=-1)
    positions = response[0].size
    k = int(np.ceil(positions / 3))
    for sample_mask, sample_response in zip(mask, response):
        top = np.argsort(-sample_response.ravel(), kind="stable")[:k]
        expected = np.ones(positions, np.float32)
        expected[top] = 0.0
        np.testing.assert_array_equal(sample_mask.ravel(), expected)


@pytest.mark.parametrize("mask", ["response", "random"])
def test_response_and_random_masks_train_without_an_attention_branch(mask):
    parts, _ = _parts()
    model = _compile(AdversarialModel(parts, None, mask=mask, take_turns=False, seed=0))
    assert model.attention is None and model.attention_optimizer is None
    before = _snapshot(parts.network.trainable_variables)
    metrics = model.train_on_batch(*_batch(), return_dict=True)
    assert _changed(before, parts.network.trainable_variables)
    assert "gate_rate" not in metrics and np.isfinite(metrics["ce_after"])
