"""Shared fixtures: tiny shapes (64x32 images, a few ids) and the built-in synthetic data."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("AAA_KERAS_VERBOSE", "0")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes minutes; run with `pytest -m slow`")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache from a test."""
    monkeypatch.setenv("AAA_KERAS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small synthetic Market-layout dataset shared by the whole session (read-only)."""
    from aaa_keras.data.synth import synthesize_market

    root = tmp_path_factory.mktemp("data") / "synth"
    synthesize_market(str(root), num_ids=8, num_cams=3, seed=0)
    return str(root)


@pytest.fixture
def finished_stage(tmp_path):
    """``write(config, stage)``: a run directory under ``tmp_path`` whose ``stage`` is finished and records
    ``config``'s settings in its done.json, as training does (no weights); returns the run directory."""

    def write(config, stage="adversarial"):
        import json

        from aaa_keras import run_dir

        os.makedirs(tmp_path / stage, exist_ok=True)
        (tmp_path / stage / run_dir.DONE_FILE).write_text(
            json.dumps({"settings": run_dir.stage_settings(config, stage)}))
        return str(tmp_path)

    return write


@pytest.fixture
def tiny_config(tiny_data):
    """A RunConfig for tiny_resnet at 64x32 on the tiny dataset, a few steps per epoch."""
    from aaa_keras.config import make_config

    return make_config("demo", recipe="paper", data=tiny_data, backbone="tiny_resnet", batch_size=8, epochs=1,
                       steps_per_epoch=2, attention_filters=16)
