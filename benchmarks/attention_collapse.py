"""Does stage 2's attention map collapse below zero? (docs/decisions.md, "attention collapse")

Trains the attention branch of a run's baseline for a few epochs with a
given initialisation and momentum, and prints the attention loss per epoch
and the fraction of positive positions of M_att at the end (the target M_occ
is 1 on 1/16 of the map, so a healthy map is positive on a few percent of
positions; 0 means it collapsed: eq. 2 then sends no gradient at all).

    python benchmarks/attention_collapse.py --run-dir runs/demo
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import machine_description  # noqa: E402  (puts the repo on sys.path)
import keras  # noqa: E402
import numpy as np  # noqa: E402

from aaa_keras.config import load_config  # noqa: E402
from aaa_keras.data.names import load_dataset  # noqa: E402
from aaa_keras.data.pipeline import train_dataset  # noqa: E402
from aaa_keras.model.stages import AttentionAssignmentModel  # noqa: E402
from aaa_keras.training import build_stage_parts, load_stage_weights  # noqa: E402


def trial(run_dir, init, lr, momentum, epochs, steps):
    config = load_config(run_dir)
    parts, attention = build_stage_parts(config)
    load_stage_weights(parts, attention, run_dir, "baseline")
    if init == "glorot-zero-bias":  # the usual Conv2D initialisation
        last = attention.get_layer("attention_map")
        kernel, bias = last.get_weights()
        limit = np.sqrt(6.0 / (kernel.shape[2] + 1))
        rng = np.random.default_rng(config.seed)
        last.set_weights([rng.uniform(-limit, limit, kernel.shape).astype(np.float32),
                          np.zeros_like(bias)])
    dataset = load_dataset(config.data)
    records = dataset.train_identities()
    labels, _ = dataset.relabel(records)
    data = train_dataset([r.path for r in records], labels, config.image_size, config.batch_size,
                         seed=config.seed)
    model = AttentionAssignmentModel(parts, attention, config.grid_size)
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=momentum))
    history = model.fit(data, epochs=epochs, steps_per_epoch=steps, verbose=0)
    images, _ = next(iter(data))
    attention_map = model(images).numpy()
    return history.history["attention_loss"], float((attention_map > 0).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/demo")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=17)
    args = parser.parse_args()
    print(f"machine: {machine_description()}; "
          f"command: python benchmarks/attention_collapse.py --run-dir {args.run_dir}\n")
    print("| last-layer init | lr | momentum | attention loss per epoch | positive fraction of M_att |")
    print("|---|---|---|---|---|")
    for init, lr, momentum in [("glorot-zero-bias", 1e-4, 0.9), ("glorot-zero-bias", 1e-5, 0.9),
                               ("small-kernel-bias-0.5", 1e-4, 0.9), ("small-kernel-bias-0.5", 1e-4, 0.0)]:
        losses, positive = trial(args.run_dir, init, lr, momentum, args.epochs, args.steps)
        print(f"| {init} | {lr:g} | {momentum} | {', '.join(f'{v:.2f}' for v in losses)} | {positive:.3f} |")


if __name__ == "__main__":
    main()
