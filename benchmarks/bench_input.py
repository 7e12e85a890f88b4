"""Images/s of the training input pipeline against the stage-1 step rate, in one run.

For each preset (``demo``: tiny_resnet at 128x64, P x K batches of 16 with
random erasing, the strong recipe it defaults to; ``paper``: ResNet-50 at
224x224, shuffled batches of 32) on the built-in synthetic data, with the
pipeline ``training.train_stage`` builds for stage 1:

1. ``train_dataset`` alone, decoding every epoch (``cache_bytes=0``) and with
   the decoded-image cache (the default for a split this small): images/s
   and the process CPU time per image (less sensitive to other jobs on a
   shared machine than wall time);
2. stage 1 (``BaselineModel.train_on_batch``) on one fixed in-memory batch:
   the step rate with no input work at all;
3. stage 1 fed from each pipeline (``next(iterator)`` then the step), as
   ``fit`` does: if this is slower than (2), the input is a bottleneck.

The steps of (2) and (3) are timed round-robin (one step of each per round,
medians over rounds), so the load of a shared machine hits them alike.
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
from aaa_keras.data.layouts import load_dataset  # noqa: E402
from aaa_keras.data.pipeline import train_dataset  # noqa: E402
from aaa_keras.data.synth import ensure_synthetic  # noqa: E402
from aaa_keras.model.stages import BaselineModel  # noqa: E402
from aaa_keras.run_dir import build_stage_parts  # noqa: E402

SETTINGS = {
    "demo": dict(preset="demo"),
    "paper": dict(preset="paper"),
    "256x128": dict(preset="paper", image_height=256, image_width=128, batch_size=16),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="demo,paper", help=f"comma-separated, of {list(SETTINGS)}")
    parser.add_argument("--batches", type=int, default=40, help="timed pipeline batches")
    parser.add_argument("--steps", type=int, default=10, help="timed stage-1 rounds (tiny_resnet; "
                        "a quarter of it, at least 3, for ResNet-50)")
    parser.add_argument("--warmup", type=int, default=3)
    return parser.parse_args(argv)


def pipeline_rate(dataset, batches, warmup, batch_size):
    """(images/s, process CPU ms per image) pulling batches as fast as possible."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        images, _ = next(iterator)
        images.numpy()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return batches * batch_size / seconds, 1000 * cpu / (batches * batch_size)


def round_robin_step_times(model, feeders, steps, warmup):
    """Median seconds per stage-1 step for each feeder, one step of each per round."""
    def step(next_batch):
        start = time.perf_counter()
        logs = model.train_on_batch(*next_batch(), return_dict=True)
        float(np.asarray(logs["loss"]))
        return time.perf_counter() - start

    for next_batch in feeders.values():
        for _ in range(warmup):
            step(next_batch)
    times = {name: [] for name in feeders}
    for _ in range(steps):
        for name, next_batch in feeders.items():
            times[name].append(step(next_batch))
    return {name: statistics.median(values) for name, values in times.items()}


def keras_erasing_pipeline(config, paths, labels):
    """The stage-1 pipeline as it was before issue 22: decoding every epoch, then
    ``keras.layers.RandomErasing`` on each batch (a full-size fill and mask per batch)."""
    from aaa_keras.data.pipeline import ERASING_FILL

    p = config.random_erasing_probability
    pk = dict(ids_per_batch=config.ids_per_batch, images_per_id=config.images_per_id) \
        if config.ids_per_batch else {}
    dataset = train_dataset(paths, labels, config.image_size, config.batch_size, seed=0,
                            cache_bytes=0, **pk)
    erasing = keras.layers.RandomErasing(factor=(p, p), fill_value=list(ERASING_FILL),
                                         value_range=(0, 255), seed=0)
    return dataset.map(lambda x, y: (erasing(x, training=True), y),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def stage1_pipeline(config, paths, labels, cache_bytes):
    """The stage-1 pipeline ``training.train_stage`` builds for ``config``."""
    erasing = config.random_erasing_probability if config.random_erasing else 0.0
    pk = dict(ids_per_batch=config.ids_per_batch, images_per_id=config.images_per_id) \
        if config.ids_per_batch else {}
    return train_dataset(paths, labels, config.image_size, config.batch_size, seed=0,
                         random_erasing_probability=erasing, cache_bytes=cache_bytes, **pk)


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
        setting = dict(SETTINGS[name])
        config = make_config(setting.pop("preset"), **setting)
        config.num_classes = data.num_classes
        size, batch = config.image_size, config.batch_size
        steps = args.steps if config.backbone == "tiny_resnet" else max(3, args.steps // 4)
        sampler = (f"P x K {config.ids_per_batch} x {config.images_per_id}" if config.ids_per_batch
                   else "shuffled") + (", erasing" if config.random_erasing else "")
        print(f"{name}: {config.backbone} {size[0]}x{size[1]}, batch {batch}, {sampler}", flush=True)
        streaming = stage1_pipeline(config, paths, labels, cache_bytes=0)
        start = time.perf_counter()
        cached = stage1_pipeline(config, paths, labels, cache_bytes=None)
        cache_seconds = time.perf_counter() - start
        pipelines = {"decode every epoch": streaming, "decoded cache": cached}
        if config.random_erasing:
            pipelines = {"before: keras RandomErasing per batch, decode every epoch":
                         keras_erasing_pipeline(config, paths, labels), **pipelines}
        rates = {key: pipeline_rate(pipeline, args.batches, args.warmup, batch)
                 for key, pipeline in pipelines.items()}

        parts, _ = build_stage_parts(config)
        model = BaselineModel(parts)
        model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9))
        fixed = next(iter(cached))
        iterators = {key: iter(pipeline) for key, pipeline in pipelines.items()}
        feeders = {"fixed": lambda: fixed}
        feeders.update({key: (lambda it=it: next(it)) for key, it in iterators.items()})
        step_seconds = round_robin_step_times(model, feeders, steps, args.warmup)
        fixed_rate = batch / step_seconds["fixed"]
        for key, (rate, cpu_ms) in rates.items():
            rows.append((name, config.backbone, size, batch, sampler, key, rate, cpu_ms, fixed_rate,
                         batch / step_seconds[key], steps))
        print(f"  decoding the cache took {cache_seconds:.1f} s", flush=True)

    print()
    print(f"Machine: {machine_description()} (shared with other jobs), "
          f"TensorFlow {tf.__version__}, Keras {keras.__version__}")
    print(f"Command: `{command}`")
    print(f"Data: built-in synthetic, {len(paths)} training images (JPEG, 128x64 on disk); "
          f"pipeline: {args.batches} batches after {args.warmup}; stage 1: median over "
          "round-robin rounds (fixed batch, fed by each pipeline)")
    print()
    print("| preset | backbone | input, batch | batches | pipeline | pipeline alone (img/s) | "
          "CPU ms / image | stage 1, fixed batch (img/s) | pipeline / stage 1 | "
          "stage 1 fed by the pipeline (img/s) | fed / fixed |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for (name, backbone, size, batch, sampler, key, rate, cpu_ms, fixed_rate, fed_rate,
         steps) in rows:
        print(f"| {name} | {backbone} | {size[0]}x{size[1]}, {batch} | {sampler} | {key} | {rate:.0f} | "
              f"{cpu_ms:.2f} | {fixed_rate:.1f} | {rate / fixed_rate:.1f} | {fed_rate:.1f} | "
              f"{fed_rate / fixed_rate:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
