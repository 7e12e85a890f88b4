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

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import time

import numpy as np

from aaa_keras.data.synth import BUILTIN_PREFIX
from aaa_keras.errors import UserError
from aaa_keras.evaluation import ablation_stats
from aaa_keras.files import write_json_atomically, write_text_atomically
from aaa_keras.vocabulary import ABLATION_TABLES, METRICS

EVAL_FILE = "ablation_eval.json"
GRID_FILE = "grid.json"
RESULTS_FILE = "results.json"
REPORT_FILE = "results.md"
FIGURE_FILE = "claims.png"
TABLES = ABLATION_TABLES
ABLATE_DATA = BUILTIN_PREFIX + "ablate"  # 250 test ids, ~1,600 queries (data/synth.py)
# The training budget when neither --epochs nor --baseline-epochs is given, per preset:
# (epochs of stages 2 and 3, epochs of stage 1, stage 1's lr decay interval). With the
# demo preset on builtin:ablate a stage-2/3 epoch costs ~10x a stage-1 epoch, and the
# preset's 10 epochs per stage would take about 5 hours for `--table all --seeds 5` on
# 2 cores. After 4 stage-1 epochs the baseline had not learned (Rank-1 1.6); after 20
# with the lr decayed every 8 it reached Rank-1 22.9 / mAP 20.1 (seed 0) and was still
# rising, so stage 1 gets 30 with a decay every 12, and stages 2-3 get 4 each.
# Other presets keep their own settings.
DEFAULT_EPOCHS = {"demo": (4, 30, 12)}


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    label: str
    tables: tuple
    stage: str  # the stage that is evaluated
    overrides: tuple = ()  # RunConfig overrides, as (key, value) pairs
    epoch_control: bool = False  # stage 1 for the network epochs of AAA-Net's stages 1 + 3
    from_baseline: bool = False  # starts from a copy of seed<S>/baseline's stage 1


# In training order within a seed: the baseline first, everything that copies it after.
VARIANTS = (
    Variant("baseline", "Baseline (stage 1)", ("3", "4", "5", "controls"), "baseline"),
    Variant("aaa_conv3", "AAA-Net, occlusion after conv3 (with fine-tuning)", ("3", "4", "5", "controls"),
            "adversarial", (("occlude_after", "conv3"),), from_baseline=True),
    Variant("aaa_conv2", "AAA-Net, occlusion after conv2", ("3",), "adversarial",
            (("occlude_after", "conv2"),), from_baseline=True),
    Variant("aaa_conv4", "AAA-Net, occlusion after conv4", ("3",), "adversarial",
            (("occlude_after", "conv4"),), from_baseline=True),
    Variant("aaa_conv5", "AAA-Net, occlusion after conv5", ("3",), "adversarial",
            (("occlude_after", "conv5"),), from_baseline=True),
    Variant("aaa_no_finetune", "AAA-Net without fine-tuning (response mask, conv3)", ("4",), "adversarial",
            (("occlude_after", "conv3"), ("mask", "response")), from_baseline=True),
    Variant("aaa_random_mask", "AAA-Net with a random-third mask (control, conv3)", ("controls",),
            "adversarial", (("occlude_after", "conv3"), ("mask", "random")), from_baseline=True),
    Variant("baseline_random_erasing", "Baseline + random erasing", ("5",), "baseline",
            (("random_erasing", True),)),
    Variant("baseline_2x_epochs", "Baseline for stage 1 + 3's epochs (epoch control)", ("controls",),
            "baseline", epoch_control=True),
)
VARIANT_BY_NAME = {v.name: v for v in VARIANTS}

# (claim, better, worse): the paper's claims and the two controls.
CLAIMS = (
    ("AAA-Net > baseline", "aaa_conv3", "baseline"),
    ("AAA-Net > epoch control (baseline for stage 1 + 3's epochs)", "aaa_conv3", "baseline_2x_epochs"),
    ("AAA-Net > random erasing", "aaa_conv3", "baseline_random_erasing"),
    ("fine-tuning > without (Table 4)", "aaa_conv3", "aaa_no_finetune"),
    ("conv3 > conv2 (Table 3)", "aaa_conv3", "aaa_conv2"),
    ("conv3 > conv4 (Table 3)", "aaa_conv3", "aaa_conv4"),
    ("conv3 > conv5 (Table 3)", "aaa_conv3", "aaa_conv5"),
    ("attention mask > random mask", "aaa_conv3", "aaa_random_mask"),
)

# The layout of results.md: (title, rows).
TABLE_LAYOUT = (
    ("Table 3: where to occlude", ("baseline", "aaa_conv2", "aaa_conv3", "aaa_conv4", "aaa_conv5")),
    ("Table 4: with and without fine-tuning", ("baseline", "aaa_no_finetune", "aaa_conv3")),
    ("Table 5: AAA-Net against random erasing", ("baseline", "baseline_random_erasing", "aaa_conv3")),
    ("Controls (not in the paper)", ("baseline", "baseline_2x_epochs", "aaa_random_mask", "aaa_conv3")),
)


def select_variants(table: str) -> list[Variant]:
    if table != "all" and table not in TABLES:
        raise UserError(f"--table: got {table!r}; expected one of {', '.join(TABLES)} or all")
    return [v for v in VARIANTS if table == "all" or table in v.tables]


def select_metrics(metric: str) -> tuple:
    if metric == "all":
        return METRICS
    if metric not in METRICS:
        raise UserError(f"--metric: got {metric!r}; expected one of {', '.join(METRICS)} or all")
    return (metric,)


# === Running the grid ===

def grid_settings(preset: str, epochs: int | None, data: str, overrides: dict,
                  baseline_epochs: int | None = None) -> dict:
    """What every run of one OUT shares; a resumed grid must ask for the same."""
    from aaa_keras.config import make_config

    if epochs is None and baseline_epochs is None and preset in DEFAULT_EPOCHS:
        epochs, baseline_epochs, decay = DEFAULT_EPOCHS[preset]
        overrides = {"baseline_lr_decay_epochs": decay, **overrides}
    baseline_epochs = baseline_epochs or epochs  # --epochs alone: every stage
    config = make_config(preset, epochs=epochs, baseline_epochs=baseline_epochs,
                         **overrides)  # validates the values
    return {"preset": preset, "epochs_per_stage": config.epochs,
            "baseline_epochs": config.stage_epochs("baseline"), "data": data,
            "overrides": {k: v for k, v in sorted(overrides.items()) if v is not None}}


def _check_grid(out: str, settings: dict) -> None:
    path = os.path.join(out, GRID_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        if saved != settings:
            differences = [f"{k}: OUT has {saved.get(k)!r}, requested {settings[k]!r}"
                           for k in settings if saved.get(k) != settings[k]]
            raise UserError(f"--out {out} holds a grid made with other settings ("
                            + "; ".join(differences) + "); use a new --out or the original settings")
    else:
        os.makedirs(out, exist_ok=True)
        write_json_atomically(path, settings)


def run_dir_of(out: str, seed: int, name: str) -> str:
    return os.path.join(out, f"seed{seed}", name)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def finished_record(run_dir: str, metrics) -> dict | None:
    """The saved evaluation of a finished run, if it covers ``metrics``."""
    record = _read_json(os.path.join(run_dir, EVAL_FILE))
    if record is None or not all(m in record.get("metrics", {}) for m in metrics):
        return None
    return record


def _stage1_from_baseline(out: str, seed: int, run_dir: str, occlude_after: str, log) -> None:
    """Give ``run_dir`` the stage-1 weights of ``seed<S>/baseline`` (copy; no training)."""
    from aaa_keras import config as config_lib
    from aaa_keras.run_dir import DONE_FILE, LOG_FILE, stage_is_done

    target = os.path.join(run_dir, "baseline")
    if stage_is_done(run_dir, "baseline"):
        return
    source_run = run_dir_of(out, seed, "baseline")
    if not stage_is_done(source_run, "baseline"):
        raise UserError(f"{source_run} has no finished stage 1 to start {run_dir} from")
    os.makedirs(run_dir, exist_ok=True)
    partial = target + ".copying"
    shutil.rmtree(partial, ignore_errors=True)  # an interrupted earlier copy
    if os.path.isdir(target):
        shutil.rmtree(target)  # a stage dir without done.json that is not a finished copy
    source_config = config_lib.load_config(source_run)
    if source_config.occlude_after == occlude_after:
        shutil.copytree(os.path.join(source_run, "baseline"), partial,
                        ignore=shutil.ignore_patterns("tensorboard", "backup"))
        shutil.copy(os.path.join(source_run, config_lib.CONFIG_FILE),
                    os.path.join(run_dir, config_lib.CONFIG_FILE))
        log(f"{run_dir}: stage 1 copied from {source_run}")
    else:
        target_config = dataclasses.replace(source_config, occlude_after=occlude_after)
        _transplant_network(source_run, source_config, target_config, partial)
        for name in (DONE_FILE, LOG_FILE):
            if os.path.isfile(os.path.join(source_run, "baseline", name)):
                shutil.copy(os.path.join(source_run, "baseline", name), os.path.join(partial, name))
        config_lib.save_config(target_config, run_dir)
        log(f"{run_dir}: stage 1 of {source_run} moved to a network split after {occlude_after}")
    os.replace(partial, target)


def _transplant_network(source_run, source_config, target_config, directory) -> None:
    """Save ``source_run``'s stage-1 weights into a network split at another occlusion point."""
    from aaa_keras.errors import RunDirError
    from aaa_keras.run_dir import NETWORK_WEIGHTS, build_stage_parts, load_stage_weights

    source, _ = build_stage_parts(source_config)
    load_stage_weights(source, None, source_run, "baseline", with_attention=False)
    target, _ = build_stage_parts(target_config)
    by_path = {v.path: v for v in source.network.weights}
    paths = [v.path for v in target.network.weights]
    if len(by_path) != len(source.network.weights) or sorted(by_path) != sorted(paths):
        raise RunDirError(f"{source_run}: the stage-1 network split after {source_config.occlude_after} "
                          f"and after {target_config.occlude_after} do not hold the same variables")
    for variable in target.network.weights:
        variable.assign(by_path[variable.path])
    os.makedirs(directory, exist_ok=True)
    target.network.save_weights(os.path.join(directory, NETWORK_WEIGHTS))


def stage1_digest(run_dir: str) -> str:
    """SHA-256 of the stage-1 weight values of ``run_dir``, by variable path (split-independent)."""
    from aaa_keras.run_dir import load_trained

    parts = load_trained(run_dir, "baseline").parts
    digest = hashlib.sha256()
    for variable in sorted(parts.network.weights, key=lambda v: v.path):
        digest.update(variable.path.encode())
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return digest.hexdigest()


def evaluate_per_query(run_dir: str, stage: str, metrics, log=print) -> dict:
    """Rank-1 / mAP / mINP (percent) and the per-query values of ``stage`` under each metric."""
    from aaa_keras.data.names import load_dataset
    from aaa_keras.evaluation.distance import euclidean_distance, l2_normalize
    from aaa_keras.evaluation.rank import evaluate_rank_per_query
    from aaa_keras.evaluation.report import _fitted_metric, _training_data
    from aaa_keras.data.names import record_ids as _ids
    from aaa_keras.evaluation.run import _dataset_key, extract_embeddings
    from aaa_keras.model.backbone import build_embedder
    from aaa_keras.data.synth import resolve_data
    from aaa_keras.run_dir import load_trained

    trained = load_trained(run_dir, stage)
    config, parts, stage = trained.config, trained.parts, trained.stage
    embedder = build_embedder(parts)
    root = resolve_data(config.data, log)
    dataset = load_dataset(root)
    queries = l2_normalize(extract_embeddings(embedder, dataset.query, config.image_size))
    gallery = l2_normalize(extract_embeddings(embedder, dataset.gallery, config.image_size))
    (q_pids, q_camids), (g_pids, g_camids) = _ids(dataset.query), _ids(dataset.gallery)
    labels = (q_pids, g_pids, q_camids, g_camids)
    training = None
    if any(m != "euclidean" for m in metrics):
        records = dataset.train_identities()
        pids, camids = _ids(records)
        training = _training_data(extract_embeddings(embedder, records, config.image_size), pids, camids)
    result = {}
    for metric in metrics:
        if metric == "euclidean":
            distances = euclidean_distance(queries, gallery)
        else:
            model = _fitted_metric(metric, training,
                                   os.path.join(run_dir, stage, "metrics", _dataset_key(root)))
            distances = model.distance(queries, gallery)
        per_query = evaluate_rank_per_query(distances, *labels)
        ap = 100.0 * per_query["average_precision"]
        inp = 100.0 * per_query["inverse_penalty"]
        result[metric] = {
            "rank1": float(100.0 * np.mean(per_query["first_rank"] == 1)),
            "mAP": float(ap.mean()), "mINP": float(inp.mean()),
            "num_query": int(len(ap)),
            "per_query": {"query_index": per_query["query_index"].tolist(),
                          "first_rank": per_query["first_rank"].tolist(),
                          "ap": np.round(ap, 5).tolist(), "inp": np.round(inp, 5).tolist()},
        }
    return result


def run_variant(out: str, seed: int, variant: Variant, settings: dict, metrics, log) -> dict:
    """Train (or resume) and evaluate one configuration of one seed; returns its record."""
    import keras

    from aaa_keras import run_lock, training
    from aaa_keras.config import make_config

    run_dir = run_dir_of(out, seed, variant.name)
    record = finished_record(run_dir, metrics)
    if record is not None:
        record["cached"] = True
        return record
    overrides = dict(settings["overrides"], **dict(variant.overrides))
    baseline_epochs = settings.get("baseline_epochs", settings["epochs_per_stage"])
    if variant.epoch_control:
        baseline_epochs += settings["epochs_per_stage"]  # + stage 3's network epochs
    config = make_config(settings["preset"], data=settings["data"], seed=seed,
                         epochs=settings["epochs_per_stage"], baseline_epochs=baseline_epochs, **overrides)
    previous = _read_json(os.path.join(run_dir, EVAL_FILE)) or {}
    with run_lock.hold(run_dir, "ablate", log):
        if variant.from_baseline:
            _stage1_from_baseline(out, seed, run_dir, config.occlude_after, log)
        started = time.time()
        trained = training.fit(variant.stage, config, run_dir, log=log)
        # A record without the newly asked metric: the training is its earlier one.
        train_seconds = previous["train_seconds"] if "train_seconds" in previous else time.time() - started
        evaluation = evaluate_per_query(run_dir, variant.stage, metrics, log)
        evaluation = {**previous.get("metrics", {}), **evaluation}
        record = {
            "config": variant.name, "seed": seed, "stage": variant.stage,
            "epochs_per_stage": config.epochs, "baseline_epochs": config.stage_epochs("baseline"),
            "trained": trained,
            "train_seconds": round(train_seconds, 1),
            "stage1_digest": stage1_digest(run_dir),
            "metrics": evaluation,
        }
        write_json_atomically(os.path.join(run_dir, EVAL_FILE), record)
    keras.backend.clear_session()  # one process trains dozens of models
    record["cached"] = False
    return record


def _eta(seconds_by_name: dict, remaining: list) -> float | None:
    if not any(seconds_by_name.values()):
        return None
    everything = [s for values in seconds_by_name.values() for s in values]
    overall = sum(everything) / len(everything)
    return sum((sum(seconds_by_name[n]) / len(seconds_by_name[n])) if seconds_by_name.get(n) else overall
               for n in remaining)


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def run_grid(out: str, table: str = "all", seeds: int = 5, epochs: int | None = None,
             preset: str = "demo", data: str = ABLATE_DATA, metric: str = "euclidean",
             overrides: dict | None = None, progress=print, log=None, n_boot: int = 10000,
             configs=None, baseline_epochs: int | None = None) -> dict:
    """Train and evaluate the grid (seed-major), then write results.json / .md / .png; returns results.

    ``configs`` (names from ``VARIANTS``) replaces ``table``'s selection, e.g. for a small check.
    """
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    variants = select_variants(table)
    if configs:
        unknown = sorted(set(configs) - set(VARIANT_BY_NAME))
        if unknown:
            raise UserError(f"unknown configurations {unknown}; expected names from {sorted(VARIANT_BY_NAME)}")
        variants = [v for v in VARIANTS if v.name in configs]
        if any(v.from_baseline for v in variants) and "baseline" not in configs:
            variants.insert(0, VARIANT_BY_NAME["baseline"])  # the stage 1 the others copy
    metrics = select_metrics(metric)
    if data and not data.startswith(BUILTIN_PREFIX):
        data = os.path.abspath(data)
    settings = grid_settings(preset, epochs, data, overrides or {}, baseline_epochs)
    _check_grid(out, settings)
    log_path = os.path.join(out, "ablate.log")
    if log is None:
        def log(message):
            with open(log_path, "a") as f:
                f.write(str(message) + "\n")
    plan = [(seed, v) for seed in range(seeds) for v in variants]
    progress(f"ablate: {len(variants)} configurations x {seeds} seeds = {len(plan)} runs in {out} "
             f"({_epochs_text(settings)}, {preset} preset); log: {log_path}")
    started = time.time()
    records, seconds_by_name = [], {v.name: [] for v in variants}
    for number, (seed, variant) in enumerate(plan, 1):
        run_started = time.time()
        record = run_variant(out, seed, variant, settings, metrics, log)
        if not record["cached"]:
            seconds_by_name[variant.name].append(time.time() - run_started)
        records.append(record)
        remaining = [v.name for s, v in plan[number:]
                     if finished_record(run_dir_of(out, s, v.name), metrics) is None]
        primary = record["metrics"][metrics[0]]
        what = ("reused" if record["cached"] else
                f"trained {'+'.join(record['trained']) or 'nothing'} + evaluated in "
                f"{_minutes(time.time() - run_started)}")
        progress(f"[{number}/{len(plan)}] seed {seed} {variant.name}: {what}; {metrics[0]} "
                 f"Rank-1 {primary['rank1']:.1f} mAP {primary['mAP']:.1f} mINP {primary['mINP']:.1f}"
                 f" | ETA {_minutes(_eta(seconds_by_name, remaining)) if remaining else 'done'}")
    results = build_results(records, settings, table, seeds, metrics, time.time() - started, n_boot)
    write_json_atomically(os.path.join(out, RESULTS_FILE), results)
    write_report(results, out)
    return results


# === Statistics and report ===

def _epochs_text(settings: dict) -> str:
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


def analyse(results: dict) -> dict:
    """Per-configuration intervals and per-claim verdicts, from the per-query values."""
    boot = results["bootstrap"]
    metrics = results["metrics"]
    data = per_query_data(results["runs"], metrics)
    summary, claims = {}, {}
    for metric in metrics:
        summary[metric] = {
            name: {measure: ablation_stats.mean_interval(data[name][metric][measure], boot["confidence"],
                                                         boot["replicates"], 0, boot["design"])
                   for measure in ablation_stats.MEASURES}
            for name in data}
        claims[metric] = {
            measure: ablation_stats.judge_claims(CLAIMS, data, measure, metric, boot["alpha"],
                                                 boot["confidence"], boot["replicates"], 0, boot["design"])
            for measure in ablation_stats.MEASURES}
    stage1 = {}
    for run in results["runs"]:
        if VARIANT_BY_NAME[run["config"]].from_baseline or run["config"] == "baseline":
            stage1.setdefault(str(run["seed"]), set()).add(run["stage1_digest"])
    paired = all(len(d) == 1 for d in stage1.values())
    spread = None
    if len(results["seeds"]) > 1:  # seed-to-seed spread of mAP, seeds for a 1-point difference
        spread = {metric: ablation_stats.seed_spread(data, CLAIMS, metric, "mAP", delta=1.0,
                                                     alpha=boot["alpha"])
                  for metric in metrics}
    return {"summary": summary, "claims": claims, "stage1_shared_within_seed": paired,
            "seed_spread": spread}


def load_results(out: str, n_boot: int | None = None) -> dict:
    """OUT/results.json with its statistics recomputed (with ``n_boot`` replicates if given)."""
    path = os.path.join(out, RESULTS_FILE)
    results = _read_json(path)
    if results is None:
        raise UserError(f"--out {out}: no readable {RESULTS_FILE}; run `python cli.py ablate --out {out}` "
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
        f"Settings: `{settings['preset']}` preset, {_epochs_text(settings)}, "
        f"overrides: {overrides}; data: {settings['data'] or 'the built-in synthetic data'}; "
        f"seeds {', '.join(map(str, seeds))}; {num_queries} queries. Cells: mean over seeds and "
        f"queries [95 % bootstrap interval, {boot['replicates']} replicates resampling seeds and "
        "queries]. Stage-1 weights shared by every AAA-Net configuration of a seed: "
        f"{'yes' if results.get('stage1_shared_within_seed') else 'NO (the runs are not paired)'}.",
    ]
    for metric in metrics:
        summary = results["summary"][metric]
        lines += ["", f"### Configurations ({metric})"]
        for title, rows in TABLE_LAYOUT:
            rows = [r for r in rows if r in present]
            if len(rows) < 2:
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
            lines += ["", f"### Verdicts: {measure}, {metric}", "",
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
    lines += ["", "### Per seed", "", "| configuration | seed | Rank-1 | mAP | mINP | train s | stage-1 digest |",
              "|---|---|---|---|---|---|---|"]
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


def write_report(results: dict, out: str, write: str | None = None, command: str = "") -> list[str]:
    """OUT/results.md and OUT/claims.png; with ``write``, also that markdown file (e.g. docs/results.md)."""
    body = report_markdown(results, command)
    written = []
    path = os.path.join(out, REPORT_FILE)
    write_text_atomically(path, "# Ablation (`cli.py ablate`)\n\n" + body)
    written.append(path)
    figure = plot_claims(results, os.path.join(out, FIGURE_FILE))
    if figure:
        written.append(figure)
    if write:
        written.append(update_results_doc(write, body, figure))
    return written


BEGIN = "<!-- ablate:begin (written by `python cli.py ablate --report-only --write`; do not edit) -->"
END = "<!-- ablate:end -->"


def update_results_doc(path: str, body: str, figure: str | None) -> str:
    """Replace the generated block of ``path`` (between the ablate markers) with ``body``."""
    if os.path.isdir(path):
        raise UserError(f"--write {path} is a directory; give a markdown file such as docs/results.md")
    text = ""
    if os.path.isfile(path):
        with open(path) as f:
            text = f.read()
    if figure:
        target = os.path.join(os.path.dirname(os.path.abspath(path)), "ablation_claims.png")
        shutil.copy(figure, target)
        body += f"\n![per-claim differences]({os.path.basename(target)})\n"
    block = f"{BEGIN}\n{body}{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = (text.rstrip() + "\n\n" if text else "") + block + "\n"
    write_text_atomically(path, text)
    return path
