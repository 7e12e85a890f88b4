"""The grid's statistics (intervals, verdicts, seed spread) and its report: results.md, claims.png."""

from __future__ import annotations

import json
import os
import platform
import shutil

import numpy as np

from aaa_keras.ablate import occlusion as occlusion_lib
from aaa_keras.ablate.grid import (ABLATE_DATA, CLAIMS, FIGURE_FILE, REPORT_FILE, RESULTS_FILE, TABLE_LAYOUT,
                                   VARIANT_BY_NAME, VARIANTS, config_overrides, grid_name)
from aaa_keras.errors import UserError
from aaa_keras.evaluation import ablation_stats
from aaa_keras.files import write_text_atomically


def read_json(path):
    """A JSON file's content, or None when it is missing or unreadable (an interrupted grid)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def epochs_text(settings: dict) -> str:
    baseline = settings.get("baseline_epochs", settings["epochs_per_stage"])
    if baseline == settings["epochs_per_stage"]:
        return f"{baseline} epochs per stage"
    return f"stage 1 {baseline} epochs, stages 2 and 3 {settings['epochs_per_stage']} each"


def _machine() -> str:
    return f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def build_results(records, settings, table, seeds, metrics, wall_seconds, n_boot=10000) -> dict:
    results = {
        "settings": settings, "table": table, "seeds": list(range(seeds)), "metrics": list(metrics),
        "machine": _machine(), "wall_seconds": round(wall_seconds, 1),
        "bootstrap": {"replicates": n_boot, "design": "crossed", "confidence": 0.95, "alpha": 0.05},
        "runs": [{k: v for k, v in r.items() if k != "cached"} for r in records],
    }
    results.update(analyse(results))
    return results


def per_query_data(runs, metrics) -> dict:
    """``{config: {metric: {measure: (seeds, queries) array}}}`` from the run records."""
    by_config = {}
    for run in sorted(runs, key=lambda r: r["seed"]):
        by_config.setdefault(run["config"], []).append(run)
    reference = {}
    data = {}
    for name, config_runs in by_config.items():
        data[name] = {}
        for metric in metrics:
            rows = {"rank1": [], "mAP": [], "mINP": []}
            for run in config_runs:
                per_query = run["metrics"][metric]["per_query"]
                index = tuple(per_query["query_index"])
                if reference.setdefault(metric, index) != index:
                    raise UserError(f"{name}, seed {run['seed']}: evaluated on other queries than the "
                                    "rest of the grid; the runs are not paired")
                rows["rank1"].append(100.0 * (np.asarray(per_query["first_rank"]) == 1))
                rows["mAP"].append(per_query["ap"])
                rows["mINP"].append(per_query["inp"])
            data[name][metric] = {m: ablation_stats.per_query_matrix(v) for m, v in rows.items()}
    seeds_of = {name: [r["seed"] for r in rs] for name, rs in by_config.items()}
    if len({tuple(s) for s in seeds_of.values()}) > 1:
        raise UserError(f"the configurations have different seeds ({seeds_of}); finish the grid first")
    return data


def configuration_intervals(data: dict, metric: str, boot: dict) -> dict:
    """``{config: {measure: mean and bootstrap interval}}`` under ``metric`` (``per_query_data``'s ``data``)."""
    return {name: {measure: ablation_stats.mean_interval(data[name][metric][measure], boot["confidence"],
                                                         boot["replicates"], 0, boot["design"])
                   for measure in ablation_stats.MEASURES}
            for name in data}


def judge(claims, data: dict, measure: str, metric: str, boot: dict) -> list[dict]:
    """:func:`ablation_stats.judge_claims` with the grid's bootstrap settings."""
    return ablation_stats.judge_claims(claims, data, measure, metric, boot["alpha"], boot["confidence"],
                                       boot["replicates"], 0, boot["design"])


def analyse(results: dict) -> dict:
    """Per-configuration intervals and per-claim verdicts, from the per-query values."""
    boot = results["bootstrap"]
    metrics = results["metrics"]
    runs = results["runs"]
    occluded = occlusion_lib.has_query_sets(runs)  # verdicts on the occluded queries, and the drops
    data = per_query_data(occlusion_lib.query_set_runs(runs, "occluded") if occluded else runs, metrics)
    configs = dict(data)
    claim_list = CLAIMS
    extra = {}
    if occluded:
        clean = per_query_data(occlusion_lib.query_set_runs(runs, "clean"), metrics)
        retained = occlusion_lib.retained_data(clean, configs)
        data = {**configs, **retained}
        claim_list = CLAIMS + occlusion_lib.drop_claims()
        extra["occlusion"] = occlusion_lib.occlusion_summary(
            runs, clean, retained, metrics, lambda values, metric: configuration_intervals(values, metric, boot))
    summary, claims = {}, {}
    for metric in metrics:
        summary[metric] = configuration_intervals(configs, metric, boot)
        claims[metric] = {measure: judge(claim_list, data, measure, metric, boot)
                          for measure in ablation_stats.MEASURES}
    stage1 = {}
    for run in results["runs"]:
        if VARIANT_BY_NAME[run["config"]].from_baseline or run["config"] == "baseline":
            stage1.setdefault(str(run["seed"]), set()).add(run["stage1_digest"])
    paired = all(len(d) == 1 for d in stage1.values())
    spread = None
    if len(results["seeds"]) > 1:  # seed-to-seed spread of mAP, seeds for a 1-point difference
        spread = {metric: ablation_stats.seed_spread(configs, CLAIMS, metric, "mAP", delta=1.0,
                                                     alpha=boot["alpha"])
                  for metric in metrics}
    return {"summary": summary, "claims": claims, "stage1_shared_within_seed": paired,
            "seed_spread": spread, **extra}


def load_results(out: str, n_boot: int | None = None, option: str = "--out") -> dict:
    """OUT/results.json with its statistics recomputed (with ``n_boot`` replicates if given);
    ``option`` names the flag that gave ``out`` in the error."""
    path = os.path.join(out, RESULTS_FILE)
    results = read_json(path)
    if results is None:
        raise UserError(f"{option} {out}: no readable {RESULTS_FILE}; run `python cli.py ablate --out {out}` "
                        "first (without --report-only)")
    if n_boot:
        results["bootstrap"]["replicates"] = n_boot
    results.update(analyse(results))  # recomputed from the per-query values
    return results


def _cell(entry: dict) -> str:
    return f"{entry['mean']:.1f} [{entry['low']:.1f}, {entry['high']:.1f}]"


def _diff_cell(row: dict) -> str:
    return f"{row['mean']:+.2f} [{row['low']:+.2f}, {row['high']:+.2f}]"


def _p(value) -> str:
    return "-" if value is None else (f"{value:.4f}" if value >= 0.0001 else "<0.0001")


def _tables_shown(present, occluded: bool = False) -> list[tuple[str, list]]:
    """The layout's tables with the configurations a grid has: those with two or more rows, less
    any whose rows another shown table holds too (``--table controls`` shows one table, not four);
    the occlusion table only in a grid with clean and occluded queries."""
    layout = [(t, rows) for t, rows in TABLE_LAYOUT if occluded or not t.startswith("Occlusion")]
    tables = [(title, [r for r in rows if r in present]) for title, rows in layout]
    tables = [(title, rows) for title, rows in tables if len(rows) >= 2]
    shown = []
    for title, rows in tables:
        if any(set(rows) < set(other) for _, other in tables) or any(set(rows) == set(r) for _, r in shown):
            continue
        shown.append((title, rows))
    return shown


def report_markdown(results: dict, command: str = "") -> str:
    settings = results["settings"]
    metrics = results["metrics"]
    primary = metrics[0]
    runs = results["runs"]
    num_queries = runs[0]["metrics"][primary]["num_query"] if runs else 0
    seeds = results["seeds"]
    boot = results["bootstrap"]
    present = {r["config"] for r in runs}
    overrides = ", ".join(f"{k}={v}" for k, v in settings["overrides"].items()) or "none"
    lines = [
        f"Command: `{command or 'python cli.py ablate'}`. Machine: {results['machine']}. "
        f"Wall time of the invocation that wrote results.json: {results['wall_seconds'] / 60:.1f} min "
        f"(reused runs are not re-timed); training time summed over runs: "
        f"{sum(r['train_seconds'] for r in runs) / 60:.1f} min.",
        "",
        f"Settings: `{settings['preset']}` preset, {epochs_text(settings)}, "
        f"overrides: {overrides}; data: {settings['data'] or 'the built-in synthetic data'}; "
        f"seeds {', '.join(map(str, seeds))}; {num_queries} queries. Cells: mean over seeds and "
        f"queries [95 % bootstrap interval, {boot['replicates']} replicates resampling seeds and "
        "queries]. Stage-1 weights shared by every AAA-Net configuration of a seed: "
        f"{'yes' if results.get('stage1_shared_within_seed') else 'NO (the runs are not paired)'}.",
    ]
    occluded = "occlusion" in results
    if occluded:
        lines += ["", occlusion_lib.describe(results)]
    for metric in metrics:
        summary = results["summary"][metric]
        lines += ["", f"### Configurations ({metric}{', occluded queries' if occluded else ''})"]
        for title, rows in _tables_shown(present, occluded):
            if occluded:
                lines += ["", f"**{title}**", "", *occlusion_lib.occlusion_table(results, metric, rows)]
                continue
            lines += ["", f"**{title}**", "", "| configuration | Rank-1 (%) | mAP (%) | mINP (%) |",
                      "|---|---|---|---|"]
            for name in rows:
                entry = summary[name]
                lines.append(f"| {VARIANT_BY_NAME[name].label} | {_cell(entry['rank1'])} | "
                             f"{_cell(entry['mAP'])} | {_cell(entry['mINP'])} |")
        for measure in ablation_stats.MEASURES:
            claims = results["claims"][metric][measure]
            if not claims:
                continue
            lines += ["", f"### Verdicts: {measure}, {metric}{', occluded queries' if occluded else ''}", "",
                      f"| claim | Δ {measure} (points) [95 % CI] | p (one-sided) | p (Holm) | "
                      "seed-level Wilcoxon p | verdict |", "|---|---|---|---|---|---|"]
            for row in claims:
                lines.append(f"| {row['claim']} | {_diff_cell(row)} | {_p(row['p_value'])} | "
                             f"{_p(row['p_holm'])} | {_p(row['wilcoxon_p'])} | **{row['verdict']}** |")
    spread = (results.get("seed_spread") or {}).get(primary)
    if spread:
        lines += ["", f"### Seed-to-seed spread of mAP ({primary}) and seeds for a 1-point difference", "",
                  "Per configuration, the standard deviation over seeds of its mAP: "
                  + ", ".join(f"{name} {entry['sd']:.2f}" for name, entry in spread["configs"].items())
                  + " points. Per claim, the standard deviation over seeds of the paired mAP "
                  "difference (same seed, same stage-1 weights), what it would be if the two sides "
                  "were independent runs, and the seeds a one-sided paired t-test needs to detect a "
                  f"true 1-point difference with {spread['power']:.0%} power at {spread['alpha']} "
                  "(before multiple-comparison correction):", "",
                  "| claim | SD of paired Δ mAP | SD if unpaired | seeds for 1 point |", "|---|---|---|---|"]
        for row in spread["claims"]:
            needed = row["seeds_needed"] if row["seeds_needed"] is not None else "> 10000"
            lines.append(f"| {row['claim']} | {row['paired_sd']:.2f} | {row['unpaired_sd']:.2f} | {needed} |")
    lines += ["", f"### Per seed{' (occluded queries)' if occluded else ''}", "",
              "| configuration | seed | Rank-1 | mAP | mINP | train s | stage-1 digest |", "|---|---|---|---|---|---|---|"]
    if occluded:
        runs = occlusion_lib.query_set_runs(runs, "occluded")
    for run in sorted(runs, key=lambda r: ([v.name for v in VARIANTS].index(r["config"]), r["seed"])):
        entry = run["metrics"][primary]
        lines.append(f"| {run['config']} | {run['seed']} | {entry['rank1']:.1f} | {entry['mAP']:.1f} | "
                     f"{entry['mINP']:.1f} | {run['train_seconds']:.0f} | {run['stage1_digest'][:12]} |")
    return "\n".join(lines) + "\n"


def plot_claims(results: dict, path: str) -> str | None:
    """Per-claim paired differences with their 95 % intervals, one panel per measure (primary metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = results["metrics"][0]
    claims = results["claims"][metric]
    if not claims["mAP"]:
        return None
    colours = {"holds": "tab:green", "not shown": "tab:gray", "reversed": "tab:red"}
    figure, axes = plt.subplots(1, 3, figsize=(13, 0.6 * len(claims["mAP"]) + 1.6), sharey=True)
    for axis, measure in zip(axes, ablation_stats.MEASURES):
        rows = claims[measure]
        for y, row in enumerate(rows):
            axis.errorbar(row["mean"], y, xerr=[[row["mean"] - row["low"]], [row["high"] - row["mean"]]],
                          fmt="o", color=colours[row["verdict"]], capsize=3)
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_title(f"Δ {measure} (points), {metric}")
        axis.set_yticks(range(len(rows)), [r["claim"] for r in rows])
        axis.invert_yaxis()
        axis.grid(axis="x", alpha=0.3)
    figure.suptitle("Paired differences with 95 % bootstrap intervals "
                    "(green: holds, grey: not shown, red: reversed; Holm-corrected)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def summary_markdown(results: dict, command: str = "") -> str:
    """The short form for a README: every configuration's Rank-1 / mAP (clean and occluded side by
    side in a grid with occluded queries) and the mAP verdicts, under the first metric; the full
    tables are :func:`report_markdown`'s."""
    metric = results["metrics"][0]
    summary = results["summary"][metric]
    runs = results["runs"]
    settings = results["settings"]
    lines = [f"`{command or 'python cli.py ablate'}` on {settings['data'] or 'the built-in data'} "
             f"({epochs_text(settings)}, `{settings['preset']}` preset; {len(results['seeds'])} seeds x "
             f"{runs[0]['metrics'][metric]['num_query']} queries; {metric} distance). Mean [95 % bootstrap "
             "interval over seeds and queries]; full tables, the other distances and the per-seed values "
             "in [docs/results.md](docs/results.md)."
             + (" " + occlusion_lib.describe(results) if "occlusion" in results else ""), ""]
    names = [v.name for v in VARIANTS if v.name in summary]
    if "occlusion" in results:  # clean and occluded side by side
        lines += occlusion_lib.occlusion_table(results, metric, names)
    else:
        lines += ["| configuration | Rank-1 (%) | mAP (%) |", "|---|---|---|"]
        for name in names:
            entry = summary[name]
            lines.append(f"| {VARIANT_BY_NAME[name].label} | {_cell(entry['rank1'])} | {_cell(entry['mAP'])} |")
    lines += ["", "| claim | Δ mAP (points) [95 % CI] | p (Holm) | verdict |", "|---|---|---|---|"]
    for row in results["claims"][metric]["mAP"]:
        lines.append(f"| {row['claim']} | {_diff_cell(row)} | {_p(row['p_holm'])} | **{row['verdict']}** |")
    return "\n".join(lines) + "\n"


def grid_recipe(results: dict) -> str:
    """The training recipe of a grid (``paper`` for a grid made before ``--recipe`` existed)."""
    return config_overrides(results["settings"]["overrides"])["recipe"]


def write_report(results: dict, out: str, write=(), command: str = "") -> list[str]:
    """OUT/results.md and OUT/claims.png; with ``write`` (paths), also those markdown files:
    one holding the summary markers gets :func:`summary_markdown` (a README), any other the
    full report (e.g. docs/results.md); one holding only the cross-recipe block (``ablate-recipes``)
    is left to ``--compare-with``. Each recipe has its own blocks (:func:`markers`), so the grids
    of both recipes can write into one file."""
    if isinstance(write, str):
        write = (write,)
    body = report_markdown(results, command)
    written = []
    path = os.path.join(out, REPORT_FILE)
    write_text_atomically(path, "# Ablation (`cli.py ablate`)\n\n" + body)
    written.append(path)
    figure = plot_claims(results, os.path.join(out, FIGURE_FILE))
    if figure:
        written.append(figure)
    key = grid_key(results)
    for path in write or ():
        if _has_block(path, markers("ablate-recipes")[0]) and not _has_block(path, markers("ablate", key)[0]):
            continue  # a file holding only the cross-recipe table: --compare-with writes it
        if _has_block(path, SUMMARY_BEGIN):
            written.append(update_results_doc(path, summary_markdown(results, command), None,
                                              *markers("ablate-summary", key)))
        else:
            written.append(update_results_doc(path, body, figure, *markers("ablate", key),
                                              figure_name=f"ablation_claims{'_' + key if key else ''}.png"))
    return written


def grid_key(results: dict) -> str:
    """The grid's name in its generated blocks and figure (``grid.grid_name``: "" for the paper
    recipe on builtin:ablate, else e.g. "strong", "occluded")."""
    settings = results["settings"]
    return grid_name(settings["data"] or ABLATE_DATA, grid_recipe(results), settings.get("preset", "demo"),
                     settings.get("occlude_queries"))


def markers(kind: str, key: str = "") -> tuple[str, str]:
    """The begin / end comments of a generated block: ``kind`` is ``ablate`` (the full report),
    ``ablate-summary`` (a README's short form) or ``ablate-recipes`` (the cross-recipe table);
    ``key`` is :func:`grid_key` (the paper recipe on builtin:ablate keeps the names it had before
    ``--recipe`` existed; "paper" is read as "")."""
    name = kind if key in ("", "paper") else f"{kind}:{key}"
    return (f"<!-- {name}:begin (written by `python cli.py ablate --report-only --write`; do not edit) -->",
            f"<!-- {name}:end -->")


BEGIN, END = markers("ablate")
SUMMARY_BEGIN, SUMMARY_END = markers("ablate-summary")


def _has_block(path: str, begin: str) -> bool:
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return begin in f.read()


def update_results_doc(path: str, body: str, figure: str | None, begin: str = BEGIN, end: str = END,
                       figure_name: str = "ablation_claims.png") -> str:
    """Replace the generated block of ``path`` (between the ``begin`` / ``end`` markers) with ``body``;
    a missing block is appended."""
    if os.path.isdir(path):
        raise UserError(f"--write {path} is a directory; give a markdown file such as docs/results.md")
    text = ""
    if os.path.isfile(path):
        with open(path) as f:
            text = f.read()
    if figure:
        target = os.path.join(os.path.dirname(os.path.abspath(path)), figure_name)
        shutil.copy(figure, target)
        body += f"\n![per-claim differences]({os.path.basename(target)})\n"
    block = f"{begin}\n{body}{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = (text.rstrip() + "\n\n" if text else "") + block + "\n"
    write_text_atomically(path, text)
    return path
