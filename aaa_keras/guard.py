"""Faults during training turned into one line and a run dir that stays usable.

- A non-finite loss stops the stage at the step it appears (Keras
  ``TerminateOnNaN``, raising instead of finishing the epoch), so the epoch
  is not backed up and no NaN weights are saved; the message names the
  stage, epoch and step and the checkpoint a rerun continues from.
- A full or read-only disk: free space is checked before a stage (two
  checkpoints plus logs), and an ``OSError`` (h5py raises those too) while
  training or saving becomes "no space left on DIR while writing X; the last
  good checkpoint is Y" (exit 1); the partial file is removed, earlier
  stages' files are untouched.

Both are :class:`~aaa_keras.errors.RunFailure` (exit status 1).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil

import keras
import numpy as np

from aaa_keras.errors import RunFailure
from aaa_keras.run_dir import BACKUP_DIR, NETWORK_WEIGHTS, stage_dir, stage_is_done

LOG_ALLOWANCE_BYTES = 4 * 2**20  # CSV log, TensorBoard events, done.json, image check cache
DISK_ERRNOS = {errno.ENOSPC: "no space left on", errno.EDQUOT: "disk quota exceeded on",
               errno.EROFS: "read-only file system at", errno.EFBIG: "file size limit reached on",
               errno.EIO: "input/output error on", errno.EACCES: "no permission to write in"}


# === Non-finite loss ===

class NonFiniteLoss(Exception):
    def __init__(self, stage: str, epoch: int, step: int, name: str, value: float):
        super().__init__(f"{name} = {value}")
        self.stage, self.epoch, self.step, self.name, self.value = stage, epoch, step, name, value


class StopOnNonFiniteLoss(keras.callbacks.TerminateOnNaN):
    """``TerminateOnNaN`` that stops at once, on any non-finite logged loss, and says where.

    Keras' own callback sets ``stop_training``, which still ends the epoch:
    ``BackupAndRestore`` would then back up the NaN weights. Raising from
    ``on_train_batch_end`` leaves the last finished epoch's backup as it is.
    Epochs and steps in the message count from 1.
    """

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            if "loss" not in name:
                continue
            value = float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
            if not math.isfinite(value):
                self.model.stop_training = True
                raise NonFiniteLoss(self.stage, self.epoch + 1, batch + 1, name, value)


# === Checkpoints ===

def backup_epoch(stage_directory: str) -> int | None:
    """The number of finished epochs in a stage's BackupAndRestore backup, or None."""
    path = os.path.join(stage_directory, BACKUP_DIR, "training_metadata.json")
    try:
        with open(path) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def last_good_checkpoint(run_dir: str, stage: str) -> str:
    """Where a rerun continues from, in words: this stage's backup, or the last finished stage."""
    from aaa_keras.config import STAGES

    epoch = backup_epoch(stage_dir(run_dir, stage))
    if epoch:
        return (f"{os.path.join(stage_dir(run_dir, stage), BACKUP_DIR)} (stage {stage} after epoch "
                f"{epoch}; the same command continues from it)")
    finished = [s for s in STAGES[: STAGES.index(stage)] if stage_is_done(run_dir, s)]
    if finished:
        return (f"{os.path.join(stage_dir(run_dir, finished[-1]), NETWORK_WEIGHTS)} (stage "
                f"{finished[-1]}, finished; the same command trains stage {stage} again from it)")
    return f"none yet (stage {stage} is the first; the same command starts it again)"


def keep_backup_until_saved(callbacks) -> None:
    """BackupAndRestore deletes its backup when ``fit`` returns, before the stage's weights are
    saved; keep it until :func:`remove_backup`, so a failed final save loses nothing."""
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            callback.delete_checkpoint = False


def remove_backup(stage_directory: str) -> None:
    shutil.rmtree(os.path.join(stage_directory, BACKUP_DIR), ignore_errors=True)


# === Disk space and write errors ===

def checkpoint_bytes(model: keras.Model) -> int:
    """About one checkpoint: every variable, plus an optimizer slot per trainable variable."""
    weights = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)
    slots = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.trainable_weights)
    return weights + slots


def check_free_space(directory: str, model: keras.Model, stage: str) -> None:
    """Refuse to start a stage that cannot write two checkpoints and its logs."""
    needed = 2 * checkpoint_bytes(model) + LOG_ALLOWANCE_BYTES
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return  # cannot tell; the writes themselves are guarded
    if free < needed:
        raise RunFailure(
            f"not enough free space on {directory} for stage {stage}: {free / 2**20:.1f} MiB free, "
            f"about {needed / 2**20:.1f} MiB needed (two checkpoints + logs); free some space or "
            "use a --run-dir on another disk")


def _is_write_error(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
        return True
    text = str(error)
    return any(word in text for word in ("No space left", "errno = 28", "Read-only file system",
                                         "File too large", "Disk quota", "file write failed",
                                         "Can't write data", "Unable to synchronously create",
                                         "Unable to create file"))


def write_failure(error: BaseException, directory: str, what: str, run_dir: str,
                  stage: str) -> RunFailure:
    """The one-line RunFailure for a failed write of ``what`` in ``directory``."""
    kind = DISK_ERRNOS.get(getattr(error, "errno", None), None)
    if kind is None:
        text = str(error)
        kind = ("read-only file system at" if "Read-only" in text else
                "file size limit reached on" if "File too large" in text else "no space left on")
    reason = getattr(error, "strerror", None) or str(error)
    # h5py: "Can't write data (file write failed: time = ..., errno = 28, error message = '...', ...)"
    found = re.search(r"error message = '([^']*)'", reason)
    reason = found.group(1) if found else " ".join(reason.split())[:160]
    return RunFailure(f"{kind} {directory} while writing {what} ({reason}); the last good "
                      f"checkpoint is {last_good_checkpoint(run_dir, stage)}", exit_now=True)


@contextlib.contextmanager
def guarded_training(run_dir: str, stage: str, directory: str):
    """Around ``model.fit``: a non-finite loss or a failed backup/log write -> RunFailure."""
    try:
        yield
    except NonFiniteLoss as stop:
        raise RunFailure(
            f"stage {stage}: the loss became non-finite at epoch {stop.epoch}, step {stop.step} "
            f"({stop}); training stopped before saving anything of that epoch; the last good "
            f"checkpoint is {last_good_checkpoint(run_dir, stage)}") from None
    except (OSError, RuntimeError, ValueError) as error:
        if not _is_write_error(error):
            raise
        what = getattr(error, "filename", None) or "a checkpoint or log (BackupAndRestore, CSVLogger)"
        raise write_failure(error, directory, os.path.basename(str(what)), run_dir, stage) from None


def save_or_fail(write, path: str, run_dir: str, stage: str) -> None:
    """``write(tmp)`` then rename to ``path``; a failed write removes ``tmp`` and raises RunFailure."""
    from aaa_keras.files import atomic_path

    try:
        with atomic_path(path) as tmp:
            write(tmp)
    except (OSError, RuntimeError, ValueError) as error:
        if isinstance(error, (RuntimeError, ValueError)) and not _is_write_error(error):
            raise
        raise write_failure(error, os.path.dirname(path), os.path.basename(path), run_dir,
                            stage) from None
