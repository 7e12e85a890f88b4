"""Stage 3's silent contracts (issue 20): what the classifier sees, what the occluded pass
writes into BatchNorm, and that float16 training moves both players."""

import numpy as np
import pytest
import keras
import tensorflow as tf

from aaa_keras.model.attention import build_attention_branch
from aaa_keras.model.backbone import build_parts
from aaa_keras.model.batchnorm import batchnorm_layers
from aaa_keras.model.stages import AdversarialModel, AttentionAssignmentModel, BaselineModel, NetworkLoss

NUM_CLASSES = 4


def _batch(size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (size, 64, 32, 3)).astype(np.float32)
    return tf.constant(images), tf.constant(np.arange(size, dtype=np.int32) % NUM_CLASSES)


def _strong_parts(neck_feature="after", dropout=0.0):
    keras.utils.set_random_seed(0)
    return build_parts(NUM_CLASSES, (64, 32), "tiny_resnet", "conv3", dropout=dropout, bnneck=True,
                       neck_feature=neck_feature)


def _moving_statistics(model):
    return [np.asarray(v).copy() for layer in batchnorm_layers(model)
            for v in (layer.moving_mean, layer.moving_variance)]


@pytest.mark.parametrize("triplet", [True, False])
def test_neck_feature_changes_no_stage_three_loss_probability_or_gate(triplet):
    """``--neck-feature`` chooses the retrieval feature only: the classifier of stage 3 is fed the
    BNNeck's output in both cases (it used to get the pooled feature under ``before``)."""
    values = {}
    for neck_feature in ("after", "before"):
        parts = _strong_parts(neck_feature)
        neck = parts.tail.get_layer("bnneck")  # statistics far from the identity (mean 0, var 1)
        neck.moving_mean.assign(np.linspace(-2.0, 2.0, neck.moving_mean.shape[0]))
        neck.moving_variance.assign(np.linspace(0.05, 3.0, neck.moving_variance.shape[0]))
        classifier = parts.tail.get_layer("classifier")  # confident logits, so p_bf - p_af varies
        classifier.kernel.assign(np.random.default_rng(1).normal(0, 0.5, classifier.kernel.shape))
        attention = build_attention_branch(parts.stem.output.shape[1:], filters=8, seed=0)
        loss = NetworkLoss(0.1, 0.3 if triplet else None)
        model = AdversarialModel(parts, attention, omega=0.0, take_turns=False, loss=loss)
        _, _, values[neck_feature] = model._step(*_batch(), training=False, occluded=tf.constant(True))
    after, before = values["after"], values["before"]
    assert set(after) == set(before)
    for name in ("ce_before", "ce_after", "p_bf", "p_af", "gate_rate", "adversarial_loss", "loss"):
        np.testing.assert_allclose(before[name], after[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert 0.0 < float(np.mean(after["gate_rate"])) < 1.0  # the gate compares real probabilities


def test_the_occluded_pass_leaves_the_moving_statistics_of_the_clean_pass():
    """After an occluded stage-3 step every moving mean / variance equals the one after an
    unabridged step from the same state: inference never sees occluded-batch statistics."""
    keras.utils.set_random_seed(0)
    parts = build_parts(NUM_CLASSES, (64, 32), "tiny_resnet", "conv3", dropout=0.0, bnneck=True)
    attention = build_attention_branch(parts.stem.output.shape[1:], filters=8, seed=0)
    model = AdversarialModel(parts, attention, omega=-1.0, take_turns=True)  # step 0 clean, step 1 occluded
    model.compile(optimizer=keras.optimizers.SGD(0.01))  # no momentum: no optimizer state but the count
    model(tf.zeros((1, 64, 32, 3)))
    variables = parts.network.variables + attention.variables
    initial = [np.asarray(v).copy() for v in variables]
    initial_statistics = _moving_statistics(parts.network)
    metrics = model.train_on_batch(*_batch(), return_dict=True)
    assert metrics["gate_rate"] == 0.0  # step 0: the clean pass alone
    clean = _moving_statistics(parts.network)
    for variable, value in zip(variables, initial):  # back to the same state; the next step is occluded
        variable.assign(value)
    metrics = model.train_on_batch(*_batch(), return_dict=True)
    assert metrics["gate_rate"] > 0  # the occluded pass really ran
    occluded = _moving_statistics(parts.network)
    assert all(not np.array_equal(a, b) for a, b in zip(initial_statistics, clean))  # every BatchNorm moved
    for clean_value, occluded_value in zip(clean, occluded):
        np.testing.assert_array_equal(occluded_value, clean_value)
    # the context manager restores the layers' own momentum
    assert {layer.momentum for layer in batchnorm_layers(parts.network)} == {0.99}


@pytest.fixture
def float16_policy():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def _moved(before, variables):
    return [not np.array_equal(b, np.asarray(v)) for b, v in zip(before, variables)]


@pytest.mark.parametrize("stage", ["baseline", "attention", "adversarial"])
def test_a_mixed_float16_step_of_every_stage_moves_every_player(float16_policy, stage):
    """Under mixed_float16 the attention player's loss must be scaled like the network's: its
    per-position gradients underflow float16 otherwise and the branch does not move."""
    parts = _strong_parts(dropout=0.0)
    attention = build_attention_branch(parts.stem.output.shape[1:], filters=8, seed=0)
    assert parts.stem.output.dtype == "float16"
    if stage == "baseline":
        model, players = BaselineModel(parts, NetworkLoss(0.1, 0.3)), [parts.network]
    elif stage == "attention":
        model, players = AttentionAssignmentModel(parts, attention), [attention]
    else:
        model = AdversarialModel(parts, attention, omega=-1.0, take_turns=False, loss=NetworkLoss(0.1, 0.3))
        players = [parts.network, attention]
    optimizer = keras.optimizers.SGD(1e-3)
    if stage == "adversarial":
        model.compile(optimizer=optimizer, attention_optimizer=keras.optimizers.SGD(1e-3))
        assert isinstance(model.attention_optimizer, keras.optimizers.LossScaleOptimizer)
    else:
        model.compile(optimizer=optimizer)
    model(tf.zeros((1, 64, 32, 3)))
    before = [[np.asarray(v).copy() for v in player.trainable_variables] for player in players]
    metrics = model.train_on_batch(*_batch(), return_dict=True)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    for player, snapshot in zip(players, before):
        moved = _moved(snapshot, player.trainable_variables)
        assert all(moved), f"{player.name}: {moved.count(False)} of {len(moved)} variables did not move"
