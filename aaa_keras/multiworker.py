"""``--distribute multiworker``: what MultiWorkerMirroredStrategy needs beyond Mirrored.

Three things, following the TensorFlow multi-worker guide:

1. **A Keras 3 fix.** ``Model.fit`` under a strategy first builds the model
   symbolically from one batch, which it gets by ``strategy.reduce("MEAN",
   batch, axis=None)``; ``CollectiveAllReduceStrategy`` cannot reduce a
   ``PerReplica`` value eagerly and ``fit`` dies with "Attempt to convert a
   value (PerReplica:{...}) with an unsupported type" (keras-team/keras#20585,
   tensorflow/tensorflow#72388). The build needs only the batch's structure and
   shapes, so :func:`patch_keras_symbolic_build` hands it this worker's first
   local replica batch instead. Then each step's scalar logs are reduced with
   ``axis=0``, which fails on rank 0; they are averaged over the replicas
   (``axis=None``) as under Mirrored. Nothing else of ``fit`` changes: the dataset is
   still distributed (and auto-sharded) by Keras, gradients are all-reduced by
   the strategy, and the stage models divide every loss by the global batch as
   under MirroredStrategy.
2. **Only the chief writes the run dir.** The chief is the ``chief`` task, or
   worker 0 when there is none. Every other worker trains into a temporary
   directory of its own (:func:`worker_run_dir`) that sees the finished stages
   of the shared run dir (symbolic links) and is deleted at the end.
3. **Resume.** ``BackupAndRestore`` restores each worker from its run dir's
   backup; a worker's temporary dir starts with a copy of the chief's backup of
   the stage in progress, so after a restart every worker resumes at the
   chief's epoch (the workers must agree on it, or the collectives hang).

The fix replaces two internals of Keras (``TensorFlowTrainer._maybe_symbolic_build``
and the module function ``reduce_per_replica`` of
``keras/src/backend/tensorflow/trainer.py``), written for :data:`PATCHED_KERAS`;
``requirements.txt`` pins that version. :func:`check_patchable` refuses, in one
line, another Keras version or a changed signature of either function, so a
Keras upgrade fails loudly at the start of a multi-worker ``fit`` instead of
training with a patch that no longer fits.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from aaa_keras.errors import UserError
from aaa_keras.run_lock import is_multiworker_chief

PATCHED_KERAS = "3.15"  # the Keras minor version the patch was written for (requirements.txt: keras==3.15.*)
# What the patched functions look like in that version: "name(signature)", from inspect.signature
PATCHED_SIGNATURES = {
    "TensorFlowTrainer._maybe_symbolic_build": "(self, iterator=None, data_batch=None)",
    "reduce_per_replica": "(values, strategy, reduction)",
}

_patched = False


def check_patchable(keras_version: str, trainer) -> None:
    """Refuse (one line, UserError) a Keras whose version or patched functions differ from those
    the patch was written for; ``trainer`` is ``keras.src.backend.tensorflow.trainer``."""
    import inspect

    fix = (f"install the Keras the patch was written for (pip install 'keras=={PATCHED_KERAS}.*', as "
           "requirements.txt pins) or train with --distribute mirrored / none")
    if not (keras_version == PATCHED_KERAS or keras_version.startswith(PATCHED_KERAS + ".")):
        raise UserError(f"--distribute multiworker: Keras {keras_version} is installed, but "
                        f"aaa_keras/multiworker.py patches internals of Keras {PATCHED_KERAS}; {fix}")
    for name, expected in PATCHED_SIGNATURES.items():
        owner, _, attribute = name.rpartition(".")
        function = getattr(getattr(trainer, owner) if owner else trainer, attribute, None)
        try:
            found = str(inspect.signature(function)) if function is not None else "missing"
        except (TypeError, ValueError):
            found = "not inspectable"
        if found != expected:
            raise UserError(f"--distribute multiworker: keras.src.backend.tensorflow.trainer.{name} is "
                            f"{found}, the patch in aaa_keras/multiworker.py expects {expected} (Keras "
                            f"{PATCHED_KERAS}); {fix}")


def patch_keras_symbolic_build() -> None:
    """Make ``Model.fit`` under CollectiveAllReduceStrategy build from a local batch (see above)."""
    global _patched
    if _patched:
        return
    import keras
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    check_patchable(keras.__version__, trainer)
    original = trainer.TensorFlowTrainer._maybe_symbolic_build

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return original(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tf.nest.map_structure(
                lambda x: strategy.experimental_local_results(x)[0]
                if isinstance(x, tf.distribute.DistributedValues) else x, batch)
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build

    # Each step's logs are scalars; Keras reduces them with
    # strategy.reduce("MEAN", v, axis=0), which fails on a rank-0 value under
    # this strategy ("Invalid reduction dimension 0 for input with 0
    # dimensions"). A scalar is averaged over the replicas (axis=None), which is
    # what the Mirrored path computes (tf.reduce_mean of the local results).
    original_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                and reduction in ("auto", "mean")):
            def mean(value):
                rank = value.shape.rank if hasattr(value, "shape") else None
                if rank == 0 or (rank is None and isinstance(value, tf.distribute.DistributedValues)
                                 and strategy.experimental_local_results(value)[0].shape.rank == 0):
                    return strategy.reduce("MEAN", value, axis=None)
                return original_reduce(value, strategy, reduction)

            return tf.nest.map_structure(mean, values)
        return original_reduce(values, strategy, reduction)

    trainer.reduce_per_replica = reduce_per_replica
    _patched = True


def is_chief(strategy) -> bool:
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    return is_multiworker_chief()


def worker_run_dir(run_dir: str, strategy, log=print) -> tuple[str, bool]:
    """``(directory to write, is a temporary worker dir)`` for this process.

    The chief (and any non-multi-worker run) writes ``run_dir`` itself.
    """
    from aaa_keras.config import CONFIG_FILE, STAGES
    from aaa_keras.guard import BACKUP_DIR
    from aaa_keras.run_dir import DONE_FILE

    if is_chief(strategy):
        return run_dir, False
    task = strategy.cluster_resolver.task_id
    directory = tempfile.mkdtemp(prefix=f"aaa_keras_worker{task}_")
    if os.path.isfile(os.path.join(run_dir, CONFIG_FILE)):
        shutil.copy2(os.path.join(run_dir, CONFIG_FILE), directory)
    for stage in STAGES:
        shared = os.path.abspath(os.path.join(run_dir, stage))
        if os.path.isfile(os.path.join(shared, DONE_FILE)):
            os.symlink(shared, os.path.join(directory, stage))  # read only: weights of a finished stage
        elif os.path.isdir(os.path.join(shared, BACKUP_DIR)):
            shutil.copytree(os.path.join(shared, BACKUP_DIR), os.path.join(directory, stage, BACKUP_DIR))
    log(f"Worker {task} (not the chief): writing to the temporary {directory}; the chief writes {run_dir}")
    return directory, True


def remove_worker_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
