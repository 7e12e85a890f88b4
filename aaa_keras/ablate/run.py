"""Running the grid: train (or reuse) and evaluate each configuration of each seed, paired."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

import numpy as np

from aaa_keras.ablate.grid import (ABLATE_DATA, EVAL_FILE, GRID_FILE, RESULTS_FILE, VARIANT_BY_NAME, VARIANTS,
                                   Variant, config_overrides, grid_settings, select_metrics, select_variants)
from aaa_keras.ablate.report import epochs_text, read_json, build_results, write_report
from aaa_keras.data.synth import BUILTIN_PREFIX
from aaa_keras.errors import UserError
from aaa_keras.files import write_json_atomically


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


def finished_record(run_dir: str, metrics, query_sets: bool = False) -> dict | None:
    """The saved evaluation of a finished run, if it covers ``metrics`` (and, with ``query_sets``,
    the clean and occluded queries under each)."""
    record = read_json(os.path.join(run_dir, EVAL_FILE))
    if record is None or not all(m in record.get("metrics", {}) for m in metrics):
        return None
    if query_sets and not all(m in record.get("query_sets", {}).get(which, {})
                              for which in ("clean", "occluded") for m in metrics):
        return None
    return record


# What a stage copy leaves out: the stage's TensorBoard logs and fit's backup are not the stage.
_STAGE_COPY_IGNORE = shutil.ignore_patterns("tensorboard", "backup")


def _partial_copy_dir(target: str) -> str:
    """The ``<target>.copying`` directory a stage dir is assembled in before ``os.replace`` puts it at
    ``target``, after removing an interrupted earlier copy and a stage dir without done.json there."""
    partial = target + ".copying"
    shutil.rmtree(partial, ignore_errors=True)
    if os.path.isdir(target):
        shutil.rmtree(target)
    return partial


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
    partial = _partial_copy_dir(target)
    source_config = config_lib.load_config(source_run)
    if source_config.occlude_after == occlude_after:
        shutil.copytree(os.path.join(source_run, "baseline"), partial, ignore=_STAGE_COPY_IGNORE)
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


def _attention_from(out: str, seed: int, run_dir: str, source_name: str, log) -> None:
    """Give ``run_dir`` (whose stage 1 is seed<S>/baseline's) the finished stage 2 of
    ``seed<S>/<source_name>`` (copy; no training), so that the two differ in stage 3 only."""
    from aaa_keras.run_dir import stage_is_done

    target = os.path.join(run_dir, "attention")
    if stage_is_done(run_dir, "attention"):
        return
    source_run = run_dir_of(out, seed, source_name)
    if not stage_is_done(source_run, "attention"):
        raise UserError(f"{source_run} has no finished stage 2 to start {run_dir} from")
    partial = _partial_copy_dir(target)
    shutil.copytree(os.path.join(source_run, "attention"), partial, ignore=_STAGE_COPY_IGNORE)
    os.replace(partial, target)
    log(f"{run_dir}: stage 2 copied from {source_run}")


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


def evaluate_per_query(run_dir: str, stage: str, metrics, log=print, occlude_queries: int | None = None,
                       with_pair: bool = False):
    """Rank-1 / mAP / mINP (percent) and the per-query values of ``stage`` under each metric.

    ``with_pair``: returns ``(metrics, pair)``; ``pair`` is None, or, for a dataset with clean query
    twins or with ``occlude_queries`` (a seed; ``evaluation/occluded.py``), ``{"query_sets": {"clean":
    ..., "occluded": ...}, "occlusion": {"source", "seed", "mean_fraction"}}`` in the same form.
    """
    import tempfile

    from aaa_keras.evaluation.occluded import query_pair
    from aaa_keras.data.layouts import load_dataset
    from aaa_keras.evaluation.distance import l2_normalize
    from aaa_keras.evaluation.report import _training_data
    from aaa_keras.data.names import record_ids as _ids
    from aaa_keras.evaluation.run import extract_embeddings
    from aaa_keras.model.backbone import build_embedder
    from aaa_keras.data.source import resolve_run_data
    from aaa_keras.run_dir import load_trained

    trained = load_trained(run_dir, stage)
    config, parts, stage = trained.config, trained.parts, trained.stage
    embedder = build_embedder(parts)
    root = resolve_run_data(None, config.data, run_dir, log)
    dataset = load_dataset(root)
    queries = l2_normalize(extract_embeddings(embedder, dataset.query, config.image_size))
    other_queries = None
    with tempfile.TemporaryDirectory(prefix="aaa-occluded-queries-") as scratch:
        pair = query_pair(root, dataset.query, occlude_queries, scratch)
        if pair is not None:  # the queries of the pair that are not dataset.query
            other = pair.occluded if pair.source == "occlude-queries" else pair.clean
            other_queries = l2_normalize(extract_embeddings(embedder, other, config.image_size))
    gallery = l2_normalize(extract_embeddings(embedder, dataset.gallery, config.image_size))
    (q_pids, q_camids), (g_pids, g_camids) = _ids(dataset.query), _ids(dataset.gallery)
    labels = (q_pids, g_pids, q_camids, g_camids)
    training = None
    if any(m != "euclidean" for m in metrics):
        records = dataset.train_identities()
        pids, camids = _ids(records)
        training = _training_data(extract_embeddings(embedder, records, config.image_size), pids, camids)
    result = _per_query_results(queries, gallery, labels, metrics, training, run_dir, stage, root)
    if not with_pair:
        return result
    if pair is None:
        return result, None
    other = _per_query_results(other_queries, gallery, labels, metrics, training, run_dir, stage, root)
    clean, occluded = (result, other) if pair.source == "occlude-queries" else (other, result)
    return result, {"query_sets": {"clean": clean, "occluded": occluded},
                    "occlusion": {"source": pair.source, "seed": pair.seed, "mean_fraction": pair.mean_fraction}}


def _per_query_results(queries, gallery, labels, metrics, training, run_dir, stage, root) -> dict:
    from aaa_keras.evaluation.distance import euclidean_distance
    from aaa_keras.evaluation.rank import evaluate_rank_per_query
    from aaa_keras.evaluation.report import _fitted_metric
    from aaa_keras.evaluation.run import _dataset_key

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


def run_variant(out: str, seed: int, variant: Variant, settings: dict, metrics, log,
                query_sets: bool = False) -> dict:
    """Train (or resume) and evaluate one configuration of one seed; returns its record.
    ``query_sets``: the grid has clean and occluded queries (``ablate/occlusion.py``)."""
    import keras

    from aaa_keras import run_lock, training
    from aaa_keras.config import make_config

    run_dir = run_dir_of(out, seed, variant.name)
    record = finished_record(run_dir, metrics, query_sets)
    if record is not None:
        record["cached"] = True
        return record
    overrides = config_overrides({**settings["overrides"], **dict(variant.overrides)})
    baseline_epochs = settings.get("baseline_epochs", settings["epochs_per_stage"])
    if variant.epoch_control:
        baseline_epochs += settings["epochs_per_stage"]  # + stage 3's network epochs
    config = make_config(settings["preset"], data=settings["data"], seed=seed,
                         epochs=settings["epochs_per_stage"], baseline_epochs=baseline_epochs, **overrides)
    previous = read_json(os.path.join(run_dir, EVAL_FILE)) or {}
    with run_lock.hold(run_dir, "ablate", log):
        if variant.from_baseline:
            _stage1_from_baseline(out, seed, run_dir, config.occlude_after, log)
        if variant.attention_from:
            _attention_from(out, seed, run_dir, variant.attention_from, log)
        started = time.time()
        trained = training.fit(variant.stage, config, run_dir, log=log)
        # A record without the newly asked metric: the training is its earlier one.
        train_seconds = previous["train_seconds"] if "train_seconds" in previous else time.time() - started
        evaluation, pair = evaluate_per_query(run_dir, variant.stage, metrics, log,
                                              settings.get("occlude_queries"), with_pair=True)
        evaluation = {**previous.get("metrics", {}), **evaluation}
        record = {
            "config": variant.name, "seed": seed, "stage": variant.stage,
            "epochs_per_stage": config.epochs, "baseline_epochs": config.stage_epochs("baseline"),
            "trained": trained,
            "train_seconds": round(train_seconds, 1),
            "stage1_digest": stage1_digest(run_dir),
            "metrics": evaluation,
        }
        if pair is not None:
            saved = previous.get("query_sets", {})
            record["query_sets"] = {which: {**saved.get(which, {}), **pair["query_sets"][which]}
                                    for which in ("clean", "occluded")}
            record["occlusion"] = pair["occlusion"]
        write_json_atomically(os.path.join(run_dir, EVAL_FILE), record)
    keras.backend.clear_session()  # one process trains dozens of models
    record["cached"] = False
    return record


def _has_query_pair(data: str, occlude_queries: int | None) -> bool:
    """Whether the grid's runs are evaluated on clean and occluded queries: ``--occlude-queries``,
    or a dataset with clean query twins (built-in ``occluded``, or a directory with ``query_clean/``)."""
    if occlude_queries is not None:
        return True
    return _has_clean_twins(data)


def _has_clean_twins(data: str) -> bool:
    """Whether ``data`` ships clean query twins: its queries are already occluded."""
    from aaa_keras.data.occlusion_protocol import clean_query_dir
    from aaa_keras.data.synth import builtin_settings

    settings = builtin_settings(data or "")
    if settings is not None:
        return bool(settings.get("occluded"))
    return clean_query_dir(data) is not None


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


def default_table(data: str, occlude_queries: int | None) -> str:
    """``--table``'s default: the occlusion claims when the grid has occluded queries
    (``builtin:occluded``, a dataset with ``query_clean/``, or ``--occlude-queries``), else every table."""
    return "occlusion" if _has_query_pair(data, occlude_queries) else "all"


def plan_variants(table: str, configs=None) -> list[Variant]:
    """The configurations a grid trains, in training order: ``table``'s, or ``configs`` (names) with
    the runs they copy a stage from (the baseline's stage 1, ``attention_from``'s stage 2)."""
    if not configs:
        return select_variants(table)
    unknown = sorted(set(configs) - set(VARIANT_BY_NAME))
    if unknown:
        raise UserError(f"unknown configurations {unknown}; expected names from {sorted(VARIANT_BY_NAME)}")
    chosen = [VARIANT_BY_NAME[name] for name in configs]
    needed = {"baseline"} if any(v.from_baseline for v in chosen) else set()
    needed |= {v.attention_from for v in chosen if v.attention_from}
    return [v for v in VARIANTS if v.name in set(configs) | needed]


def run_grid(out: str, table: str | None = None, seeds: int = 5, epochs: int | None = None,
             preset: str = "demo", data: str = ABLATE_DATA, metric: str = "euclidean",
             overrides: dict | None = None, progress=print, log=None, n_boot: int = 10000,
             configs=None, baseline_epochs: int | None = None, occlude_queries: int | None = None) -> dict:
    """Train and evaluate the grid (seed-major), then write results.json / .md / .png; returns results.

    ``table`` None: ``default_table``. ``configs`` (names from ``VARIANTS``) replaces ``table``'s
    selection, e.g. for a small check.
    ``occlude_queries`` (a seed): every run is also evaluated on its queries occluded
    (``evaluation/occluded.py``), and the verdicts are on those; a dataset with clean query twins
    (``builtin:occluded``) is evaluated both ways without it (``ablate/occlusion.py``).
    """
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    variants = plan_variants(table or default_table(data, occlude_queries), configs)
    metrics = select_metrics(metric)
    if data and not data.startswith(BUILTIN_PREFIX):
        from aaa_keras.data.source import portable_data

        data = portable_data(data)  # an absolute path; folder:/csv: specs keep their prefix and options
    settings = grid_settings(preset, epochs, data, overrides or {}, baseline_epochs, occlude_queries)
    query_sets = _has_query_pair(data, occlude_queries)
    if occlude_queries is not None and _has_clean_twins(data):  # refused before anything trains
        from aaa_keras.evaluation.occluded import already_occluded_error

        raise already_occluded_error(data)
    if table == "occlusion" and not query_sets:
        raise UserError(f"--table occlusion judges its claims on occluded queries, and {data} has none: use "
                        "--data builtin:occluded (or a dataset with query_clean/) or add --occlude-queries SEED")
    _check_grid(out, settings)
    log_path = os.path.join(out, "ablate.log")
    if log is None:
        def log(message):
            with open(log_path, "a") as f:
                f.write(str(message) + "\n")
    plan = [(seed, v) for seed in range(seeds) for v in variants]
    progress(f"ablate: {len(variants)} configurations x {seeds} seeds = {len(plan)} runs in {out} "
             f"({epochs_text(settings)}, {preset} preset); log: {log_path}")
    started = time.time()
    records, seconds_by_name = [], {v.name: [] for v in variants}
    for number, (seed, variant) in enumerate(plan, 1):
        run_started = time.time()
        record = run_variant(out, seed, variant, settings, metrics, log, query_sets)
        if not record["cached"]:
            seconds_by_name[variant.name].append(time.time() - run_started)
        records.append(record)
        remaining = [v.name for s, v in plan[number:]
                     if finished_record(run_dir_of(out, s, v.name), metrics, query_sets) is None]
        primary = record["metrics"][metrics[0]]
        from_dataset = record.get("occlusion", {}).get("source") == "dataset"  # as given: occluded
        other = record.get("query_sets", {}).get("clean" if from_dataset else "occluded", {}).get(metrics[0])
        occluded_text = (f" ({'clean twins' if from_dataset else 'occluded queries'}: Rank-1 {other['rank1']:.1f} "
                         f"mAP {other['mAP']:.1f})" if other else "")
        what = ("reused" if record["cached"] else
                f"trained {'+'.join(record['trained']) or 'nothing'} + evaluated in "
                f"{_minutes(time.time() - run_started)}")
        progress(f"[{number}/{len(plan)}] seed {seed} {variant.name}: {what}; {metrics[0]} "
                 f"Rank-1 {primary['rank1']:.1f} mAP {primary['mAP']:.1f} mINP {primary['mINP']:.1f}{occluded_text}"
                 f" | ETA {_minutes(_eta(seconds_by_name, remaining)) if remaining else 'done'}")
    results = build_results(records, settings, table, seeds, metrics, time.time() - started, n_boot)
    write_json_atomically(os.path.join(out, RESULTS_FILE), results)
    write_report(results, out)
    return results
