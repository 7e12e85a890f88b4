"""Retrieval of two settings trained on the same seeds, paired per query: is the difference noise?

``--a`` and ``--b`` are run directories, one per seed, in the same seed order
(the runs of a seed should share their stage-1 weights, e.g. a copied
``baseline/``). Each is evaluated per query (Euclidean; the ablate grid's
``evaluate_per_query``), and ``b - a`` is summarised with the ablate grid's
paired bootstrap over seeds and queries (``ablation_stats.paired_difference``,
crossed design): mean difference, 95 % interval, and the seed-to-seed spread
of each setting (max - min of its per-seed means) to compare it with.

    python benchmarks/compare_runs.py --a runs/w256_s0 runs/w256_s1 --b runs/w64_s0 runs/w64_s1
"""

from __future__ import annotations

import argparse
import os
import sys

from common import machine_description  # noqa: E402,F401  (puts the repo on sys.path)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from aaa_keras.ablate.run import evaluate_per_query  # noqa: E402
from aaa_keras.evaluation.ablation_stats import paired_difference  # noqa: E402

MEASURES = {"rank1": lambda q: 100.0 * (np.asarray(q["first_rank"]) == 1), "mAP": lambda q: np.asarray(q["ap"]),
            "mINP": lambda q: np.asarray(q["inp"])}


def per_query(run_dirs, stage):
    rows = {name: [] for name in MEASURES}
    for run_dir in run_dirs:
        result = evaluate_per_query(run_dir, stage, ["euclidean"], log=lambda *a, **k: None)["euclidean"]
        order = np.argsort(result["per_query"]["query_index"])
        for name, measure in MEASURES.items():
            rows[name].append(measure(result["per_query"])[order])
    return {name: np.stack(values) for name, values in rows.items()}


def difference_cell(b: np.ndarray, a: np.ndarray) -> str:
    """``b - a`` (seeds x queries each, paired) as "mean [95 % low, high]", the crossed bootstrap."""
    diff = paired_difference(b, a)
    return f"{diff['mean']:+.1f} [{diff['low']:+.1f}, {diff['high']:+.1f}]"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", nargs="+", required=True, help="run dirs of setting A, one per seed")
    parser.add_argument("--b", nargs="+", required=True, help="run dirs of setting B, same seeds, same order")
    parser.add_argument("--stage", default="adversarial")
    args = parser.parse_args(argv)
    if len(args.a) != len(args.b):
        parser.error("--a and --b need one run directory per seed each, the same number")
    a, b = per_query(args.a, args.stage), per_query(args.b, args.stage)
    print(f"A = {' '.join(args.a)}\nB = {' '.join(args.b)}\nstage {args.stage}, Euclidean, "
          f"{a['mAP'].shape[0]} seeds x {a['mAP'].shape[1]} queries")
    print("| measure | A per seed | B per seed | B - A per seed | B - A [95 % CI] | seed spread A / B |")
    print("|---|---|---|---|---|---|")
    for name in MEASURES:
        ma, mb = a[name].mean(axis=1), b[name].mean(axis=1)
        fmt = lambda v: " / ".join(f"{x:.1f}" for x in v)  # noqa: E731
        print(f"| {name} | {fmt(ma)} | {fmt(mb)} | {' / '.join(f'{x:+.1f}' for x in mb - ma)} | "
              f"{difference_cell(b[name], a[name])} | "
              f"{np.ptp(ma):.1f} / {np.ptp(mb):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
