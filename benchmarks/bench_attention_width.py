"""Stage 2 and stage 3 steps of the demo preset at two attention-branch widths, in one process.

Times, round-robin (one call of each per round, so load from other processes
hits all alike; median over ``--rounds``): the stage-1 step of the preset's
recipe, and for each width of ``--filters``: stage 2 searching every step
(``--attention-targets per-step``, the path before issue 22), stage 2 reading
its targets from the table (``cached``, the default), and an occluded stage-3
step (``--adversarial-targets gated`` with the gate open for ``--gate-rate`` of
each batch: a random network's gate is almost never open on random data, so the
gate is forced, as in bench_steps.py). Ratios are against the stage-1 step and
against "stage 2, search every step" at the first width (the path of before
issue 22 at the old default). The main job alternates unabridged and occluded
stage-3 steps, so its stage-3 step is about the mean of a stage-1-like step and
the occluded one; that estimate is printed too.

    python benchmarks/bench_attention_width.py                     # widths 256 (old demo default) and 64
    python benchmarks/bench_attention_width.py --filters 256,64,32 --rounds 9
"""

from __future__ import annotations

import argparse
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
from bench_steps import FixedGateModel  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--filters", default="256,64", help="comma-separated widths; the first is the reference")
    parser.add_argument("--gate-rate", type=float, default=0.75,
                        help="share of each batch with eq. 4's gate open (demo data: 0.71-0.80 measured)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    command = "python benchmarks/bench_attention_width.py " + " ".join(sys.argv[1:] if argv is None else argv)
    widths = [int(w) for w in args.filters.split(",")]
    base_config = make_config(args.preset)
    base_config.num_classes = args.num_classes
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (base_config.batch_size, *base_config.image_size, 3)).astype("float32"))
    labels = tf.constant(np.repeat(np.arange(base_config.batch_size // 4) % args.num_classes, 4).astype("int32"))
    views = tf.range(base_config.batch_size)
    loss = NetworkLoss(base_config.label_smoothing, base_config.triplet_margin if base_config.triplet else None)

    def config_of(width):
        config = make_config(args.preset, attention_filters=width)
        config.num_classes = args.num_classes
        return config

    def stage2(config, cached):
        model = AttentionAssignmentModel(*build_stage_parts(config), config.grid_size, config.cells_per_call,
                                         attention_loss=config.attention_loss)
        model.compile(optimizer=keras.optimizers.SGD(config.attention_lr, momentum=0.9))
        if cached:
            model.set_target_table(rng.random((config.batch_size, config.grid_size ** 2)).astype("float32"))
        return model

    def stage3(config):
        parts, attention = build_stage_parts(config)
        model = FixedGateModel(parts, attention, config.grid_size, config.cells_per_call, config.occluded_fraction,
                               config.lambda1, config.lambda2, config.omega, take_turns=False,
                               attention_loss=config.attention_loss, loss=loss, targets="gated",
                               rate=args.gate_rate)
        model.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9))
        return model

    parts, _ = build_stage_parts(base_config)
    baseline = BaselineModel(parts, loss)
    baseline.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9))
    calls = {"stage 1 step": lambda: baseline.train_on_batch(images, labels, return_dict=True)}
    for width in widths:
        config = config_of(width)
        per_step, cached, adversarial = stage2(config, False), stage2(config, True), stage3(config)
        calls[f"{width} filters: stage 2, search every step"] = \
            lambda m=per_step: m.train_on_batch(images, labels, return_dict=True)
        calls[f"{width} filters: stage 2, cached targets"] = \
            lambda m=cached: m.train_on_batch((images, views), labels, return_dict=True)
        calls[f"{width} filters: stage 3 occluded step, gated"] = \
            lambda m=adversarial: m.train_on_batch(images, labels, return_dict=True)
    samples = round_robin(calls, args.rounds)
    t = {name: statistics.median(v) for name, v in samples.items()}
    base, before = t["stage 1 step"], t[f"{widths[0]} filters: stage 2, search every step"]
    print(f"Machine: {machine_description()} (shared with other jobs), TensorFlow {tf.__version__}, "
          f"Keras {keras.__version__}")
    print(f"Command: `{command}`")
    print(f"{base_config.backbone}, {base_config.image_size[0]}x{base_config.image_size[1]}, batch "
          f"{base_config.batch_size}, recipe {base_config.recipe}, gate open for {args.gate_rate:.2f}; median of "
          f"{args.rounds} round-robin rounds")
    print()
    print(f"| step | ms | / stage 1 | / stage 2 before ({widths[0]} filters, search every step) |")
    print("|---|---:|---:|---:|")
    for name in calls:
        print(f"| {name} | {t[name] * 1000:.0f} | {t[name] / base:.2f} | {t[name] / before:.2f} |")
    for width in widths:
        occluded = t[f"{width} filters: stage 3 occluded step, gated"]
        print(f"| {width} filters: stage 3, take turns (mean of a stage-1 step and an occluded one) | "
              f"{(base + occluded) / 2 * 1000:.0f} | {(base + occluded) / 2 / base:.2f} | |")
    print()
    print(spread_line(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
