"""Seconds per training step of stages 1-3 against the sum of their parts, timed in one run.

Every stage model (``BaselineModel``, ``AttentionAssignmentModel``,
``AdversarialModel``) runs ``train_on_batch`` on the same random batch; next to
it, the compute a step cannot avoid is timed part by part, each part its own
``tf.function``:

- stage 1 reference: one plain GradientTape step over stem + tail (forward,
  backward, SGD update);
- stage 2 = stem forward (inference) + ONE batched tail forward of the 16
  occluded copies + attention branch forward and backward (with its update);
- stage 3 = a stage-1 step with two tail passes (``tail(f)`` and
  ``tail(f * B)``, forward and backward through stem and both passes, update)
  + the batched 16-copy tail forward + attention branch forward and backward.

Stage 3 is timed with ``take_turns=False`` (every step occluded: the step the
parts describe); the take-turns average (half the steps unabridged) is shown
too.

Issue 22 rows, each against the same stage-1 step: stage 2 with its targets
read from the table of ``--attention-targets cached`` (fed ``(images,
views)``), and stage 3 with ``--adversarial-targets gated`` at the gate rates
of ``--gate-rates``: on random data a random network's gate is almost never
open, so these models open it for exactly that share of each batch (the loss
is then not eq. 4's, the cost is: the grid search runs on the open samples).
The rows "stage 3, sampled search" use ``--adversarial-targets sampled`` with
``--target-samples`` searched samples per step, the gate open for
``--sampled-gate-rate`` of each batch (the demo data's measured 71-80 %).
The rows "stage 2" and "stage 3" are the paths of before issue 22
(``per-step``, ``all``). Timing: after ``--warmup`` calls of everything (tracing excluded), the
callables are timed round-robin, one call each per round, so that load from
other processes hits all of them alike; the median over ``--steps`` rounds is
reported. Unless ``--no-xla``, the stages of ``--xla-stages`` are timed again
compiled with ``jit_compile=True`` (``--xla-steps`` calls each, after the
rounds), for the XLA decision.

    python benchmarks/bench_steps.py                          # ResNet-50, 64x32, batch 16
    python benchmarks/bench_steps.py --image-size 256x128     # the paper's input size (slow)
    python benchmarks/bench_steps.py --backbone tiny_resnet --image-size 128x64 --steps 3
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

from aaa_keras.config import make_config, parse_image_size  # noqa: E402
from aaa_keras.model.occlusion import grid_cells, occluded_copies, top_fraction_mask  # noqa: E402
from aaa_keras.model.stages import (AdversarialModel, AttentionAssignmentModel,  # noqa: E402
                                    BaselineModel)
from aaa_keras.run_dir import build_stage_parts  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50", choices=("resnet50", "tiny_resnet"))
    parser.add_argument("--image-size", default="64x32", help="HEIGHTxWIDTH (paper: 256x128)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--occlude-after", default="conv3")
    parser.add_argument("--steps", type=int, default=10, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each callable")
    parser.add_argument("--no-xla", dest="xla", action="store_false",
                        help="skip the jit_compile=True comparison")
    parser.add_argument("--xla-stages", default="1,2,3",
                        help="stages compared with jit_compile=True (stage 3 under XLA is ~40 s/step on CPU)")
    parser.add_argument("--xla-steps", type=int, default=3,
                        help="timed calls of each XLA model, after the main rounds")
    parser.add_argument("--gate-rates", default="0,0.25,0.5,1",
                        help="stage 3 with --adversarial-targets gated, the gate open for these shares")
    parser.add_argument("--target-samples", default="2,4",
                        help="stage 3 with --adversarial-targets sampled, this many open gates searched per step")
    parser.add_argument("--sampled-gate-rate", type=float, default=0.75,
                        help="the share of each batch whose gate is open in the sampled rows")
    return parser.parse_args(argv)


def sparse_ce(labels, logits):
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


def make_sgd(variables):
    optimizer = keras.optimizers.SGD(learning_rate=1e-4, momentum=0.9)
    optimizer.build(variables)
    return optimizer


class Parts:
    """The necessary compute of a step, part by part, each a ``tf.function``."""

    def __init__(self, config, images, labels):
        parts, attention = build_stage_parts(config, seed_offset=7)
        self.stem, self.tail, self.attention = parts.stem, parts.tail, attention
        self.images, self.labels = images, labels
        self.network_vars = list(parts.network.trainable_variables)
        self.attention_vars = list(attention.trainable_variables)
        self.network_opt = make_sgd(self.network_vars)
        self.network_opt2 = make_sgd(self.network_vars)
        self.attention_opt = make_sgd(self.attention_vars)
        self.features = self.stem(images, training=False)
        shape = self.features.shape
        self.cells = tf.constant(grid_cells(shape[1], shape[2], config.grid_size))
        rng = np.random.default_rng(0)
        self.target = tf.constant(rng.integers(0, 2, (shape[0], shape[1], shape[2], 1)).astype("float32"))
        self.mask = top_fraction_mask(tf.constant(rng.random((shape[0], shape[1], shape[2], 1)), tf.float32))

    @tf.function
    def stage1_step(self):
        """Forward + backward through stem and one tail pass, SGD update."""
        with tf.GradientTape() as tape:
            f = self.stem(self.images, training=True)
            loss = sparse_ce(self.labels, self.tail(f, training=True)[1])
        self.network_opt.apply(tape.gradient(loss, self.network_vars), self.network_vars)
        return loss

    @tf.function
    def stem_forward(self):
        return tf.reduce_sum(self.stem(self.images, training=False))

    @tf.function
    def sixteen_tails_forward(self):
        """The 16 occluded copies of ``f`` through the frozen tail in one call, + argmin."""
        logits = self.tail(occluded_copies(self.features, self.cells), training=False)[1]
        p = tf.nn.softmax(logits)
        return tf.reduce_sum(tf.argmin(tf.reshape(p[:, 0], (tf.shape(self.features)[0], -1)), axis=1))

    @tf.function
    def attention_forward_backward(self):
        with tf.GradientTape() as tape:
            m = self.attention(self.features, training=True)
            loss = tf.reduce_mean(tf.reduce_sum(tf.abs(tf.nn.relu(m) - self.target), axis=[1, 2, 3])
                                  + tf.nn.softplus(-tf.reduce_sum(tf.abs(m), axis=[1, 2, 3])))
        self.attention_opt.apply(tape.gradient(loss, self.attention_vars), self.attention_vars)
        return loss

    @tf.function
    def stage1_step_two_tails(self):
        """Forward + backward through stem, ``tail(f)`` and ``tail(f * B)``, SGD update."""
        with tf.GradientTape() as tape:
            f = self.stem(self.images, training=True)
            loss = (sparse_ce(self.labels, self.tail(f, training=True)[1])
                    + sparse_ce(self.labels, self.tail(f * self.mask, training=True)[1]))
        self.network_opt2.apply(tape.gradient(loss, self.network_vars), self.network_vars)
        return loss


class FixedGateModel(AdversarialModel):
    """Stage 3 whose gate is open for exactly ``rate`` of each batch (the first samples): for timing."""

    def __init__(self, *args, rate: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.rate = rate

    def _gate(self, p_bf, p_af):
        size = tf.shape(p_bf)[0]
        open_count = tf.cast(tf.round(self.rate * tf.cast(size, tf.float32)), tf.int32)
        return tf.cast(tf.range(size) < open_count, tf.float32)


def stage_model(stage, config, jit_compile, take_turns=False, targets="all", gate_rate=None,
                target_samples=4):
    parts, attention = build_stage_parts(config)
    if stage == "baseline":
        model = BaselineModel(parts)
    elif stage == "attention":
        model = AttentionAssignmentModel(parts, attention, config.grid_size, config.cells_per_call)
    else:
        kind = AdversarialModel if gate_rate is None else FixedGateModel
        extra = {} if gate_rate is None else {"rate": gate_rate}
        model = kind(parts, attention, config.grid_size, config.cells_per_call,
                     config.occluded_fraction, config.lambda1, config.lambda2,
                     config.omega, take_turns=take_turns, targets=targets,
                     target_samples=target_samples, **extra)
    model.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9), jit_compile=jit_compile)
    return model


def sampled_name(count: int, rate: float) -> str:
    """The row name of the sampled-search step with ``count`` searched samples and gate ``rate``."""
    return f"stage 3, sampled search ({count} per step), gate open {rate:.0%}"


def time_call(fn) -> float:
    start = time.perf_counter()
    out = fn()
    if isinstance(out, dict):
        float(np.asarray(next(iter(out.values()))))
    else:
        float(np.asarray(out))
    return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    command = "python benchmarks/bench_steps.py " + " ".join(sys.argv[1:] if argv is None else argv)
    height, width = parse_image_size(args.image_size)
    config = make_config("demo", recipe="paper", backbone=args.backbone, image_height=height, image_width=width,
                         batch_size=args.batch_size, occlude_after=args.occlude_after)
    config.num_classes = args.num_classes
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (args.batch_size, height, width, 3)).astype("float32"))
    labels = tf.constant(rng.integers(0, args.num_classes, args.batch_size).astype("int32"))

    print(f"Building models ({args.backbone}, {height}x{width}, batch {args.batch_size})...", flush=True)
    models = {
        "stage 1": stage_model("baseline", config, False),
        "stage 2": stage_model("attention", config, False),
        "stage 3": stage_model("adversarial", config, False),
        "stage 3, take turns": stage_model("adversarial", config, False, take_turns=True),
    }
    models["stage 2, cached targets"] = stage_model("attention", config, False)
    views = tf.range(args.batch_size)
    models["stage 2, cached targets"].set_target_table(
        rng.random((args.batch_size, config.grid_size ** 2)).astype("float32"))
    gate_rates = [float(r) for r in args.gate_rates.split(",") if r.strip()]
    for rate in gate_rates:
        models[f"stage 3, gated search, gate open {rate:.0%}"] = stage_model(
            "adversarial", config, False, targets="gated", gate_rate=rate)
    sampled = [int(n) for n in args.target_samples.split(",") if n.strip()]
    for count in sampled:
        models[sampled_name(count, args.sampled_gate_rate)] = stage_model(
            "adversarial", config, False, targets="sampled", gate_rate=args.sampled_gate_rate,
            target_samples=count)
    xla_names = []
    if args.xla:
        wanted = {s.strip() for s in args.xla_stages.split(",")}
        for number, stage in (("1", "baseline"), ("2", "attention"), ("3", "adversarial")):
            if number in wanted:
                models[f"stage {number} XLA"] = stage_model(stage, config, True)
                xla_names.append(f"stage {number}")
    parts = Parts(config, images, labels)
    callables = {name: (lambda m=model: m.train_on_batch(images, labels, return_dict=True))
                 for name, model in models.items()}
    callables["stage 2, cached targets"] = lambda m=models["stage 2, cached targets"]: m.train_on_batch(
        (images, views), labels, return_dict=True)
    callables.update({
        "part: stage-1 step (plain tf.function)": parts.stage1_step,
        "part: stem forward": parts.stem_forward,
        "part: 16 occluded tails, one batched forward": parts.sixteen_tails_forward,
        "part: attention branch forward + backward": parts.attention_forward_backward,
        "part: stage-1 step with two tail passes": parts.stage1_step_two_tails,
    })

    tracing = {}
    for name, fn in callables.items():
        start = time.perf_counter()
        for _ in range(args.warmup):
            time_call(fn)
        tracing[name] = time.perf_counter() - start
        print(f"  warm-up {name}: {tracing[name]:.1f} s", flush=True)
    samples = {name: [] for name in callables}
    plain = [name for name in callables if not name.endswith(" XLA")]
    rounds = args.steps + (args.steps % 2)  # even, so take-turns alternates evenly
    for r in range(rounds):
        for name in plain:
            samples[name].append(time_call(callables[name]))
        print(f"  round {r + 1}/{rounds} done", flush=True)
    # XLA models last and on their own: stage 3 under XLA on CPU would swamp the rounds.
    for r in range(args.xla_steps):
        for name in xla_names:
            samples[name + " XLA"].append(time_call(callables[name + " XLA"]))
        print(f"  XLA call {r + 1}/{args.xla_steps} done", flush=True)
    t = {name: statistics.median(values) for name, values in samples.items()}
    t["stage 3, take turns"] = statistics.fmean(samples["stage 3, take turns"])

    stage2_parts = (t["part: stem forward"] + t["part: 16 occluded tails, one batched forward"]
                    + t["part: attention branch forward + backward"])
    stage3_parts = (t["part: stage-1 step with two tail passes"]
                    + t["part: 16 occluded tails, one batched forward"]
                    + t["part: attention branch forward + backward"])
    turns_parts = 0.5 * (t["part: stage-1 step (plain tf.function)"] + stage3_parts)
    base = t["stage 1"]

    print()
    print(f"Machine: {machine_description()} (load average {os.getloadavg()[0]:.1f} at the end), "
          f"TensorFlow {tf.__version__}, Keras {keras.__version__}")
    print(f"Command: `{command}`")
    print(f"{args.backbone} split after {args.occlude_after}, input {height}x{width}, batch "
          f"{args.batch_size}, {args.num_classes} classes; median of {rounds} round-robin rounds "
          f"after {args.warmup} warm-up calls (take turns: mean)")
    print()
    print("| step | s / step | / stage 1 | sum of parts (s) | step / parts |")
    print("|---|---|---|---|---|")
    print(f"| stage 1 (baseline) | {base:.3f} | 1.00 | {t['part: stage-1 step (plain tf.function)']:.3f} "
          f"| {base / t['part: stage-1 step (plain tf.function)']:.2f} |")
    print(f"| stage 2 (attention assignment) | {t['stage 2']:.3f} | {t['stage 2'] / base:.2f} | "
          f"{stage2_parts:.3f} | {t['stage 2'] / stage2_parts:.2f} |")
    print(f"| stage 3 (adversarial, occluded step) | {t['stage 3']:.3f} | {t['stage 3'] / base:.2f} | "
          f"{stage3_parts:.3f} | {t['stage 3'] / stage3_parts:.2f} |")
    print(f"| stage 3 with take turns (mean) | {t['stage 3, take turns']:.3f} | "
          f"{t['stage 3, take turns'] / base:.2f} | {turns_parts:.3f} | "
          f"{t['stage 3, take turns'] / turns_parts:.2f} |")
    print()
    print("Issue 22 (same rounds; the rows above are the paths before it):")
    print()
    print("| step | s / step | / stage 1 | / the same step before |")
    print("|---|---|---|---|")
    name = "stage 2, cached targets"
    print(f"| {name} | {t[name]:.3f} | {t[name] / base:.2f} | {t[name] / t['stage 2']:.2f} |")
    for rate in gate_rates:
        name = f"stage 3, gated search, gate open {rate:.0%}"
        print(f"| {name} (occluded step) | {t[name]:.3f} | {t[name] / base:.2f} | {t[name] / t['stage 3']:.2f} |")
    for count in sampled:
        name = sampled_name(count, args.sampled_gate_rate)
        print(f"| {name} (occluded step) | {t[name]:.3f} | {t[name] / base:.2f} | {t[name] / t['stage 3']:.2f} |")
    cached_parts = t["part: stem forward"] + t["part: attention branch forward + backward"]
    print(f"\nStage 2 cached, sum of its parts (stem forward + attention forward/backward): "
          f"{cached_parts:.3f} s ({cached_parts / base:.2f} x stage 1)")
    print()
    print("| part (own tf.function) | s / call | / stage 1 |")
    print("|---|---|---|")
    for name in callables:
        if name.startswith("part: "):
            print(f"| {name[6:]} | {t[name]:.3f} | {t[name] / base:.2f} |")
    if xla_names:
        print()
        print("| stage | s / step, jit_compile=False | s / step, jit_compile=True | XLA / no XLA | "
              "warm-up (tracing) s, off / on |")
        print("|---|---|---|---|---|")
        for name in xla_names:
            print(f"| {name} | {t[name]:.3f} | {t[name + ' XLA']:.3f} | {t[name + ' XLA'] / t[name]:.2f} | "
                  f"{tracing[name]:.0f} / {tracing[name + ' XLA']:.0f} |")
    print()
    print("Spread (min-max s over rounds): " + "; ".join(
        f"{name}: {min(v):.3f}-{max(v):.3f}" for name, v in samples.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
