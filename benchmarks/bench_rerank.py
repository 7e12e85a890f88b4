"""Time and peak memory of re_ranking (blocked, sparse) vs re_ranking_reference.

Random Market-1501-like features (2048-d, L2-normalised, clustered around 750
identity centres; sizes are fractions of Market's 3368 queries x 15913 gallery
images). Each measurement runs in a fresh child process that generates the
same features, so peak memory is that process's peak resident set size
(``ru_maxrss``) above its resident size once the features exist. The reference
is timed including the three distance blocks it needs (the blocked version
computes its distances itself). Where the reference would not fit in memory
(estimated at 28 bytes per (q+g)^2 element: the distance blocks, their
concatenation, the normalised copy, V, the int64 argsort and its int32 copy;
about 20 bytes were measured at full Market size),
its figures are extrapolated from the largest size measured, proportionally to
(q+g)^2, and marked so.

With ``--repeats N`` every size is measured N times per implementation, in
alternating order (blocked, reference, blocked, ...), so that the load of a
shared machine falls on both alike; the table gives the medians and the ratio
of the medians.

    python benchmarks/bench_rerank.py            # 1/8, 1/4, 1/2 and full Market size
    python benchmarks/bench_rerank.py --quick    # 1/16 and 1/8 of Market size
    python benchmarks/bench_rerank.py --scales 1 --repeats 3   # full size, side by side
"""

from __future__ import annotations

import argparse
import json
import statistics
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import REPO_ROOT as ROOT, machine_description  # noqa: E402  (puts the repo on sys.path)

from aaa_keras.evaluation.distance import euclidean_distance  # noqa: E402
from aaa_keras.evaluation.rerank import re_ranking, re_ranking_reference  # noqa: E402

MARKET_QUERY, MARKET_GALLERY, MARKET_IDS = 3368, 15913, 750
FULL_SCALES = (1 / 8, 1 / 4, 1 / 2, 1)
QUICK_SCALES = (1 / 16, 1 / 8)
REFERENCE_BYTES_PER_ELEMENT = 28  # per (q+g)^2 element, see the module docstring
NOISE = 1.0


# === Child process: one measurement ===


def make_features(num_query, num_gallery, dim, seed=0):
    """Clustered L2-normalised float32 features, built in chunks to keep the peak low."""
    rng = np.random.default_rng(seed)
    num_ids = max(20, round(MARKET_IDS * (num_query + num_gallery) / (MARKET_QUERY + MARKET_GALLERY)))
    centres = rng.standard_normal((num_ids, dim), dtype=np.float32)

    def sample(count):
        features = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, 1024):
            rows = features[start : start + 1024]
            ids = rng.integers(0, num_ids, len(rows))
            rows[:] = centres[ids] + NOISE * rng.standard_normal(rows.shape, dtype=np.float32)
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        return features

    return sample(num_query), sample(num_gallery)


def reference_from_features(qf, gf):
    return re_ranking_reference(
        euclidean_distance(qf, gf), euclidean_distance(qf, qf), euclidean_distance(gf, gf)
    )


def current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def gram_floor(qf, gf, block=2048):
    """Only the matrix products of the upper triangle of the (q+g)^2 Gram matrix, in the
    blocked re-ranking's blocks: what any exact method that needs every pairwise
    distance (each row's nearest neighbours and its maximum) must at least spend."""
    features = np.concatenate([qf, gf])
    starts = range(0, len(features), block)
    for row_start in starts:
        rows = features[row_start : row_start + block]
        for col_start in starts[row_start // block :]:
            rows @ features[col_start : col_start + block].T
    return np.zeros((len(qf), len(gf)), np.float32)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_worker(args) -> None:
    qf, gf = make_features(args.num_query, args.num_gallery, args.dim)
    baseline = current_rss_mib()
    method = {"blocked": re_ranking, "reference": reference_from_features, "floor": gram_floor}[
        args.worker]
    start, cpu_start = time.perf_counter(), cpu_seconds()
    result = method(qf, gf)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    np.save(args.output, result)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak - baseline}))


# === Parent process: sizes, children, table ===


def measure(kind, num_query, num_gallery, dim, output):
    command = [
        sys.executable, os.path.abspath(__file__), "--worker", kind,
        "--num-query", str(num_query), "--num-gallery", str(num_gallery),
        "--dim", str(dim), "--output", output,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def median_of(runs):
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def available_memory_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/16 and 1/8 of Market size only")
    parser.add_argument("--scales", help="comma-separated fractions of Market size "
                        "(default 1/8, 1/4, 1/2, 1; --quick: 1/16, 1/8)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measurements per implementation and size, alternating; medians")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension")
    parser.add_argument(
        "--reference-memory-gib", type=float, default=24.0,
        help="run the reference only where its estimated peak fits in this and in 80%% of free memory",
    )
    parser.add_argument("--worker", choices=("blocked", "reference", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--num-query", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--num-gallery", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return

    if args.scales:
        scales = tuple(float(value) for value in args.scales.split(","))
    else:
        scales = QUICK_SCALES if args.quick else FULL_SCALES
    budget = min(args.reference_memory_gib * 2**30, 0.8 * available_memory_bytes())
    rows, last_reference = [], None
    with tempfile.TemporaryDirectory() as scratch:
        for scale in scales:
            num_query, num_gallery = round(MARKET_QUERY * scale), round(MARKET_GALLERY * scale)
            num_all = num_query + num_gallery
            blocked_path = os.path.join(scratch, "blocked.npy")
            reference_path = os.path.join(scratch, "reference.npy")
            run_reference = REFERENCE_BYTES_PER_ELEMENT * num_all**2 <= budget
            blocked_runs, reference_runs, floor_runs = [], [], []
            for _ in range(args.repeats):
                blocked_runs.append(measure("blocked", num_query, num_gallery, args.dim, blocked_path))
                if run_reference:
                    reference_runs.append(
                        measure("reference", num_query, num_gallery, args.dim, reference_path))
                floor_runs.append(
                    measure("floor", num_query, num_gallery, args.dim, reference_path + ".floor.npy"))
            blocked = median_of(blocked_runs)
            row = {"num_query": num_query, "num_gallery": num_gallery, "blocked": blocked,
                   "floor": median_of(floor_runs),
                   "runs": {"blocked": blocked_runs, "reference": reference_runs, "floor": floor_runs}}
            print(json.dumps(row), file=sys.stderr, flush=True)
            if run_reference:
                reference = median_of(reference_runs)
                row["reference"], row["extrapolated"] = reference, False
                row["difference"] = float(
                    np.abs(np.load(blocked_path) - np.load(reference_path)).max()
                )
                last_reference = (num_all, reference)
            elif last_reference is not None:
                measured_all, measured = last_reference
                factor = (num_all / measured_all) ** 2
                row["reference"] = {key: value * factor for key, value in measured.items()}
                row["extrapolated"], row["difference"] = True, None
            rows.append(row)
    print_table(rows, args, budget)


def print_table(rows, args, budget) -> None:
    print("## k-reciprocal re-ranking: blocked vs reference\n")
    print(f"- command: `python {' '.join(sys.argv)}`")
    print(f"- machine: {machine_description()}")
    print(
        f"- features: {args.dim}-d float32, L2-normalised, clustered; k1=20, k2=6, lambda=0.3; "
        "peak = child-process peak RSS above its RSS once the features exist; "
        f"median of {args.repeats} run(s) per implementation and size, alternating"
    )
    print(f"- reference memory budget: {budget / 2**30:.1f} GiB (estimated 28 B per (q+g)^2 element)")
    if any(row.get("extrapolated") for row in rows):
        print("- rows marked ~ are EXTRAPOLATED for the reference (proportional to (q+g)^2 from the "
              "largest measured size): it would not fit in the memory budget")
    print()
    print("| queries x gallery | blocked time (s) | blocked CPU (s) | blocked peak (MiB) "
          "| reference time (s) | reference CPU (s) | reference peak (MiB) | speed-up (time) "
          "| speed-up (CPU) | memory ratio | max abs diff | Gram floor time / CPU (s) "
          "| reference / floor (time, CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        blocked, floor = row["blocked"], row["floor"]
        reference = row.get("reference")
        size = f"{row['num_query']} x {row['num_gallery']}"
        floor_cells = f"{floor['seconds']:.1f} / {floor['cpu_seconds']:.1f}"
        if reference is None:
            print(f"| {size} | {blocked['seconds']:.1f} | {blocked['cpu_seconds']:.1f} "
                  f"| {blocked['peak_mib']:.0f} | - | - | - | - | - | - | - | {floor_cells} | - |")
            continue
        mark = "~" if row["extrapolated"] else ""
        difference = "-" if row["difference"] is None else f"{row['difference']:.1e}"
        print(
            f"| {size} | {blocked['seconds']:.1f} | {blocked['cpu_seconds']:.1f} | {blocked['peak_mib']:.0f} "
            f"| {mark}{reference['seconds']:.1f} | {mark}{reference['cpu_seconds']:.1f} "
            f"| {mark}{reference['peak_mib']:.0f} "
            f"| {mark}{reference['seconds'] / blocked['seconds']:.1f}x "
            f"| {mark}{reference['cpu_seconds'] / blocked['cpu_seconds']:.1f}x "
            f"| {mark}{reference['peak_mib'] / blocked['peak_mib']:.1f}x | {difference} | {floor_cells} "
            f"| {mark}{reference['seconds'] / floor['seconds']:.1f}x, "
            f"{mark}{reference['cpu_seconds'] / floor['cpu_seconds']:.1f}x |"
        )


if __name__ == "__main__":
    main()
