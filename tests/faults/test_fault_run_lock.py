"""Two writers on one run dir: the second is refused with the holder named; a dead holder's lock is taken over."""

import json
import os
import signal
import socket
import time

from conftest import TINY, cli, error_line, succeeded


def wait_for_lock(path, process, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            with open(path) as f:
                holder = json.load(f)
            if holder.get("pid") == process.pid:
                return holder
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"no lock at {path}")


def test_second_writer_is_refused_and_a_stale_lock_is_taken_over(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    fit = ["fit", "--stage", "baseline", "--data", tiny_data, "--run-dir", run_dir, *TINY, "--no-evaluate"]
    # the holder must outlive the four refused commands (it is killed below): one long epoch, so
    # the kill never lands in the middle of a backup write
    first = cli(*fit, "--steps-per-epoch", "100000", background=True)
    try:
        holder = wait_for_lock(run_dir / ".lock", first)
        assert holder["host"] == socket.gethostname()
        expected = f"run dir {run_dir} is in use by pid {first.pid} on host {holder['host']} since "
        for command in (fit, ["evaluate", "--run-dir", run_dir, "--json", tmp_path / "eval.json"],
                        ["visualize", "--run-dir", run_dir], ["export", "--run-dir", run_dir,
                                                              "--out", tmp_path / "models"]):
            line = error_line(cli(*command), 2)
            assert expected in line, (command, line)
        assert first.poll() is None  # the holder was not disturbed
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock: its file stays behind
        first.wait()
    assert json.loads((run_dir / ".lock").read_text())["pid"] == first.pid

    output = succeeded(cli(*fit))
    assert f"taking over the stale lock of run dir {run_dir}, left by pid {first.pid}" in output
    assert os.path.isfile(run_dir / "baseline" / "done.json")
    assert not os.path.exists(run_dir / ".lock")  # released at the end


# The real CLI in a fresh process; at its exit it prints whether TensorFlow was ever imported.
REPORTS_TENSORFLOW = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("tensorflow imported:", "tensorflow" in sys.modules)
"""


def test_second_writer_is_refused_before_tensorflow_is_imported(tmp_path):
    """docs/reliability.md: the refusal comes before TensorFlow is imported (seconds of start-up)."""
    import subprocess
    import sys

    from conftest import REPO_ROOT
    from aaa_keras.run_lock import hold

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with hold(str(run_dir), "fit"):  # held by this process: the CLI below is another one
        for command in (["fit", "--run-dir", run_dir], ["evaluate", "--run-dir", run_dir, "--json", tmp_path / "e.json"],
                        ["visualize", "--run-dir", run_dir], ["export", "--run-dir", run_dir, "--out", tmp_path / "m"],
                        ["ablate", "--out", run_dir, "--seeds", "1"]):
            result = subprocess.run([sys.executable, "-c", REPORTS_TENSORFLOW, os.path.join(REPO_ROOT, "cli.py"),
                                     *map(str, command)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
            line = error_line(result, 2)
            assert f"run dir {run_dir} is in use by pid {os.getpid()}" in line, (command, line)
            assert result.stdout.strip().splitlines()[-1] == "tensorflow imported: False", (command, result.stdout)
