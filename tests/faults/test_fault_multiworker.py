"""Two workers on loopback ports (TF_CONFIG), MultiWorkerMirroredStrategy: train, and resume after a kill."""

import csv
import json
import os
import signal
import socket
import time

import pytest

from conftest import TINY, cli, succeeded

pytestmark = pytest.mark.slow


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(*args):
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    return [cli(*args, background=True,
                env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
            for i in range(2)]


def finish(workers, timeout=900):
    results = []
    for worker in workers:
        output, _ = worker.communicate(timeout=timeout)
        results.append((worker.returncode, output))
    return results


def test_two_workers_train_three_stages_and_only_the_chief_writes(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    workers = start_workers("fit", "--stage", "adversarial", "--distribute", "multiworker", "--data", tiny_data,
                            "--run-dir", run_dir, *TINY, "--no-evaluate")
    for code, output in finish(workers):
        assert code == 0 and "Traceback" not in output, output[-4000:]
    for stage in ("baseline", "attention", "adversarial"):
        assert os.path.isfile(run_dir / stage / "done.json"), stage
        assert not os.path.exists(run_dir / stage / "backup")
    assert not os.path.exists(run_dir / ".lock")
    output = succeeded(cli("evaluate", "--run-dir", run_dir, "--json", tmp_path / "eval.json"))
    assert "euclidean" in output
    assert json.loads((tmp_path / "eval.json").read_text())["euclidean"]["num_query"] > 0


def test_a_killed_worker_resumes_from_the_chiefs_backup(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    args = ["fit", "--stage", "baseline", "--distribute", "multiworker", "--data", tiny_data,
            "--run-dir", run_dir, *TINY, "--epochs", "3", "--no-evaluate"]
    workers = start_workers(*args)
    metadata = run_dir / "baseline" / "backup" / "training_metadata.json"
    deadline = time.time() + 600
    while not metadata.exists() and time.time() < deadline and all(w.poll() is None for w in workers):
        time.sleep(0.05)
    assert metadata.exists(), [w.communicate()[0][-3000:] for w in workers]
    workers[1].send_signal(signal.SIGKILL)  # a preempted worker ...
    time.sleep(1)
    workers[0].send_signal(signal.SIGKILL)  # ... and the job restarted as a whole
    for worker in workers:
        worker.wait()
    if os.path.isfile(run_dir / "baseline" / "done.json"):
        pytest.skip("the stage finished before the kill; nothing to resume")

    workers = start_workers(*args)
    for code, output in finish(workers):
        assert code == 0 and "Traceback" not in output, output[-4000:]
    with open(run_dir / "baseline" / "log.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == [0, 1, 2]  # every epoch trained once, none repeated or lost
    assert os.path.isfile(run_dir / "baseline" / "done.json")


def test_sigterm_to_one_worker_saves_on_both_and_the_job_resumes_at_that_step(tiny_data, tmp_path):
    """A preempted worker (SIGTERM to worker 1, not the chief): PreemptionCheckpointHandler agrees on a step
    through the coordination service, both save there, say so and exit 143; the restarted job resumes at it."""
    from test_fault_preemption import SAVED, STEPS

    run_dir = tmp_path / "run"
    args = ["fit", "--stage", "baseline", "--distribute", "multiworker", "--data", tiny_data,
            "--run-dir", run_dir, *TINY, "--epochs", "2", "--steps-per-epoch", STEPS, "--no-evaluate"]
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    workers = [cli(*args, fault="steps:0.3", background=True,
                   env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
               for i in range(2)]
    for line in workers[1].stdout:
        if line.strip() == "step baseline 2 1":
            workers[1].send_signal(signal.SIGTERM)
            break
    positions = []
    for code, output in finish(workers):
        assert code == 143 and "Traceback" not in output, f"exit {code}\n{output[-4000:]}"
        saved = [SAVED.search(line) for line in output.splitlines() if "asked to stop" in line]
        assert len(saved) == 1 and saved[0], output[-4000:]
        positions.append(saved[0].group(2, 3))
    assert positions[0] == positions[1] and positions[0][0] == "2", positions  # one agreed step
    step = positions[0][1]
    assert json.loads((run_dir / "baseline" / "backup" / "training_metadata.json").read_text())["steps_done"] == int(step)

    workers = start_workers(*args)
    for code, output in finish(workers):
        assert code == 0 and "Traceback" not in output, output[-4000:]
        assert f"Stage baseline: resuming at epoch 2 step {step} of {STEPS}" in output, output[-4000:]
    assert json.loads((run_dir / "baseline" / "done.json").read_text())["optimizer_steps"] == 2 * STEPS
    with open(run_dir / "baseline" / "log.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1]
