#!/usr/bin/env python
"""The statistics that decide how hard approximate search is, on a trained run's real embeddings.

For each ``RUN_DIR[:STAGE]`` it embeds the query and gallery splits of
``--data`` (the project's own ``evaluation.run.extract_embeddings``, the
``evaluate`` pipeline), and prints ``bench_search.embedding_statistics`` of
them: within- / between-identity variance, the PCA spectrum (share of the
variance in the top components, at fixed counts and at fixed fractions of
the dimension), the participation ratio, the cosines of a query to its
identity's gallery crops and to the others, and the exact identity mAP. The
same statistics of ``bench_search.py``'s synthetic data are printed by
``bench_search.py --stats-only``, so the two can be compared line by line.

    python benchmarks/embedding_stats.py /work/grids/ablate-occluded/seed0/baseline:baseline \\
        /work/grids/ablate-occluded/seed0/aaa_conv3:adversarial --data builtin:ablate --save /tmp/emb
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR:STAGE (default: its latest stage)")
    parser.add_argument("--data", default="builtin:ablate", help="dataset whose query/gallery are embedded")
    parser.add_argument("--save", default=None, help="folder to write each run's embeddings (.npz) to")
    parser.add_argument("--json", default=None)
    return parser.parse_args()


def embed_run(run_dir, stage, data):
    from aaa_keras.data.layouts import load_dataset
    from aaa_keras.data.source import resolve_data
    from aaa_keras.evaluation.run import extract_embeddings
    from aaa_keras.model.backbone import build_embedder
    from aaa_keras.run_dir import load_trained

    trained = load_trained(run_dir, stage)
    embedder = build_embedder(trained.parts)
    dataset = load_dataset(resolve_data(data, lambda *_: None))
    size = (trained.config.image_height, trained.config.image_width)
    out = {}
    for split in ("query", "gallery"):
        records = [r for r in getattr(dataset, split) if r.is_identity]
        out[split] = extract_embeddings(embedder, records, size)
        out[split + "_pid"] = np.array([r.pid for r in records])
        out[split + "_cam"] = np.array([r.camid for r in records])
    return out, trained.stage


def main():
    args = parse_args()
    from bench_search import embedding_statistics, print_statistics

    results = {}
    for spec in args.runs:
        run_dir, _, stage = spec.partition(":")
        emb, stage = embed_run(run_dir, stage or None, args.data)
        name = f"{os.path.relpath(run_dir, os.path.dirname(os.path.dirname(run_dir)))}:{stage}"
        if args.save:
            os.makedirs(args.save, exist_ok=True)
            np.savez(os.path.join(args.save, name.replace("/", "_").replace(":", "_") + ".npz"), **emb)
        stats = embedding_statistics(emb["gallery"], emb["gallery_pid"], emb["query"], emb["query_pid"])
        print_statistics(f"{name} on {args.data}", stats)
        results[name] = stats
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
