"""Stage 3 retrained with another ``--adversarial-targets`` on an ablate grid's own weights: does retrieval move?

For each seed of a finished grid (``ablate``'s ``OUT/seed<S>/aaa_conv3``), the run's stage-1 and
stage-2 weights and config are copied to ``--out``/``<targets><N>_s<S>``, stage 3 is trained again
with ``--targets`` (and ``--samples`` for ``sampled``), everything else as the grid trained it, and
the copies are compared per query with the grid's own stage 3 (``compare_runs``: the crossed
bootstrap over seeds and queries), beside the attention diagnostics of the last epoch. Finished
copies (a ``done`` file) are reused.

    python benchmarks/stage3_target_quality.py --grid runs/ablate --out /tmp/sampled --targets sampled --samples 4
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys

from common import machine_description  # noqa: E402  (puts the repo on sys.path)
from epoch_log_ratios import DIAGNOSTICS  # noqa: E402  (the stage-3 diagnostics, gate rate included)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from aaa_keras.config import ADVERSARIAL_TARGETS  # noqa: E402


def retrain(source: str, target: str, targets: str, samples: int) -> None:
    from aaa_keras import training
    from aaa_keras.config import load_config

    if os.path.exists(os.path.join(target, "done")):
        return
    if not os.path.isdir(target):  # a half-trained copy resumes through fit's own resume
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("adversarial", "ablation_eval.json", "*.lock"))
    config = dataclasses.replace(load_config(target), adversarial_targets=targets,
                                 adversarial_target_samples=samples)
    training.fit("adversarial", config, target)
    open(os.path.join(target, "done"), "w").close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", required=True, help="a finished ablate grid (OUT of `python cli.py ablate`)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--targets", default="sampled", choices=ADVERSARIAL_TARGETS)
    parser.add_argument("--samples", type=int, default=4, help="--adversarial-target-samples")
    parser.add_argument("--config", default="aaa_conv3", help="the grid's configuration to retrain")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    sources = [os.path.join(args.grid, f"seed{s}", args.config) for s in range(args.seeds)]
    copies = [os.path.join(args.out, f"{args.targets}{args.samples}_s{s}") for s in range(args.seeds)]
    for source, copy in zip(sources, copies):
        retrain(source, copy, args.targets, args.samples)

    from compare_runs import MEASURES, difference_cell, per_query

    from aaa_keras.run_dir import read_done

    grid, retrained = per_query(sources, "adversarial"), per_query(copies, "adversarial")
    print(f"\nMachine: {machine_description()}")
    print(f"{args.config} of {args.grid}, seeds 0-{args.seeds - 1}: the grid's stage 3 (A) against stage 3 "
          f"retrained with --adversarial-targets {args.targets} (N = {args.samples}) (B); Euclidean.\n")
    print("| measure | A per seed | B per seed | B - A [95 % CI] |")
    print("|---|---|---|---|")
    for name in MEASURES:
        print(f"| {name} | {' / '.join(f'{v:.1f}' for v in grid[name].mean(axis=1))} | "
              f"{' / '.join(f'{v:.1f}' for v in retrained[name].mean(axis=1))} | "
              f"{difference_cell(retrained[name], grid[name])} |")
    print("\n| stage 3 | " + " | ".join(DIAGNOSTICS) + " |")
    print("|---|" + "---|" * len(DIAGNOSTICS))
    for label, runs in (("A (grid)", sources), ("B (retrained)", copies)):
        finals = [read_done(run, "adversarial")["final_metrics"] for run in runs]
        means = [sum(f[k] for f in finals) / len(finals) for k in DIAGNOSTICS]
        print(f"| {label}, mean of {len(runs)} seeds | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
