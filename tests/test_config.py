"""Loading a run directory's config.json: unknown keys are named in a warning, not dropped silently."""

import dataclasses
import json
import os
import warnings

import pytest

from aaa_keras.config import CONFIG_FILE, load_config, make_config, save_config


def test_a_saved_config_loads_back_without_a_warning(tmp_path):
    config = make_config("demo", seed=3)
    save_config(config, str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(str(tmp_path)) == config


def test_unknown_keys_are_dropped_with_a_warning_naming_them_and_the_file(tmp_path):
    config = make_config("demo", seed=3)
    values = dict(dataclasses.asdict(config), old_setting=1, another_removed_one="x")
    with open(tmp_path / CONFIG_FILE, "w") as f:
        json.dump(values, f)
    with pytest.warns(UserWarning) as caught:
        loaded = load_config(str(tmp_path))
    assert loaded == config
    assert len(caught) == 1
    message = str(caught[0].message)
    assert os.path.join(str(tmp_path), CONFIG_FILE) in message
    assert "another_removed_one, old_setting" in message
