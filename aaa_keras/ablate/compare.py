"""Baseline vs AAA-Net under two recipes: two grids on the same data and seeds, paired.

``python cli.py ablate --out A --report-only --compare-with B --write docs/results.md`` puts
the two grids' baseline and AAA-Net (occlusion after conv3, fine-tuned) side by side: four
configurations and four claims, judged like the grid's own (per-query values of the same
seeds and queries, crossed bootstrap, Holm over the four claims). Across recipes the pairing
is by seed and query only: the two grids train different stage-1 networks.
"""

from __future__ import annotations

import os

from aaa_keras.ablate.grid import VARIANT_BY_NAME
from aaa_keras.ablate.report import (_cell, _diff_cell, _p, configuration_intervals, epochs_text, grid_recipe, judge,
                                     markers, per_query_data, update_results_doc)
from aaa_keras.errors import UserError
from aaa_keras.files import write_text_atomically

COMPARED = ("baseline", "aaa_conv3")
COMPARISON_FILE = "recipes.md"


def _renamed_runs(results: dict, recipe: str) -> list[dict]:
    missing = [name for name in COMPARED if not any(r["config"] == name for r in results["runs"])]
    if missing:
        raise UserError(f"the {recipe} grid has no {', '.join(missing)} runs; run it with --table controls or all")
    return [dict(run, config=f"{recipe}:{run['config']}") for run in results["runs"] if run["config"] in COMPARED]


def compare_recipes(results: dict, other: dict) -> dict:
    """Summary and claims of baseline / AAA-Net under the recipes of ``other`` and ``results``.

    Refuses grids on other data, with other seeds, or of the same recipe.
    """
    first, second = grid_recipe(other), grid_recipe(results)
    if first == second:
        raise UserError(f"--compare-with: both grids use the {first} recipe; compare grids of two recipes")
    if first != "paper" and second == "paper":  # the paper's recipe is the reference side
        return compare_recipes(other, results)
    for key in ("data", "preset"):
        if results["settings"][key] != other["settings"][key]:
            raise UserError(f"--compare-with: the grids differ in {key} ({other['settings'][key]!r} vs "
                            f"{results['settings'][key]!r}); the runs are not paired")
    if results["seeds"] != other["seeds"]:
        raise UserError(f"--compare-with: the grids have other seeds ({other['seeds']} vs {results['seeds']})")
    metrics = [m for m in other["metrics"] if m in results["metrics"]]
    boot = results["bootstrap"]
    data = per_query_data(_renamed_runs(other, first) + _renamed_runs(results, second), metrics)
    base, aaa = COMPARED
    claims = (
        (f"{second} baseline > {first} baseline", f"{second}:{base}", f"{first}:{base}"),
        (f"AAA-Net > baseline, {first} recipe", f"{first}:{aaa}", f"{first}:{base}"),
        (f"AAA-Net > baseline, {second} recipe", f"{second}:{aaa}", f"{second}:{base}"),
        (f"{second} AAA-Net > {first} AAA-Net", f"{second}:{aaa}", f"{first}:{aaa}"),
    )
    summary = {metric: configuration_intervals(data, metric, boot) for metric in metrics}
    verdicts = {metric: judge(claims, data, "mAP", metric, boot) for metric in metrics}
    return {"recipes": (first, second), "metrics": metrics, "summary": summary, "claims": verdicts,
            "settings": {first: other["settings"], second: results["settings"]},
            "seeds": results["seeds"],
            "num_query": results["runs"][0]["metrics"][metrics[0]]["num_query"]}


def comparison_markdown(comparison: dict, command: str = "") -> str:
    """The cross-recipe tables: configurations per metric, then the mAP verdicts per metric."""
    first, second = comparison["recipes"]
    settings = comparison["settings"]
    lines = [f"Command: `{command or 'python cli.py ablate --report-only --compare-with OUT'}`. "
             f"{settings[first]['data']}, `{settings[first]['preset']}` preset, {first}: "
             f"{epochs_text(settings[first])}; {second}: {epochs_text(settings[second])}; seeds "
             f"{', '.join(map(str, comparison['seeds']))} x {comparison['num_query']} queries. Cells: mean "
             "[95 % bootstrap interval over seeds and queries]. Paired by seed and query; Holm over "
             "the four claims."]
    for metric in comparison["metrics"]:
        summary = comparison["summary"][metric]
        lines += ["", f"**Configurations ({metric})**", "",
                  "| recipe | configuration | Rank-1 (%) | mAP (%) | mINP (%) |", "|---|---|---|---|---|"]
        for recipe in (first, second):
            for name in COMPARED:
                entry = summary[f"{recipe}:{name}"]
                lines.append(f"| {recipe} | {VARIANT_BY_NAME[name].label} | {_cell(entry['rank1'])} | "
                             f"{_cell(entry['mAP'])} | {_cell(entry['mINP'])} |")
        lines += ["", f"**Verdicts (mAP, {metric})**", "",
                  "| claim | Δ mAP (points) [95 % CI] | p (Holm) | verdict |", "|---|---|---|---|"]
        for row in comparison["claims"][metric]:
            lines.append(f"| {row['claim']} | {_diff_cell(row)} | {_p(row['p_holm'])} | **{row['verdict']}** |")
    return "\n".join(lines) + "\n"


def write_comparison(results: dict, other: dict, out: str, write=(), command: str = "") -> list[str]:
    """OUT/recipes.md, and the ``ablate-recipes`` block of every ``write`` file (appended if missing)."""
    body = comparison_markdown(compare_recipes(results, other), command)
    path = os.path.join(out, COMPARISON_FILE)
    write_text_atomically(path, "# Baseline vs AAA-Net under two recipes (`cli.py ablate --compare-with`)\n\n"
                          + body)
    return [path] + [update_results_doc(target, body, None, *markers("ablate-recipes")) for target in write or ()]
