"""Speed and memory of evaluate_rank against a straightforward per-query loop.

Both run in the same process on the same Market-1501-size random problem
(3368 queries x 15913 gallery images, 750 identities, 6 cameras, distractors
and junk in the gallery). The reference is the usual per-query loop (full
argsort, then one query at a time, as torchreid's Python ``eval_market1501``,
with its precision list comprehension vectorised so the comparison is fair).
Time: best of ``--repeats`` runs. Memory: peak traced allocations
(tracemalloc, numpy buffers included) in a separate run, the input distance
matrix excluded.

    python benchmarks/bench_evaluation.py            # Market size
    python benchmarks/bench_evaluation.py --quick    # 500 x 2400, a few seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

import numpy as np

from common import machine_description  # noqa: E402  (puts the repo on sys.path)

from aaa_keras.evaluation import evaluate_rank  # noqa: E402

MARKET = {"num_query": 3368, "num_gallery": 15913, "num_ids": 750, "num_cameras": 6}
QUICK = {"num_query": 500, "num_gallery": 2400, "num_ids": 120, "num_cameras": 6}
DISTRACTOR_FRACTION = 0.176  # Market-1501: 2798 of 15913 gallery images are pid 0
JUNK_FRACTION = 0.03


def make_problem(num_query, num_gallery, num_ids, num_cameras, seed=0):
    """Random distances where true matches tend to be closer, Market-like labels."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, num_ids + 1)
    num_distractors = int(DISTRACTOR_FRACTION * num_gallery)
    num_junk = int(JUNK_FRACTION * num_gallery)
    num_identity_images = num_gallery - num_distractors - num_junk
    g_pids = np.concatenate(
        [rng.choice(ids, num_identity_images), np.zeros(num_distractors, int), -np.ones(num_junk, int)]
    )
    g_camids = rng.integers(0, num_cameras, num_gallery)
    q_pids = np.concatenate([ids, rng.choice(ids, num_query - num_ids)])
    q_camids = rng.integers(0, num_cameras, num_query)
    distmat = np.empty((num_query, num_gallery), dtype=np.float32)
    for start in range(0, num_query, 512):
        rows = slice(start, start + 512)
        block = rng.random((len(q_pids[rows]), num_gallery), dtype=np.float32)
        block -= np.float32(0.35) * (q_pids[rows, None] == g_pids[None, :])
        distmat[rows] = block
    return distmat, q_pids, g_pids, q_camids, g_camids


def per_query_reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """The straightforward loop: full argsort, then each query on its own."""
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for q_idx in range(len(q_pids)):
        order = indices[q_idx]
        remove = ((g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])) | (
            g_pids[order] == -1
        )
        raw_cmc = matches[q_idx][np.invert(remove)]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        last_match = np.max(np.where(raw_cmc == 1)[0])
        all_inp.append(cmc[last_match] / (last_match + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        precision = raw_cmc.cumsum() / np.arange(1.0, len(raw_cmc) + 1.0)
        all_ap.append((precision * raw_cmc).sum() / raw_cmc.sum())
    return {
        "cmc": np.asarray(all_cmc, dtype=np.float32).sum(0) / len(all_cmc),
        "mAP": float(np.mean(all_ap)),
        "mINP": float(np.mean(all_inp)),
        "num_valid": len(all_cmc),
    }


def best_time(function, args, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def traced_peak_mib(function, args):
    tracemalloc.start()
    try:
        function(*args)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small problem (500 x 2400)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation")
    parser.add_argument("--chunk-size", type=int, default=256, help="evaluate_rank chunk_size")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else MARKET
    problem = make_problem(**sizes)
    fast = lambda *p: evaluate_rank(*p, chunk_size=args.chunk_size)  # noqa: E731

    reference_time, expected = best_time(per_query_reference, problem, args.repeats)
    fast_time, result = best_time(fast, problem, args.repeats)
    reference_peak = traced_peak_mib(per_query_reference, problem)
    fast_peak = traced_peak_mib(fast, problem)

    difference = max(
        float(np.abs(result["cmc"] - expected["cmc"]).max()),
        abs(result["mAP"] - expected["mAP"]),
        abs(result["mINP"] - expected["mINP"]),
    )
    print("## evaluate_rank vs per-query loop\n")
    print(f"- command: `python {' '.join(sys.argv)}`")
    print(f"- machine: {machine_description()}")
    print(
        f"- problem: {sizes['num_query']} queries x {sizes['num_gallery']} gallery, "
        f"{sizes['num_ids']} ids, {sizes['num_cameras']} cameras, "
        f"{int(DISTRACTOR_FRACTION * sizes['num_gallery'])} distractors (pid 0), "
        f"{int(JUNK_FRACTION * sizes['num_gallery'])} junk (pid -1); "
        f"input distmat {problem[0].nbytes / 2**20:.0f} MiB float32 (not counted)"
    )
    print(
        f"- results agree: num_valid {result['num_valid']} vs {expected['num_valid']}, "
        f"max |difference| of cmc/mAP/mINP {difference:.1e} (mAP {100 * result['mAP']:.2f} %)\n"
    )
    print("| implementation | time (s, best of %d) | peak traced memory (MiB) | speed-up |" % args.repeats)
    print("|---|---:|---:|---:|")
    print(f"| per-query loop (reference) | {reference_time:.2f} | {reference_peak:.0f} | 1.0x |")
    print(
        f"| evaluate_rank (chunk_size={args.chunk_size}) | {fast_time:.2f} | {fast_peak:.0f} "
        f"| {reference_time / fast_time:.1f}x |"
    )


if __name__ == "__main__":
    main()
