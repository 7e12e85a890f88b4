"""Which reading of eq. 2 makes the attention do its job? (docs/decisions.md, "Which attention loss")

For each seed: one baseline (stage 1), then, starting from a copy of it,
stages 2 and 3 with every ``--attention-loss`` reading, and stage 3 with the
``response`` (paper Table 4, without fine-tuning) and ``random`` masks, and
with ``--occluded-batchnorm moving`` (from a copy of the bce run's stage 2).
Every run is a normal run directory made by ``cli.py fit``; the table gives
the attention diagnostics (``aaa_keras/model/diagnostics.py``) of each
trained stage, recomputed from its weights with the current code, and the
Rank-1 / mAP of ``cli.py evaluate``.

    python benchmarks/attention_readings.py --out runs/readings --seeds 0 1

Extra ``fit`` flags go after ``--``, e.g. ``-- --epochs 4``. Finished runs are
reused, so an interrupted measurement continues where it stopped.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

from common import REPO_ROOT, machine_description

READINGS = ("l1", "bce", "soft")
MASK_CONTROLS = ("response", "random")
COLUMNS = ("hit_rate", "argmax_agreement", "cell_rank_correlation", "efficacy", "p_full", "p_masked",
           "p_random", "positive_fraction", "attention_spread")


def cli(*args):
    command = [sys.executable, os.path.join(REPO_ROOT, "cli.py"), *args]
    result = subprocess.run(command, capture_output=True, text=True,
                            env=dict(os.environ, AAA_KERAS_VERBOSE="0"))
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def done(run_dir, stage):
    path = os.path.join(run_dir, stage, "done.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def evaluation(run_dir, stage):
    path = os.path.join(run_dir, f"eval_{stage}.json")
    if not os.path.isfile(path):
        cli("evaluate", "--run-dir", run_dir, "--stage", stage, "--json", path)
    with open(path) as f:
        return json.load(f)["euclidean"]


def diagnostics(run_dir, stage):
    """The diagnostics of a trained stage, recomputed from its weights with the current code."""
    from aaa_keras.data.layouts import load_dataset
    from aaa_keras.data.source import resolve_run_data
    from aaa_keras.model.diagnostics import attention_diagnostics
    from aaa_keras.run_dir import load_trained
    from aaa_keras.training import diagnostics_callback

    trained = load_trained(run_dir, stage)
    config, parts, attention = trained.config, trained.parts, trained.attention
    mask = "attention" if stage == "attention" else config.mask
    dataset = load_dataset(resolve_run_data(None, config.data, run_dir, lambda *_: None))
    probe = diagnostics_callback(stage, config, dataset, log=lambda *_: None)
    return attention_diagnostics(parts.stem, parts.tail, probe.images, probe.labels, mask, attention,
                                 config.grid_size, config.occluded_fraction, seed=config.seed)


def run_variant(out, seed, name, fit_flags, extra, stage2_from=None):
    base = os.path.join(out, f"seed{seed}", "baseline_only")
    if done(base, "baseline") is None:
        # the paper's recipe: the tables in docs/decisions.md were measured with it (the demo preset's
        # own default is now the strong recipe)
        cli("fit", "--stage", "baseline", "--run-dir", base, "--seed", str(seed), "--recipe", "paper",
            "--no-evaluate", *extra)
    run_dir = os.path.join(out, f"seed{seed}", name)
    if done(run_dir, "adversarial") is None:
        if not os.path.isdir(os.path.join(run_dir, "baseline")):  # paired: the same stage-1 weights
            os.makedirs(run_dir, exist_ok=True)
            shutil.copytree(os.path.join(base, "baseline"), os.path.join(run_dir, "baseline"))
            shutil.copy(os.path.join(base, "config.json"), os.path.join(run_dir, "config.json"))
            if stage2_from:  # the same stage-2 weights too: only stage 3 differs
                shutil.copytree(os.path.join(out, f"seed{seed}", stage2_from, "attention"),
                                os.path.join(run_dir, "attention"))
        print(f"seed {seed} {name}: training", flush=True)
        cli("fit", "--stage", "adversarial", "--run-dir", run_dir, "--seed", str(seed), "--recipe", "paper",
            "--no-evaluate", *fit_flags, *extra)
    rows = []
    for stage in ("attention", "adversarial"):
        summary = done(run_dir, stage)
        if summary is None:
            continue
        metrics = summary["final_metrics"]
        if stage == "attention" and stage2_from:
            continue  # a copy of another variant's stage 2
        values = diagnostics(run_dir, stage)
        row = {"seed": seed, "variant": name, "stage": stage, **{k: values.get(k) for k in COLUMNS}}
        if stage == "adversarial":
            row.update({k: v for k, v in evaluation(run_dir, stage).items() if k in ("rank1", "mAP")})
            row["gate_rate"] = metrics.get("gate_rate")
        rows.append(row)
    baseline_eval = evaluation(base, "baseline")
    return rows, baseline_eval


def fmt(value, digits=2):
    return "" if value is None else f"{value:.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/readings")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--readings", nargs="+", default=list(READINGS))
    parser.add_argument("--masks", nargs="*", default=list(MASK_CONTROLS))
    parser.add_argument("--batchnorm", action="store_true",
                        help="add stage 3 with --occluded-batchnorm moving (needs the bce reading)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="flags passed to every fit (after --extra)")
    args = parser.parse_args()
    variants = [(f"loss_{r}", ["--attention-loss", r], None) for r in args.readings]
    variants += [(f"mask_{m}", ["--mask", m], None) for m in args.masks]
    if args.batchnorm:
        variants.append(("bce_moving_batchnorm",
                         ["--attention-loss", "bce", "--occluded-batchnorm", "moving"], "loss_bce"))
    rows, baselines = [], {}
    for seed in args.seeds:
        for name, flags, stage2_from in variants:
            variant_rows, baselines[seed] = run_variant(args.out, seed, name, flags, args.extra,
                                                        stage2_from)
            rows.extend(variant_rows)
    with open(os.path.join(args.out, "readings.json"), "w") as f:
        json.dump({"machine": machine_description(), "rows": rows, "baselines": baselines}, f, indent=1)
    print(f"\n{machine_description()}\n`python benchmarks/attention_readings.py {' '.join(sys.argv[1:])}`\n")
    print("| seed | variant | stage | hit rate | argmax = k* | cell rank corr. | efficacy | "
          "p full / masked / random third | positive fraction | spread | gate rate | Rank-1 | mAP |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['variant']} | {r['stage']} | {fmt(r['hit_rate'])} | "
              f"{fmt(r['argmax_agreement'])} | {fmt(r['cell_rank_correlation'])} | {fmt(r['efficacy'])} | "
              f"{fmt(r['p_full'], 3)} / {fmt(r['p_masked'], 3)} / {fmt(r['p_random'], 3)} | "
              f"{fmt(r['positive_fraction'], 3)} | {fmt(r['attention_spread'], 3)} | "
              f"{fmt(r.get('gate_rate'))} | {fmt(r.get('rank1'), 1)} | {fmt(r.get('mAP'), 1)} |")
    for seed, result in baselines.items():
        print(f"\nseed {seed} baseline (stage 1 only): Rank-1 {result['rank1']:.1f}, mAP {result['mAP']:.1f}")


if __name__ == "__main__":
    main()
