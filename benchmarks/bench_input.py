"""Images/s of the training input pipeline against the stage-1 step rate, in one run.

For each setting (the demo's tiny_resnet at 128x64, ResNet-50 at the paper's
256x128) on the built-in synthetic data:

1. ``train_dataset`` alone: batches pulled as fast as possible (decode,
   resize, flip, pad-crop, batch, prefetch), after ``--warmup`` batches;
2. stage 1 (``BaselineModel.train_on_batch``) on one fixed in-memory batch:
   the step rate with no input work at all;
3. stage 1 fed from ``train_dataset`` (``next(iterator)`` then the step), as
   ``fit`` does: if this is slower than (2), the input is a bottleneck.

Ratio = pipeline images/s / stage-1 images/s; above 1 the input keeps up.
On a CPU-only machine both share the same cores, which (3) accounts for.

    python benchmarks/bench_input.py
    python benchmarks/bench_input.py --settings demo --steps 3 --batches 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from common import machine_description  # noqa: E402  (puts the repo on sys.path)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from aaa_keras.config import make_config  # noqa: E402
from aaa_keras.data.names import load_dataset  # noqa: E402
from aaa_keras.data.pipeline import train_dataset  # noqa: E402
from aaa_keras.data.synth import ensure_synthetic  # noqa: E402
from aaa_keras.model.stages import BaselineModel  # noqa: E402
from aaa_keras.run_dir import build_stage_parts  # noqa: E402

SETTINGS = {
    "demo": dict(backbone="tiny_resnet", image_height=128, image_width=64),
    "256x128": dict(backbone="resnet50", image_height=256, image_width=128),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="demo,256x128", help=f"comma-separated, of {list(SETTINGS)}")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=40, help="timed pipeline batches")
    parser.add_argument("--steps", type=int, default=10, help="timed stage-1 steps (demo size; "
                        "a quarter of it, at least 2, for ResNet-50 at 256x128)")
    parser.add_argument("--warmup", type=int, default=3)
    return parser.parse_args(argv)


def pipeline_rate(dataset, batches, warmup, batch_size):
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = next(iterator)
        images.numpy()
    return batches * batch_size / (time.perf_counter() - start)


def step_times(model, next_batch, steps, warmup):
    for _ in range(warmup):
        model.train_on_batch(*next_batch(), return_dict=True)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        logs = model.train_on_batch(*next_batch(), return_dict=True)
        float(np.asarray(logs["loss"]))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    command = "python benchmarks/bench_input.py " + " ".join(sys.argv[1:] if argv is None else argv)
    root = ensure_synthetic(log=lambda m: None)
    data = load_dataset(root)
    records = data.train_identities()
    labels, _ = data.relabel(records)
    paths = [r.path for r in records]
    rows = []
    for name in [s.strip() for s in args.settings.split(",") if s.strip()]:
        setting = SETTINGS[name]
        size = (setting["image_height"], setting["image_width"])
        steps = args.steps if setting["backbone"] == "tiny_resnet" else max(2, args.steps // 4)
        print(f"{name}: {setting['backbone']} {size[0]}x{size[1]}, batch {args.batch_size}", flush=True)
        dataset = train_dataset(paths, labels, size, args.batch_size, seed=0)
        input_rate = pipeline_rate(dataset, args.batches, args.warmup, args.batch_size)

        config = make_config("demo", recipe="paper", batch_size=args.batch_size, **setting)
        config.num_classes = data.num_classes
        parts, _ = build_stage_parts(config)
        model = BaselineModel(parts)
        model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9))
        fixed = next(iter(dataset))
        fixed_time = step_times(model, lambda: fixed, steps, args.warmup)
        iterator = iter(dataset)
        fed_time = step_times(model, lambda: next(iterator), steps, args.warmup)
        rows.append((name, setting["backbone"], size, input_rate, args.batch_size / fixed_time,
                     args.batch_size / fed_time, steps))

    print()
    print(f"Machine: {machine_description()} (shared with other jobs), "
          f"TensorFlow {tf.__version__}, Keras {keras.__version__}")
    print(f"Command: `{command}`")
    print(f"Data: built-in synthetic, {len(paths)} training images (JPEG, 128x64 on disk); "
          f"batch {args.batch_size}; pipeline: {args.batches} batches after {args.warmup}; "
          "stage 1: median step")
    print()
    print("| setting | backbone | input | pipeline alone (img/s) | stage 1, fixed batch (img/s) | "
          "pipeline / stage 1 | stage 1 fed by the pipeline (img/s) | fed / fixed |")
    print("|---|---|---|---|---|---|---|---|")
    for name, backbone, size, input_rate, fixed_rate, fed_rate, steps in rows:
        print(f"| {name} | {backbone} | {size[0]}x{size[1]} | {input_rate:.0f} | {fixed_rate:.1f} | "
              f"{input_rate / fixed_rate:.1f} | {fed_rate:.1f} | {fed_rate / fixed_rate:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
