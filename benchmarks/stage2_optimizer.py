"""Stage 2's optimizer: which learning rate and momentum make the attention map useful fastest?

Trains stage 2 (the attention branch only) from a run's trained baseline for
each setting and prints the attention diagnostics afterwards
(``aaa_keras/model/diagnostics.py``: hit rate, argmax agreement, efficacy,
positive fraction), on the same 64 fixed training crops every run logs.
docs/decisions.md ("Stage 2 optimizer") records its output.

    python benchmarks/stage2_optimizer.py --run-dir runs/demo
    python benchmarks/stage2_optimizer.py --run-dir runs/demo --loss l1 --settings 1e-4,0 1e-4,0.9
"""

import argparse
import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import machine_description  # noqa: E402  (puts the repo on sys.path)

from aaa_keras.config import load_config  # noqa: E402
from aaa_keras.data.layouts import load_dataset  # noqa: E402
from aaa_keras.data.pipeline import train_dataset  # noqa: E402
from aaa_keras.data.source import resolve_run_data  # noqa: E402
from aaa_keras.model.diagnostics import attention_diagnostics  # noqa: E402
from aaa_keras.model.stages import AttentionAssignmentModel  # noqa: E402
from aaa_keras.run_dir import build_stage_parts, load_stage_weights  # noqa: E402
from aaa_keras.training import diagnostics_callback, make_optimizer  # noqa: E402


def trial(run_dir, loss, lr, momentum, epochs, decay_epochs=None):
    config = dataclasses.replace(load_config(run_dir), attention_lr=lr, attention_momentum=momentum)
    if decay_epochs:
        config = dataclasses.replace(config, attention_lr_decay_epochs=decay_epochs)
    dataset = load_dataset(resolve_run_data(None, config.data, run_dir))
    parts, attention = build_stage_parts(config)
    load_stage_weights(parts, attention, run_dir, "baseline", with_attention=False)
    records = dataset.train_identities()
    labels, _ = dataset.relabel(records)
    data = train_dataset([r.path for r in records], labels, config.image_size, config.batch_size,
                         seed=config.seed)
    steps = len(records) // config.batch_size
    model = AttentionAssignmentModel(parts, attention, config.grid_size, attention_loss=loss)
    model.compile(optimizer=make_optimizer(config, "attention", steps))
    model.fit(data, epochs=epochs, steps_per_epoch=steps, verbose=0)
    probe = diagnostics_callback("attention", config, dataset, log=lambda *_: None)
    return attention_diagnostics(parts.stem, parts.tail, probe.images, probe.labels, "attention",
                                 attention, config.grid_size, config.occluded_fraction, config.seed)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/demo", help="a run dir with a trained baseline")
    parser.add_argument("--loss", default="bce", choices=["l1", "bce", "soft"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--settings", nargs="+", default=["1e-4,0", "1e-4,0.9", "1e-3,0.9"],
                        help="learning rate,momentum[,decay epochs] (default decay: the run's)")
    args = parser.parse_args()
    print(f"machine: {machine_description()}\ncommand: python benchmarks/stage2_optimizer.py "
          f"--run-dir {args.run_dir} --loss {args.loss} --epochs {args.epochs} "
          f"--settings {' '.join(args.settings)}\n")
    print("| loss | lr | momentum | lr x0.1 every | hit rate | argmax = k* | cell rank corr. | efficacy | "
          "positive fraction |")
    print("|---|---|---|---|---|---|---|---|---|")
    for setting in args.settings:
        values = setting.split(",")
        lr, momentum = float(values[0]), float(values[1])
        decay = int(values[2]) if len(values) > 2 else None
        r = trial(args.run_dir, args.loss, lr, momentum, args.epochs, decay)
        print(f"| {args.loss} | {lr:g} | {momentum:g} | {decay or 'run'} | {r['hit_rate']:.2f} | "
              f"{r['argmax_agreement']:.2f} | "
              f"{r['cell_rank_correlation']:.2f} | {r['efficacy']:.1f} | {r['positive_fraction']:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
