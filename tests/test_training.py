"""Stage chaining, resume after an interruption, and run-directory safety."""

import csv
import json
import os

import keras
import numpy as np
import pytest

from aaa_keras.config import load_config, make_config
from aaa_keras.errors import RunDirError, UserError
from aaa_keras.run_dir import (ATTENTION_WEIGHTS, build_stage_parts, load_stage_weights, load_trained,
                               required_stages, stage_dir, trained_stages)
from aaa_keras.training import fit


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def adversarial_run(tiny_data, tmp_path_factory):
    """One tiny run through all three stages, trained once for the module."""
    config = make_config("demo", recipe="paper", data=tiny_data, backbone="tiny_resnet", batch_size=8, epochs=1,
                         steps_per_epoch=2, attention_filters=16)
    run_dir = str(tmp_path_factory.mktemp("runs") / "adversarial")
    messages = []
    trained = fit("adversarial", config, run_dir, log=messages.append)
    return config, run_dir, trained, messages


def test_fit_adversarial_on_an_empty_run_dir_trains_all_three_stages(adversarial_run):
    _, run_dir, trained, messages = adversarial_run
    assert trained == ["baseline", "attention", "adversarial"]
    assert trained_stages(run_dir) == ["baseline", "attention", "adversarial"]
    assert any("needs stage baseline first" in m for m in messages)
    assert any("needs stage attention first" in m for m in messages)
    for stage in trained:
        assert os.path.isfile(os.path.join(stage_dir(run_dir, stage), "log.csv"))
    assert os.path.isfile(os.path.join(stage_dir(run_dir, "adversarial"), ATTENTION_WEIGHTS))
    assert load_config(run_dir).num_classes == 4  # 8 synthetic ids, half for training


def test_second_fit_trains_nothing(adversarial_run):
    config, run_dir, _, _ = adversarial_run
    messages = []
    assert fit("adversarial", config, run_dir, log=messages.append) == []
    assert sum("not retraining" in m for m in messages) == 3


def test_stage_three_changes_the_network_and_keeps_stage_two_attention_as_its_start(adversarial_run):
    _, run_dir, _, _ = adversarial_run
    parts1, parts2, parts3 = (load_trained(run_dir, stage).parts
                              for stage in ("baseline", "attention", "adversarial"))
    stem1 = [w.numpy() for w in parts1.stem.weights]
    stem2 = [w.numpy() for w in parts2.stem.weights]
    stem3 = [w.numpy() for w in parts3.stem.weights]
    assert all(np.array_equal(a, b) for a, b in zip(stem1, stem2))  # stage 2 froze the stem
    assert not all(np.array_equal(a, b) for a, b in zip(stem2, stem3))  # stage 3 trained it


@pytest.mark.parametrize("mask", ["response", "random"])
def test_response_and_random_masks_need_no_stage_two_and_no_attention_branch(adversarial_run, tmp_path,
                                                                              mask):
    config, _, _, _ = adversarial_run
    run_dir = str(tmp_path / mask)
    config = make_config("demo", recipe="paper", data=config.data, backbone="tiny_resnet", batch_size=8, epochs=1,
                         steps_per_epoch=1, attention_filters=16, mask=mask, diagnostic_images=8)
    messages = []
    assert fit("adversarial", config, run_dir, log=messages.append) == ["baseline", "adversarial"]
    assert any(f"--mask {mask}" in m and "no attention branch" in m for m in messages)
    assert not os.path.exists(os.path.join(stage_dir(run_dir, "adversarial"), ATTENTION_WEIGHTS))
    attention = load_trained(run_dir, "adversarial").attention
    assert attention is None
    with open(os.path.join(stage_dir(run_dir, "adversarial"), "done.json")) as f:
        done = json.load(f)
    assert done["settings"]["mask"] == mask
    assert "hit_rate" in done["final_metrics"] and "gate_rate" not in done["final_metrics"]


def test_stage_two_and_three_log_the_attention_diagnostics(adversarial_run):
    _, run_dir, _, messages = adversarial_run
    for stage in ("attention", "adversarial"):
        with open(os.path.join(stage_dir(run_dir, stage), "log.csv")) as f:
            header = next(csv.reader(f))
        with open(os.path.join(stage_dir(run_dir, stage), "done.json")) as f:
            final = json.load(f)["final_metrics"]
        for name in ("hit_rate", "argmax_agreement", "cell_rank_correlation", "efficacy",
                     "positive_fraction", "attention_spread"):
            assert name in header and name in final, (stage, name)
        assert 0.0 <= final["hit_rate"] <= 1.0
        assert any(m.startswith(f"Stage {stage} diagnostics before training") for m in messages)


class _Interrupt(Exception):
    pass


class _InterruptAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Interrupt()


class _RecordEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_an_interrupted_stage_resumes_at_the_next_epoch(tiny_data, tmp_path):
    config = make_config("demo", recipe="paper", data=tiny_data, backbone="tiny_resnet", batch_size=8, epochs=3,
                         steps_per_epoch=1, attention_filters=16)
    run_dir = str(tmp_path / "resume")
    with pytest.raises(_Interrupt):
        fit("baseline", config, run_dir, log=quiet, callbacks=[_InterruptAfterEpoch(1)])
    assert trained_stages(run_dir) == []
    assert os.path.isdir(os.path.join(stage_dir(run_dir, "baseline"), "backup"))
    recorder = _RecordEpochs()
    assert fit("baseline", config, run_dir, log=quiet, callbacks=[recorder]) == ["baseline"]
    assert recorder.epochs == [2]
    with open(os.path.join(stage_dir(run_dir, "baseline"), "log.csv")) as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1, 2]
    with open(os.path.join(stage_dir(run_dir, "baseline"), "done.json")) as f:
        assert json.load(f)["epochs"] == 3


def test_run_dir_of_another_dataset_is_refused(adversarial_run, tmp_path):
    from aaa_keras.data.synth import synthesize_market

    _, run_dir, _, _ = adversarial_run
    other = str(tmp_path / "other")
    synthesize_market(other, num_ids=6, num_cams=3, seed=1)
    config = make_config("demo", recipe="paper", data=other, backbone="tiny_resnet", batch_size=8, epochs=1,
                         steps_per_epoch=1, attention_filters=16)
    with pytest.raises(RunDirError, match="another configuration.*num_classes"):
        fit("baseline", config, run_dir, log=quiet)
    assert trained_stages(run_dir) == ["baseline", "attention", "adversarial"]  # nothing lost


def test_checkpoint_with_another_class_count_is_a_clear_error(adversarial_run):
    import dataclasses

    _, run_dir, _, _ = adversarial_run
    config = dataclasses.replace(load_config(run_dir), num_classes=7)
    parts, attention = build_stage_parts(config)
    with pytest.raises(RunDirError, match="cannot load the baseline weights"):
        load_stage_weights(parts, attention, run_dir, "baseline")


def test_load_trained_names_the_missing_stage(tmp_path, adversarial_run):
    config, run_dir, _, _ = adversarial_run
    with pytest.raises(RunDirError, match="no config.json"):
        load_trained(str(tmp_path / "empty"))


def test_required_stages():
    assert required_stages("baseline") == ["baseline"]
    assert required_stages("adversarial") == ["baseline", "attention", "adversarial"]
    assert required_stages("adversarial", mask="response") == ["baseline", "adversarial"]
    assert required_stages("adversarial", mask="random") == ["baseline", "adversarial"]
    with pytest.raises(UserError, match="--stage"):
        required_stages("nope")


def test_a_finished_stage_with_other_settings_is_refused_not_reused(adversarial_run):
    import dataclasses

    config, run_dir, _, _ = adversarial_run
    variant = dataclasses.replace(config, mask="response")
    with pytest.raises(RunDirError, match="stage adversarial is already trained with other settings.*mask"):
        fit("adversarial", variant, run_dir, log=quiet)
    assert load_config(run_dir).mask == "attention"  # config.json is not rewritten by the refused run
    other_loss = dataclasses.replace(config, attention_loss="l1")
    with pytest.raises(RunDirError, match="stage attention is already trained with other settings.*attention_loss"):
        fit("adversarial", other_loss, run_dir, log=quiet)


def test_resnet50_below_32_pixels_is_a_clear_error():
    with pytest.raises(UserError, match="--image-size 16x16: ResNet-50 needs at least 32x32"):
        make_config("paper", image_height=16, image_width=16)
