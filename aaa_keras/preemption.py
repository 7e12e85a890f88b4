"""SIGTERM (a preemption) during ``fit``: save within about a second and a step, say so in one line, exit 143.

A cloud scheduler sends SIGTERM and waits a grace period before SIGKILL.
TensorFlow's ``tf.distribute.experimental.PreemptionCheckpointHandler`` does
the agreeing: the worker that received SIGTERM publishes a step through
MultiWorkerMirroredStrategy's coordination service, every worker trains up to
that step (the all-reduce needs all of them), saves and exits; in one process
it simply saves at the next step. The handler polls the flag once a second, so
the save lands up to about a second plus one step after the signal (far
inside a scheduler's grace period: GCE gives 30 s, Kubernetes 30 s by default).
Building the handler asks TensorFlow's ``detect_platform``, which tries the GCP
metadata server (``metadata.google.internal``, 5 s timeout; refused at once on
a closed network). It is driven from a Keras callback
(``save_checkpoint_if_preempted`` at every batch end) with a
``TerminationConfig`` whose ``save_fn`` writes the stage's ``BackupAndRestore``
backup (weights + optimizer, Keras' own layout) and whose watcher is this
module's SIGTERM flag, so SIGTERM is the signal on every platform (docs/decisions.md).

The backup's ``training_metadata.json`` gets ``steps_done``: ``training._fit_from``
resumes epoch ``epoch`` after that many steps (Keras' own ``BackupAndRestore``
reads back only the epoch). Writes are atomic: the new weights are complete in
a temporary sibling before the previous pair is copied to ``*.bkp`` (Keras'
``double_checkpoint`` fallback) and renamed over it; inside :func:`watch` SIGTERM
only sets a flag, so a second SIGTERM during the save does not interrupt it,
and a SIGKILL at the end of the grace period finds the previous backup whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading

import keras

from aaa_keras.files import atomic_path, fsync_directory, json_text

EXIT_CODE = 143  # 128 + SIGTERM, what the process would have returned without this module
WEIGHTS_FILE = "latest.weights.h5"  # keras.callbacks.BackupAndRestore's file names
METADATA_FILE = "training_metadata.json"


def saved_position(backup_dir: str) -> tuple[int, int]:
    """``(epoch, steps_done)`` of a backup: finished epochs, and steps of the next one (0 at an epoch end)."""
    try:
        with open(os.path.join(backup_dir, METADATA_FILE)) as f:
            metadata = json.load(f)
        return int(metadata["epoch"]), int(metadata.get("steps_done", 0))
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0


def save_backup(model: keras.Model, backup_dir: str, epoch: int, steps_done: int) -> None:
    """Write the stage's backup at ``epoch`` (finished epochs) + ``steps_done`` steps, never half of it."""
    os.makedirs(backup_dir, exist_ok=True)
    weights, metadata = os.path.join(backup_dir, WEIGHTS_FILE), os.path.join(backup_dir, METADATA_FILE)
    with tempfile.TemporaryDirectory(dir=backup_dir, prefix="_partial_") as scratch:
        new = os.path.join(scratch, WEIGHTS_FILE)  # Keras wants the .weights.h5 suffix
        model.save_weights(new)
        with open(new, "rb+") as f:
            os.fsync(f.fileno())
        for path in (weights, metadata):  # the previous pair stays readable as Keras' double checkpoint
            if os.path.exists(path):
                shutil.copy2(path, path + ".bkp")
        os.replace(new, weights)
        fsync_directory(backup_dir)
    with atomic_path(metadata) as tmp:
        with open(tmp, "w") as f:
            f.write(json_text({"epoch": epoch, "batch": max(steps_done - 1, 0), "steps_done": steps_done}))


class StepSaver(keras.callbacks.Callback):
    """Asks the handler at every batch end whether to save; knows the stage's epoch and step."""

    def __init__(self, watcher: "Watcher", stage: str, backup_dir: str, steps_per_epoch: int,
                 first_step: int = 0):
        super().__init__()
        self.watcher, self.stage, self.backup_dir = watcher, stage, backup_dir
        self.steps_per_epoch, self.first_step = steps_per_epoch, first_step
        self.epoch, self.steps_done = 0, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.steps_done = epoch, self.first_step

    def on_epoch_end(self, epoch, logs=None):
        self.first_step = 0  # only the first epoch of a resumed fit starts mid-way

    def on_train_batch_end(self, batch, logs=None):
        self.steps_done += 1
        self.watcher.current = self
        self.watcher.handler.save_checkpoint_if_preempted()
        if self.watcher.inactive and self.watcher.signalled.is_set():
            self.save()
            self.watcher._exit()

    def save(self) -> None:
        epoch, steps = self.epoch, self.steps_done
        if steps >= self.steps_per_epoch:
            epoch, steps = epoch + 1, 0
        save_backup(self.model, self.backup_dir, epoch, steps)
        self.saved = (epoch, steps)


def _quiet_total_run_calls(record) -> bool:
    return "total_run_calls" not in record.getMessage()


class Watcher:
    """One per process (the handler's coordination keys are per process): the SIGTERM flag and TF's handler."""

    def __init__(self, strategy, log=print):
        import tensorflow as tf

        self.log, self.current = log, None
        # the handler reads its own deprecated total_run_calls when it saves: not the user's concern
        logger = tf.get_logger()
        if _quiet_total_run_calls not in logger.filters:
            logger.addFilter(_quiet_total_run_calls)
        self.signalled = threading.Event()
        self.checkpoint_dir = tempfile.mkdtemp(prefix="aaa_keras_preemption_")  # the handler's own, unused
        resolver = getattr(strategy, "cluster_resolver", None)
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            resolver = None  # one process: the handler's local mode
        self.handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            resolver, tf.train.Checkpoint(), self.checkpoint_dir,
            tf.distribute.experimental.TerminationConfig(
                termination_watcher_fn=self.signalled.is_set, exit_fn=self._exit, grace_period=0,
                save_fn=self._save))
        # On a GCP CPU or TPU VM TF makes the handler a no-op: save here at the next step instead
        # (right for one process; workers would not agree on the step there)
        self.inactive = getattr(getattr(self.handler, "_platform_device", None), "name", "") in ("GCE_CPU", "GCE_TPU")

    def callback(self, stage: str, backup_dir: str, steps_per_epoch: int, first_step: int = 0) -> StepSaver:
        return StepSaver(self, stage, backup_dir, steps_per_epoch, first_step)

    def _save(self, *args, **kwargs):
        self.current.save()

    def _exit(self):
        saver = self.current
        epoch, steps = saver.saved
        self.log(f"Stage {saver.stage}: asked to stop (SIGTERM); saved at epoch {epoch + 1} step {steps} of "
                 f"{saver.steps_per_epoch} in {saver.backup_dir}; the same command resumes there "
                 f"(exit {EXIT_CODE})")
        raise SystemExit(EXIT_CODE)

    def close(self) -> None:
        # stop the handler's once-a-second poll of the flag (a thread per fit otherwise; it ends
        # within a second, not joined). The event is TF 2.21's (requirements pin tensorflow 2.21.*),
        # looked up so that another version only keeps the thread.
        stop = getattr(self.handler, "_poll_termination_signal_thread_should_stop", None)
        if stop is not None:
            stop.set()
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)


@contextlib.contextmanager
def watch(strategy, log=print):
    """Inside the block SIGTERM sets a flag that the handler acts on at the next step; restored after."""
    watcher = Watcher(strategy, log)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: watcher.signalled.set())
    try:
        yield watcher
    finally:
        signal.signal(signal.SIGTERM, previous)
        watcher.close()
