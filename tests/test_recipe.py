"""The strong recipe (Bag of Tricks): config, BNNeck, last stride, optimizer, P x K data, train steps."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from aaa_keras import config as config_lib
from aaa_keras.config import make_config
from aaa_keras.errors import UserError
from aaa_keras.model.attention import build_attention_branch
from aaa_keras.model.backbone import build_embedder, build_parts
from aaa_keras.model.stages import AdversarialModel, BaselineModel, NetworkLoss
from aaa_keras.training import AdamL2, WarmupStepDecay, make_optimizer

NUM_CLASSES = 4
# What the paper's recipe leaves each new setting at: the model and training of before.
PAPER_VALUES = dict(recipe="paper", ids_per_batch=0, label_smoothing=0.0, triplet=False, bnneck=False,
                    last_stride=2, optimizer="sgd", warmup_epochs=0, weight_decay=0.0)


def _images(size=8, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (size, 64, 32, 3)).astype(np.float32)


def _pk_batch():
    """2 images of each of the 4 classes, as a P x K batch holds them."""
    return tf.constant(_images()), tf.constant(np.repeat(np.arange(NUM_CLASSES), 2).astype(np.int32))


def _strong_parts():
    keras.utils.set_random_seed(0)
    return build_parts(NUM_CLASSES, (64, 32), "tiny_resnet", "conv3", dropout=0.0, bnneck=True,
                       last_stride=1)


def _strong_config(**overrides):
    return make_config("demo", recipe="strong", backbone="tiny_resnet", image_height=64, image_width=32,
                       **overrides)


def _snapshot(variables):
    return {v.path: v.numpy().copy() for v in variables}


def _changed(before, variables):
    return {v.path for v in variables if not np.array_equal(before[v.path], v.numpy())}


# === Config ===

@pytest.mark.parametrize("preset", list(config_lib.PRESETS))
def test_recipe_paper_changes_nothing_and_a_preset_without_a_recipe_takes_its_own(preset):
    config = make_config(preset, recipe="paper")
    assert {k: getattr(config, k) for k in PAPER_VALUES} == PAPER_VALUES
    assert config.dropout == 0.5 and config.random_erasing is False and config.recipe == "paper"
    default = config_lib.PRESET_RECIPES[preset]
    assert dataclasses.asdict(make_config(preset)) == dataclasses.asdict(make_config(preset, recipe=default))
    assert dataclasses.asdict(make_config(preset, recipe=None)) == dataclasses.asdict(make_config(preset))
    # The demo preset trains with the recipe that measured better on the built-in data; paper with the paper's.
    assert config_lib.PRESET_RECIPES == {"demo": "strong", "paper": "paper"}


def test_a_batch_size_under_pk_batches_sets_the_ids_per_batch():
    assert make_config("demo", batch_size=8).ids_per_batch == 2  # 8 = 2 ids x 4 images
    assert make_config("demo", batch_size=8, images_per_id=2).ids_per_batch == 4
    for bad in (6, 4):  # not a multiple of K = 4; fewer than 2 ids
        with pytest.raises(UserError, match=f"--batch-size {bad} under P x K"):
            make_config("demo", batch_size=bad)


def test_strong_comes_after_the_preset_and_before_explicit_overrides():
    config = make_config("demo", recipe="strong")
    assert config.image_size == (128, 64) and config.backbone == "tiny_resnet"  # the preset's
    # From random init: 10x BoT's lr; with ImageNet weights BoT's own (3.5e-4, 3.5e-5 in stage 3).
    assert (config.optimizer, config.baseline_lr, config.weight_decay) == ("adam", 3.5e-3, 5e-4)
    assert config.adversarial_lr == 3.5e-4
    pretrained = make_config("paper", recipe="strong", backbone_weights="imagenet")
    assert (pretrained.baseline_lr, pretrained.adversarial_lr) == (3.5e-4, 3.5e-5)
    assert (config.bnneck, config.last_stride, config.dropout, config.triplet) == (True, 1, 0.0, True)
    assert (config.label_smoothing, config.random_erasing, config.warmup_epochs) == (0.1, True, 1)
    assert config.batch_size == 4 * 4  # P x K: the demo preset's batch of 16
    assert pretrained.batch_size == 16 * 4  # BoT's
    explicit = make_config("demo", recipe="strong", baseline_lr=1e-3, ids_per_batch=8, bnneck=False,
                           random_erasing=False)
    assert (explicit.baseline_lr, explicit.batch_size, explicit.bnneck, explicit.random_erasing) == \
        (1e-3, 32, False, False)
    plain = make_config("demo", recipe="strong", ids_per_batch=0, triplet=False)
    assert plain.batch_size == 16  # shuffled batches: the preset's batch size


def test_the_recipe_is_saved_in_config_json(tmp_path):
    config_lib.save_config(make_config("demo", recipe="strong"), str(tmp_path))
    assert config_lib.load_config(str(tmp_path)).recipe == "strong"
    assert {"bnneck", "last_stride"} <= set(config_lib.WEIGHT_DEFINING_KEYS)


@pytest.mark.parametrize("overrides, flag", [
    (dict(recipe="bag"), "--recipe"),
    (dict(recipe="strong", batch_size=30), "--batch-size"),
    (dict(recipe="strong", ids_per_batch=4, batch_size=32), "--batch-size"),
    (dict(label_smoothing=1.0), "--label-smoothing"),
    (dict(last_stride=3), "--last-stride"),
    (dict(last_stride=1, backbone="mobilenet_v3_large"), "--last-stride"),
    (dict(optimizer="rmsprop"), "--optimizer"),
    (dict(recipe="paper", triplet=True), "--triplet"),
    (dict(ids_per_batch=1), "--ids-per-batch"),
    (dict(ids_per_batch=4, images_per_id=1), "--images-per-id"),
    (dict(triplet_margin=-0.1), "--triplet-margin"),
    (dict(warmup_epochs=-1), "--warmup-epochs"),
    (dict(weight_decay=-1.0), "--weight-decay"),
    (dict(baseline_lr=0.0), "--baseline-lr"),
])
def test_a_bad_setting_is_a_one_line_error_naming_its_flag(overrides, flag):
    with pytest.raises(UserError, match=flag) as error:
        make_config("demo", **overrides)
    assert "\n" not in str(error.value)


def test_cli_flags_reach_the_config_and_bad_ones_are_refused(monkeypatch, tmp_path):
    import cli
    from aaa_keras import training

    seen = {}
    monkeypatch.setattr(training, "fit", lambda stage, config, run_dir, **kw: seen.update(config=config))
    args = ["fit", "--stage", "baseline", "--run-dir", str(tmp_path), "--no-evaluate", "--recipe", "strong",
            "--last-stride", "2", "--ids-per-batch", "8", "--images-per-id", "2", "--warmup-epochs", "3",
            "--optimizer", "sgd", "--no-random-erasing", "--label-smoothing", "0.2"]
    result = CliRunner().invoke(cli.cli, args)
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert (config.recipe, config.last_stride, config.batch_size, config.warmup_epochs) == ("strong", 2, 16, 3)
    assert (config.optimizer, config.random_erasing, config.label_smoothing, config.bnneck) == \
        ("sgd", False, 0.2, True)
    result = CliRunner().invoke(cli.cli, ["fit", "--run-dir", str(tmp_path), "--recipe", "paper", "--triplet", "--no-evaluate"])
    assert result.exit_code == 2 and "Error: --triplet needs identity-balanced batches" in result.output


def test_ablate_takes_the_recipe_as_a_grid_override():
    from aaa_keras.ablate.grid import config_overrides, grid_settings

    settings = grid_settings("demo", None, "builtin:demo", {"recipe": "strong", "backbone": None})
    assert settings["overrides"] == {"baseline_lr_decay_epochs": 12, "recipe": "strong"}
    config = make_config("demo", **config_overrides(settings["overrides"]))  # as ablate/run.py builds a run
    assert (config.triplet, config.bnneck, config.ids_per_batch, config.baseline_lr_decay_epochs) == (True, True, 4, 12)


# === Model: BNNeck, last stride ===

def test_bnneck_embedder_returns_the_feature_after_the_batchnorm():
    parts = _strong_parts()
    neck = parts.tail.get_layer("bnneck")
    neck.moving_mean.assign(np.linspace(-1, 1, neck.moving_mean.shape[0]))  # not the identity
    neck.moving_variance.assign(np.linspace(0.5, 2, neck.moving_variance.shape[0]))
    images = _images(3)
    pooled, embedding, _ = parts.training_tail(parts.stem(images, training=False), training=False)
    pooled, embedding = pooled.numpy(), embedding.numpy()
    expected = neck(pooled, training=False).numpy()
    np.testing.assert_allclose(embedding, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(pooled, embedding)
    retrieval = build_embedder(parts)(images).numpy()
    np.testing.assert_allclose(retrieval, expected / np.linalg.norm(expected, axis=1, keepdims=True),
                               rtol=1e-4, atol=1e-5)
    assert parts.tail.get_layer("classifier").use_bias is False
    assert neck.center is False  # BoT freezes its shift at 0


def test_neck_feature_before_retrieves_with_the_pooled_feature_from_the_same_weights(tiny_data, tmp_path):
    """BoT's TEST.NECK_FEAT: ``before`` is the int8-robust choice (docs/deployment.md)."""
    from aaa_keras import training
    from aaa_keras.run_dir import load_trained

    config = make_config("demo", recipe="strong", data=tiny_data, image_height=64, image_width=32, epochs=1,
                         ids_per_batch=2, images_per_id=2, steps_per_epoch=2, precise_bn_batches=2)
    training.fit("baseline", config, str(tmp_path), log=lambda message: None)
    after, before = load_trained(str(tmp_path)), load_trained(str(tmp_path), neck_feature="before")
    assert before.config.neck_feature == "before" and after.config.neck_feature == "after"
    images = _images(3)
    features = after.parts.stem(images, training=False)
    pooled, embedding, _ = after.parts.training_tail(features, training=False)
    np.testing.assert_allclose(before.parts.tail(features, training=False)[0].numpy(), pooled.numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after.parts.tail(features, training=False)[0].numpy(), embedding.numpy(),
                               rtol=1e-5, atol=1e-6)
    for a, b in zip(after.parts.network.weights, before.parts.network.weights):
        assert a.path == b.path and np.array_equal(a.numpy(), b.numpy())
    with pytest.raises(UserError, match="--neck-feature"):
        load_trained(str(tmp_path), neck_feature="middle")


def test_last_stride_one_keeps_conv5_at_conv4_resolution_with_the_same_variables():
    shapes, names = {}, {}
    for last_stride in (2, 1):
        parts = build_parts(NUM_CLASSES, (64, 32), "tiny_resnet", "conv5", last_stride=last_stride)
        shapes[last_stride] = tuple(parts.stem.output.shape[1:3])
        names[last_stride] = sorted((v.path, tuple(v.shape)) for v in parts.network.weights)
    assert shapes == {2: (4, 2), 1: (8, 4)}  # tiny_resnet: conv5 at stride 16, or 8
    assert names[1] == names[2]


def test_last_stride_one_on_resnet50():
    parts = build_parts(NUM_CLASSES, (128, 64), "resnet50", "conv5", last_stride=1)
    assert tuple(parts.stem.output.shape[1:]) == (8, 4, 2048)  # stride 16, not 32


# === Optimizer ===

def test_warmup_rises_linearly_from_a_tenth_then_steps_down():
    schedule = WarmupStepDecay(1.0, decay_steps=40, decay_rate=0.1, warmup_steps=10)
    rates = [float(schedule(step)) for step in (0, 5, 10, 39, 40, 80)]
    np.testing.assert_allclose(rates, [0.1, 0.55, 1.0, 1.0, 0.1, 0.01], rtol=1e-6)
    assert WarmupStepDecay.from_config(schedule.get_config()).get_config() == schedule.get_config()


def test_strong_optimizers_are_adam_with_l2_for_the_network_and_the_papers_for_the_attention():
    config = _strong_config()
    for stage in ("baseline", "adversarial"):
        optimizer = make_optimizer(config, stage, 10)
        assert isinstance(optimizer, AdamL2) and optimizer.l2 == 5e-4
        assert isinstance(optimizer._learning_rate, WarmupStepDecay)
    for stage, player in (("attention", "network"), ("adversarial", "attention")):
        optimizer = make_optimizer(config, stage, 10, player)
        assert type(optimizer) is keras.optimizers.SGD and optimizer.weight_decay is None
    paper = make_optimizer(make_config("demo", recipe="paper"), "baseline", 10)
    assert type(paper) is keras.optimizers.SGD
    assert isinstance(paper._learning_rate, keras.optimizers.schedules.ExponentialDecay)


def test_adam_l2_adds_l2_times_the_weight_to_the_gradient():
    weight, gradient = np.array([1.0, -2.0, 3.0], np.float32), np.array([0.5, 0.1, -0.3], np.float32)
    with_l2, reference = tf.Variable(weight), tf.Variable(weight)
    AdamL2(l2=0.1, learning_rate=0.01).apply([tf.constant(gradient)], [with_l2])
    keras.optimizers.Adam(learning_rate=0.01, epsilon=1e-7).apply([tf.constant(gradient + 0.1 * weight)],
                                                                   [reference])
    np.testing.assert_allclose(with_l2.numpy(), reference.numpy(), rtol=1e-6)
    copy = AdamL2.from_config(AdamL2(l2=0.1).get_config())
    assert copy.l2 == 0.1


# === Train steps under strong ===

def test_a_strong_stage_one_step_trains_every_variable_with_both_losses():
    parts = _strong_parts()
    model = BaselineModel(parts, NetworkLoss(0.1, 0.3))
    model.compile(optimizer=make_optimizer(_strong_config(), "baseline", 2))
    model(tf.zeros((1, 64, 32, 3)))
    before = _snapshot(model.trainable_variables)
    metrics = model.train_on_batch(*_pk_batch(), return_dict=True)
    assert {"loss", "accuracy", "cross_entropy", "triplet_loss"} == set(metrics)
    assert metrics["loss"] == pytest.approx(metrics["cross_entropy"] + metrics["triplet_loss"], rel=1e-5)
    assert metrics["triplet_loss"] > 0 and np.isfinite(metrics["loss"])
    assert _changed(before, model.trainable_variables) == set(before)


def test_a_strong_stage_three_step_trains_the_network_and_the_attention_branch():
    parts = _strong_parts()
    attention = build_attention_branch(parts.stem.output.shape[1:], filters=8, seed=0)
    config = _strong_config()
    model = AdversarialModel(parts, attention, omega=-1.0, take_turns=False, loss=NetworkLoss(0.1, 0.3))
    model.compile(optimizer=make_optimizer(config, "adversarial", 2),
                  attention_optimizer=make_optimizer(config, "adversarial", 2, "attention"))
    model(tf.zeros((1, 64, 32, 3)))
    network_before = _snapshot(parts.network.trainable_variables)
    attention_before = _snapshot(attention.trainable_variables)
    metrics = model.train_on_batch(*_pk_batch(), return_dict=True)
    assert _changed(network_before, parts.network.trainable_variables) == set(network_before)
    assert _changed(attention_before, attention.trainable_variables)
    for key in ("triplet_loss", "ce_before", "ce_after", "adversarial_loss", "gate_rate"):
        assert np.isfinite(metrics[key]), key
    assert metrics["triplet_loss"] > 0


# === P x K data ===

def test_the_pk_training_dataset_yields_p_ids_times_k_images_per_batch(tiny_data):
    from aaa_keras.data.layouts import load_dataset
    from aaa_keras.data.pipeline import train_dataset

    dataset = load_dataset(tiny_data)
    records = dataset.train_identities()
    labels, _ = dataset.relabel(records)
    data = train_dataset([r.path for r in records], labels, (64, 32), 6, seed=0, ids_per_batch=2,
                         images_per_id=3)
    for images, batch_labels in data.take(3).as_numpy_iterator():
        assert images.shape == (6, 64, 32, 3) and images.dtype == np.float32
        groups = batch_labels.reshape(2, 3)
        assert len(set(groups[:, 0])) == 2 and (groups == groups[:, :1]).all()
    with pytest.raises(ValueError, match="batch_size 8"):
        train_dataset([r.path for r in records], labels, (64, 32), 8, ids_per_batch=2, images_per_id=3)


def test_random_erasing_fills_with_the_mean_colour_inside_the_pixel_range(tiny_data):
    """keras' default fill is N(0, 1) x 255: pixels far outside [0, 255] that skewed BatchNorm."""
    from aaa_keras.data.layouts import load_dataset
    from aaa_keras.data.pipeline import ERASING_FILL, train_dataset

    dataset = load_dataset(tiny_data)
    records = dataset.train_identities()
    labels, _ = dataset.relabel(records)
    paths = [r.path for r in records]
    erased = next(iter(train_dataset(paths, labels, (64, 32), 8, seed=3, random_erasing_probability=1.0)))[0]
    plain = next(iter(train_dataset(paths, labels, (64, 32), 8, seed=3)))[0]
    erased, plain = np.asarray(erased), np.asarray(plain)
    assert erased.min() >= 0.0 and erased.max() <= 255.0
    changed = np.any(erased != plain, axis=-1)  # (batch, H, W): the erased pixels
    assert changed.reshape(8, -1).any(axis=1).all()  # probability 1: every image has a rectangle
    assert np.allclose(erased[changed], ERASING_FILL, atol=1e-3)


def test_fit_trains_a_strong_baseline_on_pk_batches(tiny_data, tmp_path):
    from aaa_keras import training
    from aaa_keras.run_dir import read_done

    config = make_config("demo", recipe="strong", data=tiny_data, backbone="tiny_resnet", image_height=64,
                         image_width=32, epochs=1, ids_per_batch=2, images_per_id=2)
    messages = []
    training.fit("baseline", config, str(tmp_path), log=messages.append)
    done = read_done(str(tmp_path), "baseline")
    assert done["steps_per_epoch"] == 10  # 40 training images in chunks of K = 2, P = 2 a batch: one pass
    assert done["settings"]["triplet"] is True and done["settings"]["optimizer"] == "adam"
    assert "triplet_loss" in done["final_metrics"]
    assert any("P x K = 2 ids x 2 images" in str(m) for m in messages)
    assert any("precise BatchNorm over 50 training batches" in str(m) for m in messages)
    assert done["precise_bn_variance_ratio"] > 0 and done["settings"]["precise_bn_batches"] == 50


def test_precise_batchnorm_sets_the_mean_of_the_batch_statistics_and_reports_how_far_off_they_were():
    from aaa_keras.model.batchnorm import recompute_batchnorm

    inputs = keras.Input((4,))
    network = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.99)(inputs))
    norm = network.layers[-1]
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc, scale, (32, 4)).astype("float32") for loc, scale in ((0, 1), (2, 3), (-1, 2))]
    norm.moving_variance.assign(np.full(4, 50.0, "float32"))  # stale running averages
    ratio = recompute_batchnorm(network, batches)
    expected_variance = np.mean([b.var(axis=0) for b in batches], axis=0)
    np.testing.assert_allclose(np.asarray(norm.moving_mean), np.mean([b.mean(axis=0) for b in batches], axis=0),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(norm.moving_variance), expected_variance, rtol=1e-4)
    assert ratio == pytest.approx(float(np.median(50.0 / expected_variance)), rel=1e-4)
    assert norm.momentum == 0.99  # restored
    assert recompute_batchnorm(network, []) is None


def test_strong_recipe_keeps_last_stride_two_where_the_backbone_has_no_stride_one():
    """BoT's last stride 1 is a ResNet change: the strong recipe applies it to resnet50 and
    tiny_resnet only, and an explicit --last-stride 1 on another backbone is still refused."""
    assert make_config("demo", recipe="strong").last_stride == 1
    assert make_config("demo", recipe="strong", backbone="mobilenet_v3_large").last_stride == 2
    with pytest.raises(UserError, match="last"):
        make_config("demo", recipe="strong", backbone="efficientnet_b0", last_stride=1)
