"""Clean and occluded queries in a grid: the data of the occlusion claims and their report.

A grid has clean and occluded queries when its data ships them (``builtin:occluded``: the
queries as given are occluded, ``query_clean/`` holds their twins) or it was made with
``--occlude-queries SEED`` (``evaluation/occluded.py``). Each run record then holds
``query_sets = {"clean": {metric: entry}, "occluded": {metric: entry}}`` (per-query values as
in ``metrics``) and ``occlusion = {"source", "seed", "mean_fraction"}``.

Every claim of ``grid.CLAIMS`` is judged on the occluded queries; the claims of
``grid.DROP_CLAIMS`` on the per-query values occluded minus clean (what a query keeps under
occlusion), so "AAA-Net loses less than the baseline" is the paired per-query difference of
the drops, ``drop(baseline) - drop(AAA-Net) > 0``, with the same bootstrap and in the same
Holm family as the rest.
"""

from __future__ import annotations

from aaa_keras.ablate.grid import DROP_CLAIMS, RETAINED, VARIANT_BY_NAME, config_overrides
from aaa_keras.evaluation import ablation_stats

QUERY_SETS = ("clean", "occluded")


def has_query_sets(runs) -> bool:
    return bool(runs) and all("query_sets" in r for r in runs)


def query_set_runs(runs, which: str) -> list[dict]:
    """The run records with ``metrics`` replaced by their ``which`` query set."""
    return [{**r, "metrics": r["query_sets"][which]} for r in runs]


def retained_data(clean: dict, occluded: dict) -> dict:
    """``{RETAINED + config: {metric: {measure: occluded - clean}}}``, per seed and query."""
    return {RETAINED + name: {metric: {measure: occluded[name][metric][measure] - clean[name][metric][measure]
                                       for measure in ablation_stats.MEASURES}
                              for metric in occluded[name]}
            for name in occluded if name in clean}


def drop_claims() -> tuple:
    """``DROP_CLAIMS`` as claims on the retained values (``ablation_stats.judge_claims``' form)."""
    return tuple((claim, RETAINED + better, RETAINED + worse) for claim, better, worse in DROP_CLAIMS)


def occlusion_summary(runs, clean: dict, occluded_retained: dict, metrics, intervals) -> dict:
    """The clean queries' intervals and the drop's (clean minus occluded), per metric and
    configuration; ``intervals(data, metric)`` is the report's ``configuration_intervals``."""
    drop = {name[len(RETAINED):]: {metric: {m: -values for m, values in by_metric[metric].items()}
                                   for metric in by_metric}
            for name, by_metric in occluded_retained.items()}
    first = runs[0].get("occlusion", {})
    return {"source": first.get("source"), "seed": first.get("seed"), "mean_fraction": first.get("mean_fraction"),
            "clean": {metric: intervals(clean, metric) for metric in metrics},
            "drop": {metric: intervals(drop, metric) for metric in metrics}}


def baseline_notes(settings: dict) -> list[str]:
    """Which baseline each claim compares against: whether each baseline-like configuration trains
    stage 1 with random erasing under this grid's recipe (the strong recipe's baseline does)."""
    from aaa_keras.config import make_config

    notes = []
    for name in ("baseline", "baseline_random_erasing", "baseline_2x_epochs"):
        overrides = config_overrides({**settings["overrides"], **dict(VARIANT_BY_NAME[name].overrides)})
        try:
            erasing = make_config(settings["preset"], **overrides).random_erasing
        except Exception:  # noqa: BLE001 - a note, never a failure of the report
            continue
        notes.append(f"{name}: random erasing in stage 1 {'on' if erasing else 'off'}")
    return notes


def _cell(entry: dict) -> str:
    return f"{entry['mean']:.1f} [{entry['low']:.1f}, {entry['high']:.1f}]"


def occlusion_table(results: dict, metric: str, rows) -> list[str]:
    """Markdown rows: each configuration's clean and occluded Rank-1 / mAP and the mAP it loses."""
    occlusion = results["occlusion"]
    clean, occluded, drop = occlusion["clean"][metric], results["summary"][metric], occlusion["drop"][metric]
    lines = ["| configuration | clean Rank-1 (%) | clean mAP (%) | occluded Rank-1 (%) | occluded mAP (%) | "
             "mAP lost to occlusion (points) |", "|---|---|---|---|---|---|"]
    for name in rows:
        lines.append(f"| {VARIANT_BY_NAME[name].label} | {_cell(clean[name]['rank1'])} | {_cell(clean[name]['mAP'])} | "
                     f"{_cell(occluded[name]['rank1'])} | {_cell(occluded[name]['mAP'])} | "
                     f"{_cell(drop[name]['mAP'])} |")
    return lines


def describe(results: dict) -> str:
    """One sentence: where the occluded queries come from and what the verdicts are on."""
    occlusion = results["occlusion"]
    if occlusion["source"] == "dataset":
        source = "the dataset's occluded queries against their clean twins (query_clean/)"
    else:
        fraction = occlusion.get("mean_fraction")
        source = (f"the queries occluded by `--occlude-queries {occlusion['seed']}`"
                  + (f" (mean covered fraction {fraction:.2f})" if fraction is not None else "")
                  + " against the queries as given")
    notes = baseline_notes(results["settings"])
    return (f"Queries: {source}. Every verdict is on the occluded queries; \"loses less to occlusion\" "
            "is the paired per-query difference of the mAP (or Rank-1, mINP) drops, clean minus occluded."
            + (f" Baselines: {'; '.join(notes)}." if notes else ""))
