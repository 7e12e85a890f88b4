"""What one epoch of the P x K sampler shows (docs/decisions.md, "The P x K sampler is BoT's").

On the Market-like split of tests/test_sampler.py (751 identities with 2-72
images, 11,890 images) and on the built-in demo data's training split: the
batches of an epoch, the fraction of distinct images shown, the most draws of
one image, the images drawn more than ``ceil(K / n_id) + 1`` times, and the
mean draws per image of identities with >= 40 and <= 6 images, per epoch.

    python benchmarks/bench_sampler.py                          # data/sampler.py
    git show db7a2ae:aaa_keras/data/sampler.py > /tmp/old_sampler.py
    python benchmarks/bench_sampler.py --sampler /tmp/old_sampler.py
    python benchmarks/bench_sampler.py --bot                    # BoT's code as written, in numpy

``--bot`` runs BoT's ``RandomIdentitySampler`` (reid-strong-baseline,
``data/samplers/triplet_sampler.py``) re-written in numpy: an identity with
fewer than K images is drawn K times with replacement, the incomplete last
chunk is dropped, P identities are picked uniformly among those with chunks
left, and the epoch ends when fewer than P have chunks.
"""

import argparse
import importlib.util
import os
import sys

import numpy as np

from common import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
from test_sampler import market_like_labels  # noqa: E402  (the split the tests assert on)


def load_sampler(path: str | None):
    if path is None:
        from aaa_keras.data import sampler
        return sampler
    spec = importlib.util.spec_from_file_location("sampler_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bot_plan(labels, p: int, k: int, seed: int, epoch: int) -> np.ndarray:
    """BoT's RandomIdentitySampler, one epoch, as rows of P * K indices."""
    rng = np.random.default_rng([seed, epoch])
    chunks = {}
    for pid in np.unique(labels):
        images = np.flatnonzero(labels == pid)
        if len(images) < k:
            images = rng.choice(images, k, replace=True)
        images = rng.permutation(images)
        chunks[pid] = [images[i:i + k] for i in range(0, len(images) - k + 1, k)]
    available, rows = list(chunks), []
    while len(available) >= p:
        row = []
        for pid in rng.choice(available, p, replace=False):
            row.extend(chunks[pid].pop(0))
            if not chunks[pid]:
                available.remove(pid)
        rows.append(row)
    return np.array(rows, np.int64)


def demo_labels():
    from aaa_keras.data import ensure_synthetic, load_dataset

    return load_dataset(ensure_synthetic(log=lambda _: None)).relabel()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sampler", help="a sampler module's file (default: aaa_keras/data/sampler.py)")
    parser.add_argument("--bot", action="store_true", help="BoT's code as written instead")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sampler = load_sampler(args.sampler)
    plan = (lambda labels, p, k, e: bot_plan(labels, p, k, args.seed, e)) if args.bot else \
        (lambda labels, p, k, e: sampler.epoch_plan(labels, p, k, args.seed, e))
    print(f"sampler: {'BoT as written (numpy)' if args.bot else args.sampler or 'aaa_keras/data/sampler.py'}")
    for name, labels, p, k in (("Market-like", market_like_labels(), 16, 4), ("builtin:demo", demo_labels(), 4, 4)):
        n_id = np.bincount(labels)
        print(f"{name}: {len(labels)} images, {len(n_id)} identities with {n_id.min()}-{n_id.max()} images "
              f"({np.sum(n_id >= 40)} with >= 40, {np.sum(n_id <= 6)} with <= 6), P x K = {p} x {k}")
        for epoch in range(args.epochs):
            rows = plan(labels, p, k, epoch)
            draws = np.bincount(rows.ravel(), minlength=len(labels))
            over = int(np.sum(draws > np.ceil(k / n_id[labels]) + 1))
            groups = "".join(f", draws per image of ids {label}: {draws[mask[labels]].mean():.2f}"
                             for label, mask in ((">= 40", n_id >= 40), ("<= 6", n_id <= 6)) if mask.any())
            print(f"  epoch {epoch}: {len(rows)} batches, coverage {np.mean(draws > 0):.3f}, "
                  f"most draws {draws.max()}, over ceil(K/n)+1: {over}{groups}")


if __name__ == "__main__":
    main()
