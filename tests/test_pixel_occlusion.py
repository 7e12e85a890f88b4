"""Stage 3's occlusion in pixel space (issue 21 item 2, ``--occlusion-space pixel``).

The region the stage-3 mask marks, upsampled to the image, is covered with another identity of
the batch; the rest of the image stays bit-identical; the occluded image goes through the whole
network; the feature-space path (the default) is unchanged. Eager, tiny network, a few seconds.
"""

import numpy as np
import keras
import pytest
import tensorflow as tf
from click.testing import CliRunner

from aaa_keras import config as config_lib
from aaa_keras import run_dir as run_dir_lib
from aaa_keras.errors import RunDirError, UserError
from aaa_keras.model import pixel_occlusion, stages
from aaa_keras.model.attention import build_attention_branch
from aaa_keras.model.backbone import build_parts
from aaa_keras.model.batchnorm import batchnorm_layers
from aaa_keras.model.occlusion import top_fraction_mask, true_class_probability
from aaa_keras.model.pixel_occlusion import MEAN_FILL, donor_indices, occlude_images, upsample_mask
from aaa_keras.model.stages import AdversarialModel

NUM_CLASSES = 4
SIZE = (64, 32)


def _parts(seed=0):
    keras.utils.set_random_seed(seed)
    parts = build_parts(NUM_CLASSES, SIZE, "tiny_resnet", "conv3", dropout=0.0)
    return parts, build_attention_branch(parts.stem.output.shape[1:], filters=8, seed=seed)


def _batch(size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (size, *SIZE, 3)).astype(np.float32)
    return tf.constant(images), tf.constant(np.arange(size, dtype=np.int32) % NUM_CLASSES)


def _keep_mask(batch, height, width, seed=0):
    """Stage 3's B: 0 at the top third of random scores."""
    scores = np.random.default_rng(seed).uniform(size=(batch, height, width, 1)).astype(np.float32)
    return top_fraction_mask(tf.constant(scores)).numpy()


@pytest.mark.parametrize("image_size, map_size", [((64, 32), (16, 8)), ((30, 14), (8, 4))])
def test_pixel_occlusion_covers_exactly_the_upsampled_region_and_nothing_else(image_size, map_size):
    """Each feature position owns a block of pixels (floor(r * h / H)); exactly the blocks of the
    occluded positions take the donor's pixels, every other pixel is the input's, bit for bit."""
    (height, width), (h, w) = image_size, map_size
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (6, height, width, 3)).astype(np.float32)
    keep = _keep_mask(6, h, w)
    donors = np.array([1, 2, 3, 4, 5, 0], np.int32)
    occluded, region = occlude_images(tf.constant(images), tf.constant(keep), tf.constant(donors))
    occluded, region = occluded.numpy(), region.numpy()[..., 0]
    rows = np.minimum(np.arange(height) * h // height, h - 1)
    cols = np.minimum(np.arange(width) * w // width, w - 1)
    expected = keep[:, rows][:, :, cols][..., 0] == 0  # the marked cells, upsampled by hand
    np.testing.assert_array_equal(region, expected)
    if height % h == 0 and width % w == 0:  # stride divides: exact s x s blocks (np.kron)
        block = np.ones((height // h, width // w))
        np.testing.assert_array_equal(region, np.stack([np.kron(1 - k[..., 0], block) for k in keep]) == 1)
    assert region.mean() == pytest.approx((keep == 0).mean(), abs=0.02)
    np.testing.assert_array_equal(occluded[~region], images[~region])  # the rest bit-identical
    np.testing.assert_array_equal(occluded[region], images[donors][region])  # the donor's pixels there
    assert upsample_mask(tf.constant(keep), height, width).shape == (6, height, width, 1)


def test_the_occluder_is_another_identity_of_the_batch_or_the_mean_colour():
    labels = tf.constant(np.repeat(np.arange(4), 4).astype(np.int32))  # P x K = 4 x 4
    seen = set()
    for seed in range(5):
        donors = donor_indices(labels, seed).numpy()
        assert (donors >= 0).all()
        assert (labels.numpy()[donors] != labels.numpy()).all()  # never the same identity
        seen.update(zip(range(16), donors))
    assert len(seen) > 32  # drawn per call, not a fixed neighbour (a fixed map gives 16 pairs)
    alone = donor_indices(tf.constant([3, 3, 3], tf.int32), 0).numpy()  # no other identity in the batch
    np.testing.assert_array_equal(alone, [-1, -1, -1])
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (3, 8, 4, 3)).astype(np.float32))
    keep = np.ones((3, 2, 1, 1), np.float32)
    keep[:, 0] = 0.0
    occluded, region = occlude_images(images, tf.constant(keep), tf.constant(alone))
    np.testing.assert_array_equal(occluded.numpy()[region.numpy()[..., 0]],
                                  np.broadcast_to(np.float32(MEAN_FILL), (3 * 4 * 4, 3)))


def _fixed_donors(monkeypatch):
    donors = lambda labels, seed: tf.roll(tf.range(tf.shape(labels)[0]), 1, axis=0)  # noqa: E731
    monkeypatch.setattr(stages, "donor_indices", donors)
    return donors


def test_the_pixel_pass_classifies_the_occluded_image_and_the_feature_pass_f_times_b(monkeypatch):
    """p_af is softmax(tail(stem(x occluded in pixels)))[y] in pixel space and softmax(tail(f * B))[y]
    in feature space (the default, unchanged); both with the same mask B of M_att."""
    parts, attention = _parts()
    images, labels = _batch()
    donors = _fixed_donors(monkeypatch)(labels, None)
    features = parts.stem(images, training=False)
    keep = top_fraction_mask(attention(features, training=False))
    by_pixels = parts.training_tail(parts.stem(occlude_images(images, keep, donors)[0], training=False),
                                    training=False)[2]
    by_features = parts.training_tail(features * keep, training=False)[2]
    values = {}
    for space in ("pixel", "feature", None):
        kwargs = {} if space is None else {"occlusion_space": space}
        model = AdversarialModel(parts, attention, omega=0.0, take_turns=False, seed=0, **kwargs)
        values[space] = model._step(images, labels, training=False, occluded=tf.constant(True))[2]
    np.testing.assert_allclose(values["pixel"]["p_af"], true_class_probability(by_pixels, labels), rtol=1e-5)
    np.testing.assert_allclose(values["feature"]["p_af"], true_class_probability(by_features, labels), rtol=1e-5)
    for name in values["feature"]:  # the default is the feature space, value for value
        np.testing.assert_array_equal(values[None][name], values["feature"][name], err_msg=name)
    assert not np.allclose(values["pixel"]["p_af"], values["feature"]["p_af"])
    np.testing.assert_array_equal(values["pixel"]["p_bf"], values["feature"]["p_bf"])  # the clean pass
    assert config_lib.RunConfig().occlusion_space == "feature"


def _moving_statistics(network):
    return [np.asarray(v).copy() for layer in batchnorm_layers(network)
            for v in (layer.moving_mean, layer.moving_variance)]


def test_a_pixel_space_step_moves_both_players_and_writes_only_clean_statistics():
    """An occluded stage-3 step in pixel space (eager) moves every variable of the network and of
    the attention branch, and its BatchNorm moving statistics equal those of the clean pass alone."""
    parts, attention = _parts()
    model = AdversarialModel(parts, attention, omega=-1.0, take_turns=True, seed=0, occlusion_space="pixel")
    model.compile(optimizer=keras.optimizers.SGD(0.01), attention_optimizer=keras.optimizers.SGD(0.05))
    model(tf.zeros((1, *SIZE, 3)))
    data = _batch()
    players = [parts.network.trainable_variables, attention.trainable_variables]
    everything = parts.network.variables + attention.variables
    initial = [np.asarray(v).copy() for v in everything]
    metrics = model.train_step(data)  # step 0: unabridged, the clean pass alone
    assert float(metrics["gate_rate"]) == 0.0
    clean = _moving_statistics(parts.network)
    for variable, value in zip(everything, initial):
        variable.assign(value)
    before = [[np.asarray(v).copy() for v in player] for player in players]
    metrics = model.train_step(data)  # step 1: occluded in pixel space
    assert float(metrics["gate_rate"]) > 0 and np.isfinite(float(metrics["ce_after"]))
    for name, player, snapshot in zip(("network", "attention"), players, before):
        still = [v.path for v, b in zip(player, snapshot) if np.array_equal(np.asarray(v), b)]
        assert not still, f"{name}: {len(still)} variables did not move: {still[:3]}"
    for clean_value, occluded_value in zip(clean, _moving_statistics(parts.network)):
        np.testing.assert_array_equal(occluded_value, clean_value)
    assert {layer.momentum for layer in batchnorm_layers(parts.network)} == {0.99}


def test_the_random_mask_control_works_in_pixel_space():
    parts, _ = _parts()
    model = AdversarialModel(parts, None, mask="random", take_turns=False, seed=0, occlusion_space="pixel")
    images, labels = _batch()
    values = model._step(images, labels, training=True, occluded=tf.constant(True))[2]
    assert np.isfinite(values["ce_after"]).all()
    assert not np.allclose(values["p_af"], values["p_bf"])  # the occlusion changed the input


def test_the_option_is_validated_shown_and_recorded_with_the_stage(finished_stage):
    import cli

    with pytest.raises(UserError, match="occlusion-space"):
        config_lib.validate(config_lib.RunConfig(occlusion_space="pixels"))
    help_text = CliRunner().invoke(cli.cli, ["fit", "--help"]).output
    assert "--occlusion-space" in help_text and "[default: feature]" in " ".join(help_text.split())
    assert "occlusion_space" in run_dir_lib.STAGE_SETTINGS["adversarial"]
    trained = config_lib.RunConfig(occlusion_space="pixel")
    run_dir = finished_stage(trained)
    run_dir_lib.check_finished_stages(trained, run_dir, ["adversarial"])  # the same: accepted
    with pytest.raises(RunDirError, match="occlusion_space: trained with 'pixel', requested 'feature'"):
        run_dir_lib.check_finished_stages(config_lib.RunConfig(), run_dir, ["adversarial"])
