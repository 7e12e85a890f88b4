#!/usr/bin/env python
"""Gallery search at scale: IVF-PQ against exact inner-product search (FAISS), recall@10, queries/s, memory.

Builds, in one run and with the same FAISS indexes ``python cli.py index``
makes (``aaa_keras.deploy.gallery.make_faiss_index``):

- ``exact``: ``IndexFlatIP`` over N L2-normalised D-d vectors (the ground truth);
- ``ivf-pq``: ``IVF{nlist},PQ{m}x8``, trained on a sample, searched with
  several ``nprobe`` values;

and reports for each: build time, index memory (the serialised size; the
exact index holds N x D x 4 bytes), queries per second with all queries in one
call (``--queries`` of them) and one at a time (median latency), and for
IVF-PQ its recall@10 (the fraction of the exact top-10 found in its top-10).
The process's peak RSS is printed at the end.

Two vector sets (``--data``):

- ``isotropic``: uniformly random directions. The worst case for any
  approximate index: in high dimension every vector is nearly orthogonal to
  every other (cosines ~ N(0, 1/D)), so the "nearest" neighbours are barely
  nearer than the rest, and recall is low for any compressed index.
- ``clustered``: re-ID-like, ``--per-id`` images per identity scattered
  around the identity's direction (noise of norm ``--noise`` relative to
  it), queries being new images of known identities: the case a re-ID
  gallery is. Also reported: the fraction of the top-10 that are images of the
  query's identity (each has ``--per-id`` of them), for exact and IVF-PQ.

The vectors are generated in chunks and added to the indexes chunk by chunk
(the exact index is the only copy of the data), so memory is about
N x D x 4 bytes plus the IVF-PQ codes.

    python benchmarks/bench_search.py                                 # 1M x 2048-d, both sets
    python benchmarks/bench_search.py --count 100000 --dim 128 --data clustered   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--count", type=int, default=1_000_000, help="gallery vectors")
    parser.add_argument("--dim", type=int, default=2048, help="embedding size (ResNet-50's AAA-Net: 2048)")
    parser.add_argument("--data", choices=["isotropic", "clustered", "both"], default="both")
    parser.add_argument("--per-id", type=int, default=20, help="clustered: images per identity")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="clustered: noise norm relative to the identity direction")
    parser.add_argument("--queries", type=int, default=1000, help="queries searched in one call")
    parser.add_argument("--single", type=int, default=50, help="queries timed one at a time")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--pq-m", type=int, default=64, help="bytes per vector (must divide --dim)")
    parser.add_argument("--train", type=int, default=100_000, help="training sample of IVF-PQ")
    parser.add_argument("--nprobe", default="1,8,32,128", help="comma-separated values to measure")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=50_000)
    parser.add_argument("--json", default=None)
    return parser.parse_args()


class Vectors:
    """Deterministic chunks of L2-normalised vectors, and queries, for one data set."""

    def __init__(self, kind, count, dim, per_id, noise, seed=0):
        self.kind, self.count, self.dim, self.per_id, self.noise, self.seed = kind, count, dim, per_id, noise, seed
        self.num_ids = max(1, count // per_id)

    def _centres(self, ids):
        # One direction per identity, generated from the identity number (no table of centres in memory).
        out = np.empty((len(ids), self.dim), np.float32)
        for row, identity in enumerate(ids):
            out[row] = np.random.default_rng([self.seed, 1, int(identity)]).standard_normal(self.dim, np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def _sample(self, rng, count, ids=None):
        values = rng.standard_normal((count, self.dim), np.float32)
        if self.kind == "clustered":
            values *= self.noise / np.sqrt(self.dim)
            values += self._centres(ids)
        values /= np.linalg.norm(values, axis=1, keepdims=True)
        return values

    def chunk(self, start, stop):
        rng = np.random.default_rng([self.seed, 2, start])
        ids = np.arange(start, stop) // self.per_id
        return self._sample(rng, stop - start, ids)

    def queries(self, count):
        """``(queries, identity of each)``; the gallery vector at position p has identity p // per_id."""
        rng = np.random.default_rng([self.seed, 3])
        ids = rng.integers(0, self.num_ids, count)
        return self._sample(rng, count, ids), ids


def same_identity(ids, query_ids, per_id) -> float:
    """Clustered set: the fraction of the top-10 that are images of the query's identity (10 of 20 exist)."""
    return round(float(np.mean((ids // per_id) == query_ids[:, None])), 4)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def index_bytes(index) -> int:
    import faiss

    with tempfile.NamedTemporaryFile(suffix=".faiss") as f:
        faiss.write_index(index, f.name)
        return os.path.getsize(f.name)


def search_speed(index, queries, single, top=10):
    started = time.perf_counter()
    scores, ids = index.search(queries, top)
    batch_seconds = time.perf_counter() - started
    latencies = []
    for query in queries[:single]:
        started = time.perf_counter()
        index.search(query[None], top)
        latencies.append(time.perf_counter() - started)
    return ids, {"queries_per_s": len(queries) / batch_seconds, "latency_ms": 1000 * statistics.median(latencies)}


def run_one(kind, args) -> dict:
    from aaa_keras.deploy.gallery import make_faiss_index, set_nprobe

    data = Vectors(kind, args.count, args.dim, args.per_id, args.noise)
    queries, query_ids = data.queries(args.queries)
    result = {"data": kind}
    print(f"\n== {kind}: {args.count:,} x {args.dim}-d, {args.queries} queries ==", flush=True)

    # IVF-PQ training sample: evenly spread chunks.
    tick = time.time()
    step = max(1, args.count // args.train)
    train = np.concatenate([data.chunk(s, min(s + args.chunk, args.count))[::step]
                            for s in range(0, args.count, args.chunk)])[: args.train]
    generate_train = time.time() - tick
    tick = time.time()
    ivfpq, params = make_faiss_index(args.dim, "ivf-pq", args.nlist, args.pq_m, train)
    result["ivfpq_train_s"] = round(time.time() - tick, 1)
    del train
    print(f"  IVF{params['nlist']},PQ{params['pq_m']}x8 trained on {args.train:,} vectors in "
          f"{result['ivfpq_train_s']} s (sample generated in {generate_train:.0f} s)", flush=True)

    exact, _ = make_faiss_index(args.dim, "exact")
    add_exact = add_ivfpq = generate = 0.0
    for start in range(0, args.count, args.chunk):
        tick = time.time()
        chunk = data.chunk(start, min(start + args.chunk, args.count))
        generate += time.time() - tick
        tick = time.time()
        exact.add(chunk)
        add_exact += time.time() - tick
        tick = time.time()
        ivfpq.add(chunk)
        add_ivfpq += time.time() - tick
    result.update({"generate_s": round(generate, 1), "exact_add_s": round(add_exact, 1),
                   "ivfpq_add_s": round(add_ivfpq, 1)})
    print(f"  added: exact {add_exact:.0f} s, IVF-PQ {add_ivfpq:.0f} s (vectors generated in {generate:.0f} s)",
          flush=True)

    result["exact_bytes"] = exact.ntotal * args.dim * 4
    result["ivfpq_bytes"] = index_bytes(ivfpq)
    truth, result["exact"] = search_speed(exact, queries, args.single)
    print(f"  exact: {result['exact']['queries_per_s']:.1f} queries/s (batch of {args.queries}), "
          f"{result['exact']['latency_ms']:.1f} ms per single query, {result['exact_bytes'] / 1e9:.2f} GB",
          flush=True)
    if kind == "clustered":  # how separable the set is: the top-1 vs the 10th neighbour, exact
        scores, _ = exact.search(queries[:100], 10)
        result["exact_top1_cos_mean"] = round(float(scores[:, 0].mean()), 4)
        result["exact_top10_cos_mean"] = round(float(scores[:, 9].mean()), 4)
        result["exact"]["same_id_at_10"] = same_identity(truth, query_ids, args.per_id)
    del exact

    result["ivfpq"] = {}
    for nprobe in (int(v) for v in args.nprobe.split(",")):
        set_nprobe(ivfpq, nprobe)
        ids, speed = search_speed(ivfpq, queries, args.single)
        recall = float(np.mean([len(set(found) & set(expected)) / 10 for found, expected in zip(ids, truth)]))
        result["ivfpq"][nprobe] = {"recall_at_10": round(recall, 4), **speed}
        if kind == "clustered":
            result["ivfpq"][nprobe]["same_id_at_10"] = same_identity(ids, query_ids, args.per_id)
        print(f"  IVF-PQ nprobe {nprobe}: recall@10 {recall:.3f}, {speed['queries_per_s']:.0f} queries/s, "
              f"{speed['latency_ms']:.2f} ms per single query, {result['ivfpq_bytes'] / 1e6:.0f} MB", flush=True)
    result["peak_rss_gb"] = round(peak_rss_gb(), 2)
    return result


def print_report(args, results, seconds):
    print(f"\n## Gallery search: {args.count:,} vectors, {args.dim}-d, {args.threads} threads, "
          f"{args.queries} queries, top-10\n")
    print("| data | index | memory | build s | queries/s (batch) | ms per single query | recall@10 "
          "| same id in top-10 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['data']} | exact (IndexFlatIP) | {r['exact_bytes'] / 1e9:.2f} GB | {r['exact_add_s']:.0f} "
              f"| {r['exact']['queries_per_s']:.1f} | {r['exact']['latency_ms']:.1f} | 1 "
              f"| {r['exact'].get('same_id_at_10', '')} |")
        for nprobe, entry in r["ivfpq"].items():
            build = f"{r['ivfpq_train_s'] + r['ivfpq_add_s']:.0f}" if nprobe == min(r["ivfpq"]) else ""
            print(f"| {r['data']} | IVF{args.nlist},PQ{args.pq_m} nprobe {nprobe} | {r['ivfpq_bytes'] / 1e6:.0f} MB "
                  f"| {build} | {entry['queries_per_s']:.0f} | {entry['latency_ms']:.2f} | "
                  f"{entry['recall_at_10']:.3f} | {entry.get('same_id_at_10', '')} |")
    print(f"\nPeak RSS {peak_rss_gb():.1f} GB; total {seconds / 60:.1f} min")


def main():
    args = parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    from importlib.metadata import version

    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"{args.threads} threads; faiss-cpu {version('faiss-cpu')}, NumPy {np.__version__}")
    started = time.time()
    kinds = ("isotropic", "clustered") if args.data == "both" else (args.data,)
    results = [run_one(kind, args) for kind in kinds]
    print_report(args, results, time.time() - started)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
