"""One training step of a stage on one device and under MirroredStrategy(2 logical CPUs).

Prints JSON: the first-step loss of each run and the largest difference of any
variable after the step. Run in a fresh process (the logical devices must be
set up before TensorFlow runs any op):  python mirrored_step.py STAGE
BatchNorm layers are frozen (inference statistics) so both runs compute the
same function: tf.distribute does not synchronise BatchNorm statistics
across replicas (docs/scaling.md).
"""

import json
import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
os.environ["AAA_KERAS_LOGICAL_CPUS"] = "2"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from aaa_keras.model.attention import build_attention_branch  # noqa: E402
from aaa_keras.model.backbone import build_parts  # noqa: E402
from aaa_keras.model.stages import AdversarialModel, AttentionAssignmentModel, BaselineModel  # noqa: E402
from aaa_keras.execution import distribution_strategy  # noqa: E402

STAGE = sys.argv[1]
mirrored = distribution_strategy("mirrored")  # creates the two logical CPUs first
single = tf.distribute.get_strategy()
rng = np.random.default_rng(0)
images = rng.uniform(0, 255, (8, 64, 32, 3)).astype(np.float32)
labels = rng.integers(0, 4, 8).astype(np.int32)


def one_step(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        parts = build_parts(4, (64, 32), "tiny_resnet", "conv3", dropout=0.0)
        attention = build_attention_branch(parts.stem.output.shape[1:], filters=8, seed=0)
        for layer in parts.network._flatten_layers() + attention._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        model = {"baseline": lambda: BaselineModel(parts),
                 "attention": lambda: AttentionAssignmentModel(parts, attention),
                 "adversarial": lambda: AdversarialModel(parts, attention, omega=-1.0,
                                                         take_turns=False)}[STAGE]()
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    before = [v.numpy() for v in model.trainable_variables]
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    history = model.fit(data, epochs=1, verbose=0)
    change = max(float(np.abs(a - v.numpy()).max()) for a, v in zip(before, model.trainable_variables))
    weights = [v.numpy() for v in parts.network.variables + attention.variables]
    initial = {id(v): a for a, v in zip(before, model.trainable_variables)}
    updates = [v.numpy() - initial[id(v)] if id(v) in initial else np.zeros(v.shape, np.float32)
               for v in parts.network.variables + attention.variables]
    return {k: float(v[0]) for k, v in history.history.items()}, weights, change, updates


def relative_weight_difference(weights_a, weights_b, updates):
    """Largest ``|a - b|`` of any variable, relative to that variable's step and magnitude.

    The two runs sum the same float32 numbers in another order (two replicas,
    then an all-reduce), and oneDNN picks other kernels on Intel and AMD CPUs,
    so the weights may differ by a few ulps of the update. Each variable's
    difference is divided by its largest update plus a float32 ulp of its
    largest magnitude; a loss not divided by the global batch (a x2 step) gives
    1.0 here (measured), rounding ~1e-6.
    """
    ratios = []
    for a, b, update in zip(weights_a, weights_b, updates):
        scale = float(np.abs(update).max()) + float(np.finfo(np.float32).eps) * float(np.abs(a).max())
        difference = float(np.abs(a - b).max())
        ratios.append(0.0 if difference == 0.0 else difference / max(scale, 1e-30))
    return max(ratios)


metrics_one, weights_one, change_one, updates_one = one_step(single)
metrics_two, weights_two, change_two, _ = one_step(mirrored)
print(json.dumps({
    "replicas": [single.num_replicas_in_sync, mirrored.num_replicas_in_sync],
    "max_update": [change_one, change_two],
    "metrics_single": metrics_one,
    "metrics_mirrored": metrics_two,
    "max_weight_difference": max(float(np.abs(a - b).max()) for a, b in zip(weights_one, weights_two)),
    "relative_weight_difference": relative_weight_difference(weights_one, weights_two, updates_one),
}))
