"""Statistics of an ablation over seeds and queries: intervals, paired tests, Holm, verdicts.

Pure numpy/scipy (no TensorFlow), so ``cli.py ablate --report-only`` and the
tests run without building a model.

The data of one configuration under one distance metric is a ``(seeds,
queries)`` array of per-query values in percent (AP, Rank-1 hit 0/100, INP):
row ``s`` is the run trained with seed ``s``, column ``q`` is query ``q`` of
the test split. Every configuration is evaluated on the same queries, and
the runs of one seed share their stage-1 checkpoint, so two configurations
are compared on the *paired* differences ``a[s, q] - b[s, q]``.

Two sources of chance are in a reported mean: the training seed and which
queries the test split happens to hold. The bootstrap resamples both:

- ``design="crossed"`` (default): each replicate draws seeds with replacement
  and one set of queries with replacement, used for every drawn seed. The
  queries are the same images in every seed (seeds and queries are crossed,
  not nested), so a hard query is hard for every seed; drawing it once per
  replicate keeps that common part of the query noise in the interval.
- ``design="nested"``: each drawn seed gets its own query draw (the
  textbook hierarchical bootstrap for nested data). With crossed data it
  averages the query noise over seeds and gives narrower intervals; it is
  here for comparison.

The one-sided paired test of "``a`` is better than ``b``" is the bootstrap
test that inverts the percentile interval: ``p = (1 + #{T*_b <= 0}) / (B +
1)`` over the ``B`` replicates ``T*`` of the mean paired difference. It uses
the same two-level resampling as the interval, so seed-to-seed training noise
and query sampling both count. The alternatives are worse here: a Wilcoxon
or t test over per-seed means ignores query sampling (the query set is fixed
across seeds) and cannot reach p < 1/2**S with S seeds (1/32 at 5 seeds, so
Holm over 8 claims could never reject); one over all seed x query pairs
treats thousands of correlated differences as independent and ignores the
seed-level noise. The seed-level Wilcoxon p-value (``scipy.stats.wilcoxon``)
is still reported beside it as a secondary reading.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from aaa_keras.errors import UserError

MEASURES = ("rank1", "mAP", "mINP")
VERDICTS = ("holds", "not shown", "reversed")
DESIGNS = ("crossed", "nested")


def per_query_matrix(rows) -> np.ndarray:
    """``(seeds, queries)`` float64 array from one list of per-query values per seed."""
    rows = [np.asarray(row, np.float64) for row in rows]
    if not rows:
        raise UserError("no seeds: a configuration needs per-query values for at least one seed")
    lengths = {row.shape for row in rows}
    if len(lengths) != 1 or rows[0].ndim != 1 or rows[0].size == 0:
        raise UserError(f"per-query values must be one non-empty vector per seed, all of the same "
                        f"length (the same queries); got shapes {sorted(lengths)}")
    values = np.stack(rows)
    if not np.isfinite(values).all():
        raise UserError("per-query values contain NaN or infinity")
    return values


def _check(values: np.ndarray, n_boot: int, design: str, confidence: float) -> np.ndarray:
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or values.size == 0:
        raise UserError(f"expected a (seeds, queries) array, got shape {values.shape}")
    if n_boot < 1:
        raise UserError(f"the number of bootstrap replicates must be positive, got {n_boot}")
    if design not in DESIGNS:
        raise UserError(f"bootstrap design: got {design!r}; expected one of {DESIGNS}")
    if not 0.0 < confidence < 1.0:
        raise UserError(f"confidence must be in (0, 1), got {confidence}")
    return values


def bootstrap_means(values, n_boot: int = 10000, seed: int = 0, design: str = "crossed",
                    chunk: int = 200) -> np.ndarray:
    """``n_boot`` bootstrap replicates of the grand mean of a ``(seeds, queries)`` array.

    A replicate draws ``S`` seeds with replacement and ``Q`` queries with
    replacement (once for all seeds when ``design="crossed"``, once per drawn
    seed when ``"nested"``) and averages the drawn cells; ``chunk``
    replicates at a time.
    """
    values = _check(values, n_boot, design, 0.5)
    num_seeds, num_queries = values.shape
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        seeds = rng.integers(0, num_seeds, size=(size, num_seeds))
        if design == "crossed":
            queries = rng.integers(0, num_queries, size=(size, num_queries))
            per_seed = values.T[queries].mean(axis=1)  # (b, S): each seed on the drawn queries
            out[start:start + size] = np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)
        else:
            queries = rng.integers(0, num_queries, size=(size, num_seeds, num_queries))
            out[start:start + size] = values[seeds[..., None], queries].mean(axis=(1, 2))
    return out


def _summary(values: np.ndarray, replicates: np.ndarray, confidence: float) -> dict:
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    seed_means = values.mean(axis=1)
    return {"mean": float(values.mean()), "low": float(low), "high": float(high),
            "seed_means": [float(v) for v in seed_means],
            "seed_sd": float(seed_means.std(ddof=1)) if len(seed_means) > 1 else None,
            "num_seeds": int(values.shape[0]), "num_queries": int(values.shape[1])}


def mean_interval(values, confidence: float = 0.95, n_boot: int = 10000, seed: int = 0,
                  design: str = "crossed") -> dict:
    """Mean of a ``(seeds, queries)`` array and its percentile bootstrap interval."""
    values = _check(values, n_boot, design, confidence)
    return _summary(values, bootstrap_means(values, n_boot, seed, design), confidence)


def paired_difference(better, worse, confidence: float = 0.95, n_boot: int = 10000, seed: int = 0,
                      design: str = "crossed") -> dict:
    """``better - worse`` on paired ``(seeds, queries)`` arrays: mean, interval, one-sided p-values.

    ``p_value`` tests "better > worse" (small when the difference is
    reliably positive), ``p_reversed`` tests "better < worse"; both are the
    bootstrap p-values described in the module docstring. ``wilcoxon_p`` is
    scipy's one-sided Wilcoxon signed-rank test on the per-seed mean
    differences (secondary; ``None`` with one seed).
    """
    better = _check(better, n_boot, design, confidence)
    worse = _check(worse, n_boot, design, confidence)
    if better.shape != worse.shape:
        raise UserError(f"paired comparison needs the same seeds and queries on both sides; got "
                        f"shapes {better.shape} and {worse.shape}")
    differences = better - worse
    replicates = bootstrap_means(differences, n_boot, seed, design)
    result = _summary(differences, replicates, confidence)
    result["p_value"] = float((1 + np.count_nonzero(replicates <= 0)) / (n_boot + 1))
    result["p_reversed"] = float((1 + np.count_nonzero(replicates >= 0)) / (n_boot + 1))
    seed_differences = differences.mean(axis=1)
    result["wilcoxon_p"] = None
    if len(seed_differences) > 1 and np.any(seed_differences != 0):
        result["wilcoxon_p"] = float(stats.wilcoxon(seed_differences, alternative="greater").pvalue)
    return result


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), in the input order."""
    p = np.asarray(p_values, np.float64)
    if p.ndim != 1:
        raise UserError(f"p-values must be a 1-D sequence, got shape {p.shape}")
    if p.size and (np.isnan(p).any() or p.min() < 0 or p.max() > 1):
        raise UserError(f"p-values must lie in [0, 1], got {p.tolist()}")
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


def verdict(p_holm: float, p_reversed_holm: float, alpha: float = 0.05) -> str:
    """``holds`` / ``reversed`` / ``not shown`` from Holm-adjusted one-sided p-values."""
    if p_holm < alpha:
        return "holds"
    if p_reversed_holm < alpha:
        return "reversed"
    return "not shown"


def judge_claims(claims, data: dict, measure: str, metric: str, alpha: float = 0.05,
                 confidence: float = 0.95, n_boot: int = 10000, seed: int = 0,
                 design: str = "crossed") -> list[dict]:
    """Paired difference, one-sided tests, Holm across the claims, and a verdict for each claim.

    ``claims`` is a sequence of ``(name, better, worse)`` configuration names;
    ``data[config][metric][measure]`` is that configuration's ``(seeds,
    queries)`` array. Claims whose configurations are missing are skipped.
    Holm runs over the claims judged here, once for "holds" and once for
    "reversed" (two families, each at ``alpha``).
    """
    rows = []
    for name, better, worse in claims:
        if better not in data or worse not in data:
            continue
        a = data[better][metric][measure]
        b = data[worse][metric][measure]
        row = {"claim": name, "better": better, "worse": worse, "measure": measure, "metric": metric}
        row.update(paired_difference(a, b, confidence, n_boot, seed, design))
        rows.append(row)
    if rows:
        adjusted = holm([r["p_value"] for r in rows])
        adjusted_reversed = holm([r["p_reversed"] for r in rows])
        for row, p, q in zip(rows, adjusted, adjusted_reversed):
            row["p_holm"] = float(p)
            row["p_reversed_holm"] = float(q)
            row["verdict"] = verdict(p, q, alpha)
    return rows


# === How many seeds a difference needs ===

def seeds_needed(sd: float, delta: float = 1.0, alpha: float = 0.05, power: float = 0.8,
                 max_seeds: int = 10000) -> int | None:
    """The fewest seeds whose one-sided paired t-test detects a true mean difference ``delta``
    with probability ``power`` at level ``alpha``, when per-seed differences have standard
    deviation ``sd``: the smallest ``n >= 2`` with ``(t_{1-alpha, n-1} + t_{power, n-1}) *
    sd / sqrt(n) <= delta`` (the usual normal-approximation formula with t quantiles, so a
    small ``n`` is not flattered). ``None`` when even ``max_seeds`` would not do.
    """
    if not (sd >= 0 and delta > 0 and 0 < alpha < 1 and 0 < power < 1):
        raise UserError(f"seeds_needed: need sd >= 0, delta > 0, alpha and power in (0, 1); got "
                        f"sd={sd}, delta={delta}, alpha={alpha}, power={power}")
    for n in range(2, max_seeds + 1):
        half_width = (stats.t.ppf(1 - alpha, n - 1) + stats.t.ppf(power, n - 1)) * sd / np.sqrt(n)
        if half_width <= delta:
            return n
    return None


def seed_spread(data: dict, claims, metric: str, measure: str = "mAP", delta: float = 1.0,
                alpha: float = 0.05, power: float = 0.8) -> dict:
    """Seed-to-seed spread of ``measure`` and the seeds a ``delta``-point difference needs.

    ``configs``: per configuration, the standard deviation over seeds of its per-seed mean
    (the spread of one unpaired run). ``claims``: per claim, the standard deviation over
    seeds of the *paired* per-seed difference (both sides trained with the same seed and,
    for AAA-Net configurations, the same stage-1 weights) and :func:`seeds_needed` for it.
    Needs at least two seeds.
    """
    configs, rows = {}, []
    for name in data:
        per_seed = data[name][metric][measure].mean(axis=1)
        if len(per_seed) < 2:
            raise UserError("the seed-to-seed spread needs at least two seeds")
        configs[name] = {"sd": float(np.std(per_seed, ddof=1)), "per_seed": per_seed.round(3).tolist()}
    for claim, better, worse in claims:
        if better not in data or worse not in data:
            continue
        differences = (data[better][metric][measure] - data[worse][metric][measure]).mean(axis=1)
        sd = float(np.std(differences, ddof=1))
        rows.append({"claim": claim, "better": better, "worse": worse, "paired_sd": sd,
                     "unpaired_sd": float(np.hypot(configs[better]["sd"], configs[worse]["sd"])),
                     "seeds_needed": seeds_needed(sd, delta, alpha, power)})
    return {"measure": measure, "metric": metric, "delta": delta, "alpha": alpha, "power": power,
            "configs": configs, "claims": rows}
