"""Did stage 3's occluded pass leave its BatchNorm statistics in the moving averages? (issue 20.3)

For each run directory: the stage-3 network's Euclidean Rank-1 / mAP with its own moving
statistics, then with every BatchNorm's statistics recomputed on clean training batches with
the same weights (``recompute_batchnorm``, precise BatchNorm), and the median ratio of the
moving variances to the recomputed ones. A large mAP gap with ratios far from 1 says the moving
averages hold statistics inference never sees. docs/decisions.md records its output.

    python benchmarks/occluded_batchnorm.py runs/paper_s0 runs/paper_s1 --batches 50
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import machine_description  # noqa: E402  (puts the repo on sys.path)

from aaa_keras.data.layouts import load_dataset  # noqa: E402
from aaa_keras.data.names import record_ids  # noqa: E402
from aaa_keras.data.pipeline import train_dataset  # noqa: E402
from aaa_keras.data.source import resolve_run_data  # noqa: E402
from aaa_keras.evaluation.report import evaluate_features  # noqa: E402
from aaa_keras.evaluation.run import extract_embeddings  # noqa: E402
from aaa_keras.model.backbone import build_embedder  # noqa: E402
from aaa_keras.model.batchnorm import recompute_batchnorm  # noqa: E402
from aaa_keras.run_dir import load_trained  # noqa: E402


def rank1_map(parts, dataset, config):
    embedder = build_embedder(parts)
    qf = extract_embeddings(embedder, dataset.query, config.image_size)
    gf = extract_embeddings(embedder, dataset.gallery, config.image_size)
    q_pids, q_camids = record_ids(dataset.query)
    g_pids, g_camids = record_ids(dataset.gallery)
    result = evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids)["euclidean"]
    return result["rank1"], result["mAP"]  # percent


def measure(run_dir, batches):
    trained = load_trained(run_dir, "adversarial")
    config = trained.config
    dataset = load_dataset(resolve_run_data(None, config.data, run_dir, lambda *_: None))
    own = rank1_map(trained.parts, dataset, config)
    records = dataset.train_identities()
    labels, _ = dataset.relabel(records)
    data = train_dataset([r.path for r in records], labels, config.image_size, config.batch_size,
                         seed=config.seed)
    ratio = recompute_batchnorm(trained.parts.network, (images for images, _ in data.take(batches)))
    clean = rank1_map(trained.parts, dataset, config)
    return own, clean, ratio


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--batches", type=int, default=50, help="clean training batches to recompute with")
    args = parser.parse_args()
    print(machine_description())
    print("| run | own moving statistics R1 / mAP | recomputed on clean batches R1 / mAP | "
          "mAP gained | moving / recomputed variance |")
    print("|---|---|---|---|---|")
    for run_dir in args.run_dirs:
        own, clean, ratio = measure(run_dir, args.batches)
        print(f"| {run_dir} | {own[0]:.1f} / {own[1]:.1f} | {clean[0]:.1f} / {clean[1]:.1f} | "
              f"{clean[1] - own[1]:+.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
