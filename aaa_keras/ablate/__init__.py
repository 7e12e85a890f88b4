"""`cli.py ablate`: the paper's Tables 3-5 and two controls as a paired, seeded, resumable grid.

Layout of ``OUT``::

    OUT/grid.json                      the settings every run of OUT shares (checked on resume)
    OUT/ablate.log                     the training and evaluation log of every run
    OUT/seed<S>/<config>/              a normal run directory (``cli.py evaluate`` works on it)
    OUT/seed<S>/<config>/ablation_eval.json   its per-query evaluation: the run is finished
    OUT/results.json                   every run, every metric, per seed and per query, and the statistics
    OUT/results.md, OUT/claims.png     the tables, the verdicts, the per-claim differences

Pairing. Within one seed every AAA-Net configuration starts from the stage-1
weights of ``seed<S>/baseline``: its ``baseline/`` stage directory and
``config.json`` are copied (not retrained). ``occlude_after`` is weight-defining
in ``config.check_compatible`` only because it names the stem/tail split of the
saved file; the stage-1 network itself does not depend on it (the same layers,
the same variables by path, the same initial values for one seed, the same
forward pass). So for conv2/conv4/conv5 the baseline's weights are moved
variable by variable (matched on ``variable.path``, every one accounted for)
into a network split at that point and saved there, with ``config.json``
saying the new point. Every configuration of a seed thus stands on
numerically the same stage-1 network (``stage1_digest`` in each record, a
SHA-256 of the weight values by variable path, shows it). The baseline
controls (2x epochs, random erasing) are separate stage-1 trainings with the
same seed: the same initial weights and data order.

TensorFlow is imported inside the functions that train or evaluate, so the
report (``--report-only``) needs numpy, scipy and matplotlib only.
"""

from aaa_keras.ablate.grid import (
    ABLATE_DATA, CLAIMS, DEFAULT_EPOCHS, EVAL_FILE, FIGURE_FILE, GRID_FILE, METRICS, REPORT_FILE,
    RESULTS_FILE, TABLE_LAYOUT, TABLES, VARIANT_BY_NAME, VARIANTS, Variant, grid_settings,
    select_metrics, select_variants)
from aaa_keras.ablate.compare import COMPARISON_FILE, compare_recipes, comparison_markdown, write_comparison
from aaa_keras.ablate.report import (
    BEGIN, END, SUMMARY_BEGIN, SUMMARY_END, analyse, grid_recipe, markers, build_results, load_results, per_query_data, plot_claims, report_markdown,
    summary_markdown, update_results_doc, write_report)
from aaa_keras.ablate.run import (
    _stage1_from_baseline, default_table, evaluate_per_query, finished_record, run_dir_of, run_grid, run_variant,
    stage1_digest)

__all__ = [
    "ABLATE_DATA",
    "BEGIN",
    "CLAIMS",
    "COMPARISON_FILE",
    "DEFAULT_EPOCHS",
    "END",
    "EVAL_FILE",
    "FIGURE_FILE",
    "GRID_FILE",
    "METRICS",
    "REPORT_FILE",
    "RESULTS_FILE",
    "SUMMARY_BEGIN",
    "SUMMARY_END",
    "TABLES",
    "TABLE_LAYOUT",
    "VARIANTS",
    "VARIANT_BY_NAME",
    "Variant",
    "_stage1_from_baseline",
    "analyse",
    "build_results",
    "compare_recipes",
    "comparison_markdown",
    "evaluate_per_query",
    "finished_record",
    "grid_recipe",
    "grid_settings",
    "load_results",
    "markers",
    "per_query_data",
    "plot_claims",
    "report_markdown",
    "run_dir_of",
    "default_table",
    "run_grid",
    "run_variant",
    "select_metrics",
    "select_variants",
    "stage1_digest",
    "summary_markdown",
    "update_results_doc",
    "write_comparison",
    "write_report",
]
