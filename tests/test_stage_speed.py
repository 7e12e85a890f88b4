"""Issue 22.1-2: stage 2's targets searched once per view, stage 3's only where the gate is open.

Both are claimed exact: the cached table holds what a fresh grid search gives, and stage 3's
gated search changes no loss or gradient, its target still coming from the current network.
"""

import numpy as np
import keras
import pytest
import tensorflow as tf

from aaa_keras import attention_targets, config
from aaa_keras.model import stages
from aaa_keras.model.attention import build_attention_branch
from aaa_keras.model.backbone import build_parts
from aaa_keras.model.diagnostics import AttentionDiagnostics, attention_diagnostics
from aaa_keras.model.occlusion import hardest_occlusion, occlusion_target, sample_open_gates
from aaa_keras.model.stages import AdversarialModel, AttentionAssignmentModel

NUM_CLASSES = 5
SIZE = (64, 32)


def _parts(seed=0):
    keras.utils.set_random_seed(seed)
    parts = build_parts(NUM_CLASSES, SIZE, "tiny_resnet", "conv3", dropout=0.0)
    attention = build_attention_branch(parts.stem.output.shape[1:], filters=8, seed=seed)
    return parts, attention


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Six left-right asymmetric images (so a flip changes the search) and their labels."""
    directory = tmp_path_factory.mktemp("views")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        image = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
        image[:, : SIZE[1] // 2] //= 3  # a dark left half
        path = str(directory / f"{i}.png")
        tf.io.write_file(path, tf.io.encode_png(image))
        paths.append(path)
    return paths, np.array([0, 1, 2, 3, 4, 0], np.int32)


@pytest.fixture(scope="module")
def stage2(image_files):
    paths, labels = image_files
    parts, attention = _parts()
    model = AttentionAssignmentModel(parts, attention, attention_loss="soft")
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    table = attention_targets.target_table(model, paths, labels, SIZE, batch_size=5)  # batches cross images
    model.set_target_table(table)
    return model, table


def _view(paths, view):
    image = attention_targets.decode_image(paths[view // 2], SIZE)
    return attention_targets.view_image(image, view % 2)


def test_the_cached_table_holds_a_fresh_search_of_every_view(image_files, stage2):
    paths, labels = image_files
    model, table = stage2
    assert table.shape == (2 * len(paths), 16)
    views = np.arange(len(table))
    fresh = np.asarray(model.cell_probabilities(tf.stack([_view(paths, v) for v in views]), labels[views // 2]))
    assert attention_targets.relative_difference(fresh, table) < 1e-3
    np.testing.assert_array_equal(fresh.argmin(axis=1), table.argmin(axis=1))
    assert attention_targets.relative_difference(table[0::2], table[1::2]) > 0.1  # the two views differ


def test_the_view_dataset_flips_exactly_the_images_its_view_index_names(image_files):
    paths, labels = image_files
    seen = []
    for (images, views), batch_labels in attention_targets.view_dataset(paths, labels, SIZE, 6, seed=3).take(3):
        assert sorted(views.numpy() // 2) == list(range(6))  # an epoch: every image once
        for image, view, label in zip(images.numpy(), views.numpy(), batch_labels.numpy()):
            np.testing.assert_array_equal(image, _view(paths, view).numpy())
            assert label == labels[view // 2]
            seen.append(view)
    assert set(np.array(seen) % 2) == {0, 1}  # both views occur


def test_a_cached_step_computes_the_loss_of_a_searching_step(image_files, stage2):
    paths, labels = image_files
    model, table = stage2
    views = tf.constant([0, 3, 4, 9, 11])
    images = tf.stack([_view(paths, int(v)) for v in views])
    view_labels = tf.constant(labels[views.numpy() // 2])
    cached, cached_values = model._step((images, views), view_labels, training=False)
    searched, searched_values = model._step(images, view_labels, training=False)
    np.testing.assert_allclose(cached.numpy(), searched.numpy(), rtol=1e-4)
    assert attention_targets.relative_difference(cached_values["hardest_cell_probability"],
                                                 searched_values["hardest_cell_probability"]) < 1e-3


def test_a_stale_table_is_caught_after_the_stage(image_files, stage2):
    paths, labels = image_files
    model, table = stage2
    assert attention_targets.verify_target_table(model, table, paths, labels, SIZE, sample=12) == 12
    with pytest.raises(AssertionError, match="stale"):  # another network's, or misordered
        attention_targets.verify_target_table(model, table[::-1].copy(), paths, labels, SIZE, sample=12)


def _adversarial(targets, omega=0.0):
    parts, attention = _parts(seed=1)
    return AdversarialModel(parts, attention, omega=omega, take_turns=False, targets=targets,
                            attention_loss="soft", seed=0)


def _batch(seed=0, size=8):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.uniform(0, 255, (size, *SIZE, 3)).astype(np.float32)),
            tf.constant(rng.integers(0, NUM_CLASSES, size).astype(np.int32)))


def test_stage_three_targets_come_from_the_current_network_where_the_gate_is_open():
    model = _adversarial("gated")
    images, labels = _batch()
    gate = tf.constant([1, 0, 1, 1, 0, 0, 1, 0], tf.float32)
    open_ = gate.numpy() > 0
    targets = []
    for moved in (False, True):  # before and after the network moved
        if moved:
            for variable in model.parts.network.trainable_variables:
                variable.assign(variable * 1.5)
        features = model.stem(images, training=True)
        target = model._occlusion_target(features, labels, gate).numpy()
        _, p, k = hardest_occlusion(lambda f: model.tail(f, training=False)[1], features, labels)
        expected = occlusion_target("soft", p, k, features.shape[1], features.shape[2]).numpy()
        np.testing.assert_allclose(target[open_], expected[open_], atol=1e-6)
        assert not target[~open_].any()
        targets.append(target)
    assert np.abs(targets[1] - targets[0]).max() > 1e-3  # the target followed the network


def test_stage_three_gated_search_gives_the_losses_and_gradients_of_the_search_of_every_sample():
    """Eagerly, one occluded step of each (no tracing: this is a cheap test)."""
    images, labels = _batch(seed=2)
    results = {}
    for targets in ("gated", "all"):
        model = _adversarial(targets)
        variables = model.parts.network.trainable_variables + model.attention.trainable_variables
        with tf.GradientTape(persistent=True) as tape:
            network_loss, attention_player_loss, values = model._step(
                images, labels, training=True, occluded=tf.constant(True))
            totals = (tf.reduce_sum(network_loss), tf.reduce_sum(attention_player_loss))
        gradients = [g for total in totals for g in tape.gradient(total, variables)]
        results[targets] = (values, gradients)
    (gated, gated_gradients), (every, every_gradients) = results["gated"], results["all"]
    gate = gated["gate_rate"].numpy()
    assert 0 < gate.mean() < 1  # some gates open, some closed: the gather and scatter really ran
    for name in ("adversarial_loss", "regularization_loss", "gate_rate", "ce_after"):
        np.testing.assert_allclose(gated[name], every[name], rtol=1e-5, atol=1e-7, err_msg=name)
    open_ = gate > 0  # the logged attention_loss is averaged over these
    np.testing.assert_allclose(gated["attention_loss"].numpy()[open_], every["attention_loss"].numpy()[open_],
                               rtol=1e-5)
    for a, b in zip(gated_gradients, every_gradients):
        if a is None:
            assert b is None
        else:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


def test_sampled_gates_are_open_ones_and_their_weights_average_to_the_gate():
    """``weight = drawn / P(drawn)`` makes the sampled search's gradient the gated one in expectation."""
    gate = tf.constant([1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 0], tf.float32)  # 7 open
    seed = keras.random.SeedGenerator(0)
    draws = np.stack([np.stack([d.numpy() for d in sample_open_gates(gate, 3, seed)]) for _ in range(1500)])
    drawn, weight = draws[:, 0], draws[:, 1]
    assert (drawn.sum(axis=1) == 3).all()  # min(count, open) every time
    assert not drawn[:, gate.numpy() == 0].any()  # never a closed gate
    np.testing.assert_allclose(weight[drawn > 0], 7 / 3, rtol=1e-6)
    # E[weight] = gate: the open ones' mean weight is 1 (standard error 0.03 at 1,500 draws)
    np.testing.assert_allclose(weight.mean(axis=0), gate.numpy(), atol=0.12)
    few = tf.constant([0, 1, 0, 1], tf.float32)  # open <= count: every open gate, weight 1
    np.testing.assert_array_equal(sample_open_gates(few, 3, seed)[1].numpy(), few.numpy())


def test_stage_three_sampled_search_searches_a_few_and_weighs_them_up():
    images, labels = _batch(seed=2)
    steps = {}
    for targets, samples in (("gated", 4), ("sampled", 8), ("sampled", 2)):
        model = AdversarialModel(*_parts(seed=1), omega=0.0, take_turns=False, targets=targets,
                                 attention_loss="soft", seed=0, target_samples=samples)
        steps[targets, samples] = model._step(images, labels, training=True, occluded=tf.constant(True))[2]
    gated = steps["gated", 4]
    gate = gated["gate_rate"].numpy()
    assert 2 < gate.sum() < 8
    for name in ("adversarial_loss", "attention_loss", "gate_rate", "searched"):  # 8 >= the open gates: exact
        np.testing.assert_allclose(steps["sampled", 8][name], gated[name], rtol=1e-5, atol=1e-7, err_msg=name)
    few = steps["sampled", 2]
    drawn = few["searched"].numpy()
    assert drawn.sum() == 2 and not drawn[gate == 0].any()
    # eq. 4 with L_att weighted by open / 2 on the two drawn samples and 0 on the other open ones
    expected = gate * 0.3 * gated["regularization_loss"].numpy() + (
        drawn * gate.sum() / 2 * 1.7 * gated["attention_loss"].numpy())
    np.testing.assert_allclose(few["adversarial_loss"].numpy(), expected, rtol=1e-5, atol=1e-7)


def test_a_finished_stage_three_refuses_another_target_search(finished_stage):
    """``sampled`` trains with another gradient estimate: a finished stage records it and refuses a switch."""
    from aaa_keras import run_dir as run_dir_lib
    from aaa_keras.errors import RunDirError

    trained = config.RunConfig(adversarial_targets="sampled", adversarial_target_samples=2)
    run_dir = finished_stage(trained)
    run_dir_lib.check_finished_stages(trained, run_dir, ["adversarial"])  # the same: accepted
    with pytest.raises(RunDirError, match="adversarial_targets: trained with 'sampled', requested 'gated'"):
        run_dir_lib.check_finished_stages(config.RunConfig(), run_dir, ["adversarial"])


def test_the_choices_are_named_once():
    assert stages.ADVERSARIAL_TARGETS == config.ADVERSARIAL_TARGETS


def test_stage_two_diagnostics_keep_the_network_part_and_equal_a_full_computation(image_files, stage2):
    paths, labels = image_files
    model, _ = stage2
    images = np.stack([_view(paths, v).numpy() for v in range(8)])
    view_labels = labels[np.arange(8) // 2]
    callback = AttentionDiagnostics(images, view_labels, "attention", 4, 1 / 3, seed=0, log=lambda *_: None,
                                    frozen_network=True)
    callback.set_model(model)
    callback.compute()
    kernel = model.attention.get_layer("attention_map").kernel
    kernel.assign(kernel * -1.0)  # the map changes; the frozen network does not
    kept = callback.compute()
    full = attention_diagnostics(model.stem, model.tail, images, view_labels, "attention", model.attention)
    for name, value in full.items():
        np.testing.assert_allclose(kept[name], value, rtol=1e-6, err_msg=name)
