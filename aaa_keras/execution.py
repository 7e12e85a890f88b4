"""Where and how TensorFlow runs: the distribution strategy and the precision policy.

Kept apart from training so that evaluation and export choose them the same way.
"""

from __future__ import annotations

import contextlib
import os

from aaa_keras.config import DISTRIBUTE_STRATEGIES
from aaa_keras.errors import UserError

LOGICAL_CPUS_ENV = "AAA_KERAS_LOGICAL_CPUS"


def split_cpu_into_logical_devices(count: int) -> None:
    """Expose ``count`` logical CPU devices, so MirroredStrategy has replicas on a CPU machine.

    Must run before TensorFlow executes any op; for correctness checks, not speed.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) >= count:
        return  # already split (reading the configuration does not initialise TensorFlow)
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as error:
        raise UserError(f"{LOGICAL_CPUS_ENV}={count}: TensorFlow was already initialised "
                        f"({error}); set the variable before the process starts") from None


def distribution_strategy(name: str):
    """``none`` -> the default strategy; ``mirrored`` / ``multiworker`` -> tf.distribute's.

    ``mirrored`` uses every GPU, or, with ``AAA_KERAS_LOGICAL_CPUS=N`` set, N
    logical CPU devices; ``multiworker`` reads the cluster from ``TF_CONFIG``.
    """
    import tensorflow as tf

    if name == "none":
        return tf.distribute.get_strategy()
    logical_cpus = int(os.environ.get(LOGICAL_CPUS_ENV, "0") or 0)
    if logical_cpus > 1:
        split_cpu_into_logical_devices(logical_cpus)
    if name == "mirrored":
        if logical_cpus > 1 and not tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy(
                [f"/cpu:{i}" for i in range(logical_cpus)])
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        from aaa_keras.multiworker import patch_keras_symbolic_build

        patch_keras_symbolic_build()  # Keras 3's fit cannot start under this strategy without it
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise UserError(f"--distribute: got {name!r}; expected one of {', '.join(DISTRIBUTE_STRATEGIES)}")


@contextlib.contextmanager
def precision_policy(name: str):
    """Keras' global dtype policy ``name`` (``""`` = float32) inside the block; the previous
    policy is restored on the way out, also when the block raises."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name or "float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
