"""The fault suite: the real CLI in a subprocess, tiny shapes, one fault at a time."""

import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
INJECT = os.path.join(HERE, "inject.py")
TINY = ["--recipe", "paper", "--backbone", "tiny_resnet", "--image-size", "64x32", "--batch-size", "8", "--epochs", "1",
        "--steps-per-epoch", "2"]


def cli(*args, fault=None, env=None, timeout=600, background=False):
    """``python cli.py ARGS`` (or through ``inject.py FAULT --``) in a fresh process."""
    command = [sys.executable] + ([INJECT, fault, "--"] if fault else [os.path.join(REPO_ROOT, "cli.py")])
    command += [str(a) for a in args]
    environment = dict(os.environ, PYTHONPATH=REPO_ROOT, AAA_KERAS_VERBOSE="0", **(env or {}))
    if background:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True,
                          timeout=timeout)


def error_line(result, code):
    """The one ``Error:`` line of a failed command with exit status ``code``; no traceback, no crash."""
    output = result.stdout + result.stderr
    assert result.returncode == code, f"exit {result.returncode}\n{output[-4000:]}"
    assert "Traceback" not in output and "Segmentation fault" not in output, output[-4000:]
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output[-4000:]
    return errors[0]


def succeeded(result):
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"exit {result.returncode}\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    return output


@pytest.fixture
def data_copy(tiny_data, tmp_path):
    """A private copy of the tiny dataset that a test may damage."""
    return shutil.copytree(tiny_data, tmp_path / "data")


def damage(path, kind):
    """Damage a file as a disk or a copy does: ``truncate`` (half of it), ``empty`` or ``garbage`` bytes."""
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write({"truncate": data[: len(data) // 2], "empty": b"",
                 "garbage": bytes(range(256)) * (len(data) // 256 + 1)}[kind])


DAMAGES = ("truncate", "empty", "garbage")


@pytest.fixture(scope="session")
def trained(tiny_data, tmp_path_factory):
    """A tiny baseline trained, evaluated with XQDA (its .npz) and exported as a SavedModel, all through
    the CLI (shared: copy before damaging)."""
    root = tmp_path_factory.mktemp("trained")
    run_dir, models = root / "run", root / "models"
    succeeded(cli("fit", "--stage", "baseline", "--data", tiny_data, "--run-dir", run_dir, *TINY, "--no-evaluate"))
    succeeded(cli("evaluate", "--run-dir", run_dir, "--metric", "xqda"))
    succeeded(cli("export", "--run-dir", run_dir, "--out", models, "--format", "saved_model"))
    return {"run_dir": run_dir, "model": models / "aaa_net" / "1"}
