"""Stage 2's step on the demo preset: grid search every step vs targets read from the cached table.

Times, round-robin in one process (median over ``--rounds``; the machine is
shared, so the ratios are the result): the stage-1 step of the preset's
recipe, stage 2 searching every step (``--attention-targets per-step``),
stage 2 reading its targets from the table (``cached``), and the parts the
cached step cannot avoid: the attention branch forward + backward (with its
SGD update) and the frozen stem's forward.

    python benchmarks/bench_stage2.py                      # demo preset: tiny_resnet, 128x64, batch 16
    python benchmarks/bench_stage2.py --attention-filters 64
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys

from common import machine_description, round_robin, spread_line  # noqa: E402  (puts the repo on sys.path)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from aaa_keras.config import make_config  # noqa: E402
from aaa_keras.model.stages import AttentionAssignmentModel, BaselineModel, NetworkLoss  # noqa: E402
from aaa_keras.run_dir import build_stage_parts  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--attention-filters", type=int, default=None, help="[default: the preset's]")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    command = "python benchmarks/bench_stage2.py " + " ".join(sys.argv[1:] if argv is None else argv)
    config = make_config(args.preset, attention_filters=args.attention_filters)
    config.num_classes = args.num_classes
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (config.batch_size, *config.image_size, 3)).astype("float32"))
    labels = tf.constant(rng.integers(0, args.num_classes, config.batch_size).astype("int32"))

    def stage2():
        model = AttentionAssignmentModel(*build_stage_parts(config), config.grid_size, config.cells_per_call,
                                         attention_loss=config.attention_loss)
        model.compile(optimizer=keras.optimizers.SGD(config.attention_lr, momentum=0.9))
        return model

    parts, _ = build_stage_parts(config)
    baseline = BaselineModel(parts, NetworkLoss(config.label_smoothing,
                                                config.triplet_margin if config.triplet else None))
    baseline.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9))
    per_step, cached = stage2(), stage2()
    cached.set_target_table(rng.random((config.batch_size, config.grid_size ** 2)).astype("float32"))
    views = tf.range(config.batch_size)
    features = cached.stem(images, training=False)
    attention = cached.attention
    optimizer = keras.optimizers.SGD(1e-3, momentum=0.9)
    optimizer.build(attention.trainable_variables)

    @tf.function
    def attention_step():
        with tf.GradientTape() as tape:
            maps = attention(features, training=True)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(tf.zeros_like(maps), maps))
        optimizer.apply(tape.gradient(loss, attention.trainable_variables), attention.trainable_variables)
        return loss

    @tf.function
    def stem_forward():
        return tf.reduce_sum(cached.stem(images, training=False))

    calls = {
        "stage 1 step": lambda: baseline.train_on_batch(images, labels, return_dict=True),
        "stage 2, search every step (before)": lambda: per_step.train_on_batch(images, labels, return_dict=True),
        "stage 2, cached targets": lambda: cached.train_on_batch((images, views), labels, return_dict=True),
        "part: attention branch forward + backward": attention_step,
        "part: stem forward": stem_forward,
    }
    samples = round_robin(calls, args.rounds)
    t = {name: statistics.median(v) for name, v in samples.items()}
    base, before = t["stage 1 step"], t["stage 2, search every step (before)"]
    print(f"Machine: {machine_description()} (shared with other jobs), TensorFlow {tf.__version__}, "
          f"Keras {keras.__version__}")
    print(f"Command: `{command}`")
    print(f"{config.backbone}, {config.image_size[0]}x{config.image_size[1]}, batch {config.batch_size}, "
          f"recipe {config.recipe}, feature map {tuple(features.shape[1:])}, attention filters "
          f"{config.attention_filters or 'auto (clip(channels of f, 64, 256))'}; median of {args.rounds} round-robin rounds")
    print()
    print("| step | ms | / stage 1 | / stage 2 before |")
    print("|---|---|---|---|")
    for name in calls:
        print(f"| {name} | {t[name] * 1000:.0f} | {t[name] / base:.2f} | {t[name] / before:.2f} |")
    print()
    print(spread_line(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
