"""SIGTERM to a training ``fit`` (a preemption): it saves within about a second and a step, says so,
exits 143, and the same command resumes at that step (aaa_keras/preemption.py)."""

import csv
import json
import re

from conftest import TINY, cli, succeeded

STEPS = 6
SAVED = re.compile(r"Stage (\w+): asked to stop \(SIGTERM\); saved at epoch (\d+) step (\d+) of (\d+) in (\S+); "
                   r"the same command resumes there \(exit 143\)")


def test_sigterm_saves_mid_epoch_and_the_same_command_resumes_there(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    args = ["fit", "--stage", "baseline", "--data", tiny_data, "--run-dir", run_dir, *TINY,
            "--epochs", "2", "--steps-per-epoch", STEPS, "--no-evaluate"]
    process = cli(*args, fault="sigterm-at:2:1", background=True)  # SIGTERM after epoch 2's first step
    try:
        output, _ = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 143, f"exit {process.returncode}\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    saved = [SAVED.search(line) for line in output.splitlines() if "asked to stop" in line]
    assert len(saved) == 1 and saved[0], output[-4000:]
    stage, epoch, step, of, backup = saved[0].groups()
    assert (stage, epoch, int(of)) == ("baseline", "2", STEPS) and 1 < int(step) < STEPS, saved[0].group(0)
    metadata = json.loads((run_dir / "baseline" / "backup" / "training_metadata.json").read_text())
    assert metadata == {"epoch": 1, "batch": int(step) - 1, "steps_done": int(step)}
    assert not (run_dir / "baseline" / "done.json").exists()

    output = succeeded(cli(*args))
    assert f"Stage baseline: resuming at epoch 2 step {step} of {STEPS}" in output, output[-4000:]
    done = json.loads((run_dir / "baseline" / "done.json").read_text())
    assert done["optimizer_steps"] == 2 * STEPS  # no step lost, none repeated (the optimizer's own count)
    assert set(done["final_metrics"]) >= {"loss", "accuracy"}
    with open(run_dir / "baseline" / "log.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1]  # epoch 2 (0-based 1) logged once
    assert not (run_dir / "baseline" / "backup").exists()
