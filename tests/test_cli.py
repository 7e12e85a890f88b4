"""The command line: examples in every --help, one-line errors for user mistakes, the main flow."""

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from cli import cli

TINY = ["--recipe", "paper", "--backbone", "tiny_resnet", "--batch-size", "8", "--epochs", "1", "--steps-per-epoch", "2"]


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def assert_user_error(code, output, *fragments):
    assert code == 2, output
    assert "Traceback" not in output
    error_lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, output
    for fragment in fragments:
        assert fragment in error_lines[0], output


COMMANDS = [[], ["data"], ["data", "synth"], ["data", "check"], ["fit"], ["evaluate"], ["visualize"],
            ["export"], ["index"], ["search"], ["ablate"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "cli")
def test_every_help_exits_zero_and_shows_an_example(command):
    code, output = run(*command, "--help")
    assert code == 0
    assert "Example" in output and "python cli.py" in output


def test_image_size_that_is_not_hxw(tmp_path, tiny_data):
    code, output = run("fit", "--data", tiny_data, "--run-dir", tmp_path / "r", "--image-size", "64by32")
    assert_user_error(code, output, "--image-size", "64by32")
    assert not os.path.exists(tmp_path / "r")


def test_data_that_does_not_exist(tmp_path):
    code, output = run("fit", "--data", tmp_path / "missing", "--run-dir", tmp_path / "r")
    assert_user_error(code, output, "--data", "missing")


def test_evaluate_on_a_run_dir_with_no_trained_stage(tmp_path):
    code, output = run("evaluate", "--run-dir", tmp_path / "nothing")
    assert_user_error(code, output, "nothing", "fit --stage baseline")


def test_data_check_names_the_bad_file(tmp_path, tiny_data):
    root = tmp_path / "bad"
    shutil.copytree(tiny_data, root)
    (root / "query" / "not_a_reid_name.jpg").write_bytes(b"x")
    code, output = run("data", "check", root)
    assert_user_error(code, output, "not_a_reid_name.jpg")


def test_data_check_on_a_corrupt_image(tmp_path, tiny_data):
    root = tmp_path / "corrupt"
    shutil.copytree(tiny_data, root)
    victim = sorted((root / "bounding_box_train").iterdir())[0]
    victim.write_bytes(b"\xff\xd8 this is not a jpeg")
    code, output = run("data", "check", root)
    assert_user_error(code, output, victim.name)


def test_fit_with_an_empty_split_names_the_directory(tmp_path, tiny_data):
    root = tmp_path / "empty"
    shutil.copytree(tiny_data, root)
    for image in (root / "query").iterdir():
        image.unlink()
    code, output = run("fit", "--data", root, "--run-dir", tmp_path / "r", *TINY)
    assert_user_error(code, output, "query")


def test_fit_then_evaluate_writes_the_spec_json(tmp_path, tiny_data, monkeypatch):
    monkeypatch.delenv("AAA_KERAS_VERBOSE", raising=False)  # the default: decided by the output
    run_dir = tmp_path / "run"
    code, output = run("fit", "--stage", "baseline", "--data", tiny_data, "--run-dir", run_dir,
                       *TINY, "--no-evaluate")
    assert code == 0, output
    assert "Run configuration:" in output and "Run directory:" in output
    # not a terminal: one line per epoch, no progress-bar carriage returns or control codes
    assert "\r" not in output and "\x1b[" not in output
    assert any(line.startswith("2/2 - ") for line in output.splitlines()), output
    json_path = run_dir / "eval.json"
    code, output = run("evaluate", "--run-dir", run_dir, "--json", json_path)
    assert code == 0, output
    assert "Rank-1" in output or "rank1" in output
    results = json.loads(json_path.read_text())
    entry = results["euclidean"]
    assert set(entry) == {"rank1", "rank5", "rank10", "mAP", "mINP", "num_query"}
    assert 0 <= entry["mAP"] <= 100 and entry["rank1"] <= entry["rank5"] <= entry["rank10"] <= 100
    assert entry["num_query"] > 0

    # the same run dir with another dataset is refused and nothing is lost
    other = tmp_path / "other"
    run("data", "synth", "--out", other, "--ids", "6", "--cams", "3", "--seed", "3")
    code, output = run("fit", "--stage", "baseline", "--data", other, "--run-dir", run_dir, *TINY)
    assert_user_error(code, output, "another configuration")
    assert (run_dir / "baseline" / "network.weights.h5").is_file()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_data):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    code, output = run("fit", "--stage", "baseline", "--data", tiny_data, "--run-dir", run_dir, *TINY,
                       "--no-evaluate")
    assert code == 0, output
    return run_dir


def test_evaluate_json_that_is_a_directory(trained_run, tmp_path):
    code, output = run("evaluate", "--run-dir", trained_run, "--json", tmp_path)
    assert_user_error(code, output, "--json", "is a directory")


def test_evaluate_names_a_corrupt_image_or_skips_it(trained_run, tmp_path, tiny_data):
    root = tmp_path / "corrupt"
    shutil.copytree(tiny_data, root)
    victim = sorted((root / "bounding_box_test").iterdir())[3]
    victim.write_bytes(b"\xff\xd8 not a jpeg")
    code, output = run("evaluate", "--run-dir", trained_run, "--data", root)
    assert_user_error(code, output, "does not decode", "--skip-bad-images")
    code, output = run("evaluate", "--run-dir", trained_run, "--data", root, "--skip-bad-images",
                       "--json", tmp_path / "eval.json")
    assert code == 0, output
    assert f"Skipping a bad gallery image: {victim}" in output
    assert json.loads((tmp_path / "eval.json").read_text())["euclidean"]["num_query"] > 0


def test_evaluate_accepts_the_spec_execution_options(trained_run):
    code, output = run("evaluate", "--run-dir", trained_run, "--distribute", "none",
                       "--mixed-precision", "mixed_bfloat16", "--no-jit-compile")
    assert code == 0, output
    assert "euclidean" in output


def test_a_user_error_prints_one_line_and_no_tensorflow_start_up_chatter(tmp_path):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    # TF_CPP_MIN_LOG_LEVEL 0: the chatter is there to hide on every CPU (2 hides it on some)
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "cli.py"), "evaluate", "--run-dir",
                             str(tmp_path / "missing")], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("Error: --run-dir:") and "I0000" not in result.stderr


def test_the_quiet_tensorflow_import_leaves_devices_unconfigured():
    # MirroredStrategy on logical CPUs and MultiWorkerMirroredStrategy must configure TensorFlow
    # before its first op: the start-up import of the CLI may not run one
    import subprocess
    import sys

    from conftest import REPO_ROOT

    script = ("import sys\n"
              "from aaa_keras import quiet_tensorflow\n"
              "quiet_tensorflow.install()\n"
              "import tensorflow as tf\n"
              "assert not any(isinstance(f, quiet_tensorflow.QuietTensorFlowImport) for f in sys.meta_path)\n"
              "cpu = tf.config.list_physical_devices('CPU')[0]\n"
              "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
              "print(len(tf.config.list_logical_devices('CPU')))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "2"
