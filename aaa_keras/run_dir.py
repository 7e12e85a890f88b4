"""The run directory: its file names, which stages are trained, and loading a trained stage.

A run directory holds one experiment::

    RUN/config.json                      the RunConfig, shared by the stages
    RUN/<stage>/network.weights.h5       stem + tail + classifier after the stage
    RUN/<stage>/attention.weights.h5     the attention branch (stages 2 and 3)
    RUN/<stage>/log.csv, tensorboard/    per-epoch metrics
    RUN/<stage>/backup/                  BackupAndRestore state while training
    RUN/<stage>/done.json                written last: the stage is finished

Everything that reads a run (evaluation, visualize, deploy, ablate) comes here;
``training.py`` only trains. Checking (``require_stage``) needs no TensorFlow;
building a model (``build_stage_parts``, ``load_trained``) imports it when called.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os

import numpy as np

from aaa_keras import config as config_lib
from aaa_keras.config import STAGES, RunConfig
from aaa_keras.errors import RunDirError, UserError
from aaa_keras.files import read_back, read_json_back

NETWORK_WEIGHTS = "network.weights.h5"
ATTENTION_WEIGHTS = "attention.weights.h5"
DONE_FILE = "done.json"
LOG_FILE = "log.csv"
BACKUP_DIR = "backup"
TENSORBOARD_DIR = "tensorboard"

# The settings that define what each stage trained; a finished stage records
# them in done.json, and a later `fit` asking for other values is refused
# instead of silently reusing the stage.
STAGE_SETTINGS = {
    "baseline": ("dropout", "random_erasing", "random_erasing_probability", "backbone_weights",
                 "ids_per_batch", "images_per_id", "label_smoothing", "triplet", "triplet_margin",
                 "optimizer", "weight_decay", "warmup_epochs", "precise_bn_batches"),
    "attention": ("grid_size", "attention_loss"),
    "adversarial": ("mask", "occlusion_space", "attention_loss", "occluded_batchnorm", "take_turns", "lambda1",
                    "lambda2", "omega", "occluded_fraction", "grid_size",
                    "adversarial_targets", "adversarial_target_samples",
                    "ids_per_batch", "images_per_id", "label_smoothing", "triplet", "triplet_margin",
                    "optimizer", "weight_decay", "warmup_epochs", "precise_bn_batches"),
}


def stage_dir(run_dir: str, stage: str) -> str:
    return os.path.join(run_dir, stage)


def stage_file(run_dir: str, stage: str, name: str) -> str:
    """``RUN/<stage>/<name>``, e.g. ``stage_file(run, "baseline", LOG_FILE)``."""
    return os.path.join(run_dir, stage, name)


def stage_is_done(run_dir: str, stage: str) -> bool:
    return os.path.isfile(stage_file(run_dir, stage, DONE_FILE))


def trained_stages(run_dir: str) -> list[str]:
    return [stage for stage in STAGES if stage_is_done(run_dir, stage)]


def read_done(run_dir: str, stage: str) -> dict:
    """The summary a finished stage wrote (``{}`` when it is not finished)."""
    path = stage_file(run_dir, stage, DONE_FILE)
    if not os.path.isfile(path):
        return {}
    return read_json_back(path, f"the record of the finished stage {stage}", rerun_stage(run_dir, stage))


def rerun_stage(run_dir: str, stage: str) -> str:
    """What to do about a damaged file of a finished stage, in words."""
    return (f"re-run the stage: delete {stage_dir(run_dir, stage)} and run `python cli.py fit --stage {stage} "
            f"--run-dir {run_dir}` (the same settings)")


def read_log(path: str) -> dict[str, np.ndarray]:
    """A Keras ``CSVLogger`` file as ``{column: float array}`` (NA -> NaN), one row per epoch.

    Repeated header lines (a resumed run appending) are skipped and a repeated
    epoch keeps its last row.
    """
    def read(path):
        with open(path, newline="") as f:
            return list(csv.reader(f))

    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return {}  # a log of no finished epoch
    rows = read_back(path, read, "the training log", "it is only read for curves and final metrics: delete it, or "
                     "re-run the stage to write it again")
    if not rows:
        return {}
    header = rows[0]
    by_epoch: dict[float, list[float]] = {}
    for row in rows[1:]:
        if not row or row == header or len(row) != len(header):
            continue
        values = []
        for text in row:
            try:
                values.append(float(text))
            except ValueError:
                values.append(math.nan)
        epoch = values[header.index("epoch")] if "epoch" in header else float(len(by_epoch))
        by_epoch[epoch] = values
    table = np.array([by_epoch[e] for e in sorted(by_epoch)], np.float64).reshape(-1, len(header))
    return {name: table[:, i] for i, name in enumerate(header)}


def last_epoch_metrics(run_dir: str, stage: str) -> dict:
    """The metrics of the last epoch in a stage's ``log.csv`` (``{}`` when it has none)."""
    path = stage_file(run_dir, stage, LOG_FILE)
    if not os.path.isfile(path):
        return {}
    # CSVLogger adds a val_ column (NA) per metric of a fit without validation data; History has none
    return {name: float(values[-1]) for name, values in read_log(path).items()
            if name != "epoch" and len(values) and not (name.startswith("val_") and math.isnan(values[-1]))}


def required_stages(stage: str, mask: str = "attention") -> list[str]:
    """The stages ``stage`` stands on, in training order, itself last.

    Stage 3 with the response mask (paper Table 4, "without fine-tuning") or
    the random mask has no attention branch, so it does not need stage 2.
    """
    if stage not in STAGES:
        raise UserError(f"--stage: got {stage!r}; expected one of {STAGES}")
    if stage == "adversarial" and mask != "attention":
        return ["baseline", "adversarial"]
    return list(STAGES[: STAGES.index(stage) + 1])


def require_stage(run_dir: str, stage: str | None = None) -> str:
    """The trained stage to use (default: the latest), or a one-line error; builds no model."""
    if not os.path.isfile(os.path.join(run_dir, config_lib.CONFIG_FILE)) and not os.path.isdir(run_dir):
        raise RunDirError(f"--run-dir {run_dir}: no such run directory")
    done = trained_stages(run_dir)
    if stage is None:
        if not done:
            raise RunDirError(f"--run-dir {run_dir}: no trained stage; run "
                              f"`python cli.py fit --stage baseline --run-dir {run_dir}` first")
        return done[-1]
    if stage not in STAGES:
        raise UserError(f"--stage: got {stage!r}; expected one of {STAGES}")
    if stage not in done:
        raise RunDirError(f"--run-dir {run_dir}: stage {stage!r} is not trained there (trained: "
                          f"{', '.join(done) or 'none'}); run `python cli.py fit --stage {stage} "
                          f"--run-dir {run_dir}`")
    return stage


def stage_settings(config: RunConfig, stage: str) -> dict:
    return {key: getattr(config, key) for key in STAGE_SETTINGS[stage]}


def check_finished_stages(config: RunConfig, run_dir: str, stages) -> None:
    """Refuse a request whose settings differ from those a finished stage was trained with."""
    for stage in stages:
        trained = read_done(run_dir, stage).get("settings", {})
        requested = stage_settings(config, stage)
        differences = [f"{key}: trained with {trained[key]!r}, requested {value!r}"
                       for key, value in requested.items() if key in trained and trained[key] != value]
        if differences:
            raise RunDirError(
                f"--run-dir {run_dir}: stage {stage} is already trained with other settings ("
                + "; ".join(differences) + "); use a new --run-dir for this variant")


# === Building and loading the models of a stage ===

def stage_has_attention(config: RunConfig, stage: str) -> bool:
    """Whether ``stage``'s saved state includes the attention branch."""
    return stage == "attention" or (stage == "adversarial" and config.mask == "attention")


def build_stage_parts(config: RunConfig, seed_offset: int = 0):
    """Fresh ``(ReidParts, attention branch)`` for ``config`` (random weights)."""
    import keras

    from aaa_keras.model.attention import attention_width, build_attention_branch
    from aaa_keras.model.backbone import build_parts

    keras.utils.set_random_seed(config.seed + seed_offset)
    parts = build_parts(config.num_classes, config.image_size, config.backbone,
                        config.occlude_after, config.dropout, config.backbone_weights,
                        bnneck=config.bnneck, last_stride=config.last_stride, neck_feature=config.neck_feature)
    feature_shape = parts.stem.output.shape[1:]
    attention = build_attention_branch(feature_shape, config.attention_filters or attention_width(feature_shape[-1]),
                                       seed=config.seed + 1000 + seed_offset)
    return parts, attention


def load_stage_weights(parts, attention, run_dir: str, stage: str, with_attention: bool = True) -> None:
    import h5py

    directory = stage_dir(run_dir, stage)
    for name in (NETWORK_WEIGHTS, *([ATTENTION_WEIGHTS] if with_attention and stage != "baseline" else ())):
        path = os.path.join(directory, name)  # damage is named as such, not as another configuration
        read_back(path, lambda p: h5py.File(p, "r").close(), f"the {stage} weights file", rerun_stage(run_dir, stage))
    try:
        parts.network.load_weights(os.path.join(directory, NETWORK_WEIGHTS))
        if with_attention and stage != "baseline":
            attention.load_weights(os.path.join(directory, ATTENTION_WEIGHTS))
    except (ValueError, OSError) as error:
        raise RunDirError(f"{directory}: cannot load the {stage} weights into this model "
                          f"({error}); the run dir may come from another configuration") from None


@dataclasses.dataclass
class TrainedStage:
    """A trained stage loaded from a run directory."""

    config: RunConfig
    parts: object  # model.backbone.ReidParts: stem, tail, classifier, network
    attention: object | None  # the attention branch, or None when the stage has none
    stage: str


def load_trained(run_dir: str, stage: str | None = None, neck_feature: str | None = None) -> TrainedStage:
    """The trained ``stage`` of ``run_dir`` (default: the latest), weights loaded; ``neck_feature``
    replaces the run's retrieval feature (the same weights)."""
    config = config_lib.load_config(run_dir)
    if neck_feature:
        config = dataclasses.replace(config, neck_feature=neck_feature)
        config_lib.validate(config)
    stage = require_stage(run_dir, stage)
    parts, attention = build_stage_parts(config)
    has_attention = stage_has_attention(config, stage)
    load_stage_weights(parts, attention, run_dir, stage, with_attention=has_attention)
    return TrainedStage(config, parts, attention if has_attention else None, stage)
