"""The three training stages, chained and resumable, writing a run directory (``run_dir.py``)."""

from __future__ import annotations

import dataclasses
import os
import time

import keras
import numpy as np
import tensorflow as tf

from aaa_keras import attention_targets
from aaa_keras import config as config_lib
from aaa_keras import guard, multiworker, preemption
from aaa_keras.config import STAGES, RunConfig
from aaa_keras.data.check import verify_images
from aaa_keras.data.layouts import load_dataset
from aaa_keras.data.names import SPLITS, ReidDataset, dataset_fingerprint
from aaa_keras.data.pipeline import train_dataset
from aaa_keras.data.sampler import batches_per_epoch
from aaa_keras.data.source import portable_data, resolve_data
from aaa_keras.errors import UserError
from aaa_keras.execution import distribution_strategy, precision_policy
from aaa_keras.files import json_text
from aaa_keras.model.batchnorm import recompute_batchnorm
from aaa_keras.model.stages import AdversarialModel, AttentionAssignmentModel, BaselineModel, NetworkLoss
from aaa_keras.run_dir import (
    ATTENTION_WEIGHTS, BACKUP_DIR, DONE_FILE, LOG_FILE, NETWORK_WEIGHTS, TENSORBOARD_DIR,
    build_stage_parts, check_finished_stages, last_epoch_metrics, load_stage_weights, required_stages, stage_dir,
    stage_is_done, stage_settings)


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _save_weights_atomically(model: keras.Model, path: str) -> None:
    """Write to a partial file, then rename; a full or read-only disk -> one-line RunFailure."""
    directory = os.path.dirname(path)
    guard.save_or_fail(model.save_weights, path, os.path.dirname(directory), os.path.basename(directory))


# === Data and strategy ===

def start_run(config: RunConfig, run_dir: str, log=print, stages=STAGES,
              skip_bad_images: bool = False) -> tuple[RunConfig, ReidDataset]:
    """Resolve the data, fill in the dataset-derived fields, and check or write ``config.json``.

    ``stages`` are the stages this run will use: a finished one must have been
    trained with the requested settings.
    """
    root = resolve_data(config.data, log)
    config = dataclasses.replace(config, data=portable_data(config.data))  # builtin:NAME or an absolute path
    dataset = load_dataset(root)
    dataset = verify_images(dataset, SPLITS, run_dir, skip_bad_images, log)  # never a bad image mid-epoch
    if dataset.num_classes < 2:
        raise UserError(f"--data {root}: the training split has {dataset.num_classes} "
                        "identities; a classifier needs at least 2")
    config = dataclasses.replace(config, num_classes=dataset.num_classes,
                                 dataset_fingerprint=dataset_fingerprint(dataset))
    os.makedirs(run_dir, exist_ok=True)
    if os.path.isfile(os.path.join(run_dir, config_lib.CONFIG_FILE)):
        saved = config_lib.load_config(run_dir)
        if config.attention_filters == 0 and saved.attention_filters:
            # A run dir made before the width rule (attention_filters 0 = the rule's width) holds
            # its explicit width: unless another is asked for, the run keeps it.
            config = dataclasses.replace(config, attention_filters=saved.attention_filters)
        config_lib.check_compatible(saved, config, run_dir)
    check_finished_stages(config, run_dir, stages)
    config_lib.save_config(config, run_dir)
    return config, dataset


# === Building the models of a stage ===

@keras.saving.register_keras_serializable(package="aaa_keras")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``warmup_start`` x the rate, then x``decay_rate`` every ``decay_steps``.

    The step decay counts from step 0, as Bag of Tricks' milestones do; during
    the first ``warmup_steps`` the rate is also scaled by
    ``warmup_start + (1 - warmup_start) * step / warmup_steps``.
    """

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float,
                 warmup_steps: int, warmup_start: float = 0.1):
        self.initial_learning_rate, self.decay_steps = float(initial_learning_rate), int(decay_steps)
        self.decay_rate, self.warmup_steps = float(decay_rate), int(warmup_steps)
        self.warmup_start = float(warmup_start)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        rate = self.initial_learning_rate * self.decay_rate ** tf.floor(step / max(self.decay_steps, 1))
        if self.warmup_steps:
            rate *= tf.minimum(1.0, self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps)
        return rate

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "warmup_steps": self.warmup_steps,
                "warmup_start": self.warmup_start}


@keras.saving.register_keras_serializable(package="aaa_keras")
class AdamL2(keras.optimizers.Adam):
    """Adam with ``l2 * w`` added to each gradient: ``torch.optim.Adam(weight_decay=l2)``, as in Bag of Tricks.

    Added in ``update_step``, after the gradients of the replicas are summed,
    so it counts once under ``tf.distribute``. (Keras' own ``weight_decay`` is
    decoupled, AdamW's: a different regulariser.)
    """

    def __init__(self, l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = gradient + tf.cast(self.l2, variable.dtype) * variable
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


def make_optimizer(config: RunConfig, stage: str, steps_per_epoch: int,
                   player: str = "network") -> keras.optimizers.Optimizer:
    """SGD with momentum, learning rate x``lr_decay_rate`` every few epochs (paper 4.2).

    Stage 3 has two players: the network (``adversarial_lr``, ``momentum``)
    and the attention branch (``player="attention"``: stage 2's ``attention_lr``
    with ``adversarial_attention_momentum``, on stage 3's decay schedule).

    The network of stages 1 and 3 (not stage 2, not the attention player)
    takes the recipe's ``optimizer`` (``adam``: :class:`AdamL2`),
    ``weight_decay`` and ``warmup_epochs`` (:class:`WarmupStepDecay`).
    """
    rate_of = "attention" if player == "attention" else stage
    network = player == "network" and stage != "attention"
    rate = getattr(config, f"{rate_of}_lr")
    decay_steps = getattr(config, f"{stage}_lr_decay_epochs") * steps_per_epoch
    if network and config.warmup_epochs:
        learning_rate = WarmupStepDecay(rate, decay_steps, config.lr_decay_rate,
                                        warmup_steps=config.warmup_epochs * steps_per_epoch)
    else:
        learning_rate = keras.optimizers.schedules.ExponentialDecay(
            rate, decay_steps=decay_steps, decay_rate=config.lr_decay_rate, staircase=True)
    if network and config.optimizer == "adam":
        return AdamL2(learning_rate=learning_rate, l2=config.weight_decay, epsilon=1e-8)
    if player == "attention":
        momentum = config.adversarial_attention_momentum
    elif stage == "attention":
        momentum = config.attention_momentum
    else:
        momentum = config.momentum
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum,
                                weight_decay=(config.weight_decay if network else 0.0) or None)


def build_stage_model(stage: str, config: RunConfig, run_dir: str, log=print) -> keras.Model:
    """The stage model, initialised from the stage before it (paper 3.2, 3.3)."""
    parts, attention = build_stage_parts(config)
    loss = NetworkLoss(config.label_smoothing, config.triplet_margin if config.triplet else None)
    if stage == "baseline":
        return BaselineModel(parts, loss, name="baseline")
    if stage == "attention":
        load_stage_weights(parts, attention, run_dir, "baseline")
        return AttentionAssignmentModel(parts, attention, config.grid_size, config.cells_per_call,
                                        attention_loss=config.attention_loss,
                                        name="attention_assignment")
    if config.mask == "attention":
        load_stage_weights(parts, attention, run_dir, "attention")
    else:
        log(f"Stage adversarial: --mask {config.mask}, starting from the baseline with no attention "
            "branch and no adversarial term ("
            + ("paper Table 4, without fine-tuning: the top third of the feature response" if
               config.mask == "response" else "the control: a random third of the feature map") + ")")
        load_stage_weights(parts, attention, run_dir, "baseline", with_attention=False)
    if config.occlusion_space == "pixel":
        log(f"Stage adversarial: occlusion in pixel space: the region --mask {config.mask} marks, upsampled "
            "to the image, is covered with another identity of the batch (beyond the paper)")
    return AdversarialModel(parts, attention if config.mask == "attention" else None,
                            config.grid_size, config.cells_per_call, config.occluded_fraction,
                            config.lambda1, config.lambda2, config.omega, config.take_turns,
                            mask=config.mask, attention_loss=config.attention_loss,
                            occluded_batchnorm=config.occluded_batchnorm, seed=config.seed,
                            loss=loss, targets=config.adversarial_targets,
                            target_samples=config.adversarial_target_samples,
                            occlusion_space=config.occlusion_space, name="adversarial")


def diagnostics_callback(stage: str, config: RunConfig, dataset: ReidDataset, log=print):
    """The attention diagnostics of stages 2 and 3 on a fixed set of training images (or None).

    The images are spread evenly over the (sorted) training split and loaded
    without augmentation, so every epoch and every run of the same data is
    measured on the same crops.
    """
    from aaa_keras.data.pipeline import eval_dataset
    from aaa_keras.model.diagnostics import AttentionDiagnostics

    if stage == "baseline" or config.diagnostic_images == 0:
        return None
    records = dataset.train_identities()
    labels, _ = dataset.relabel(records)
    count = min(config.diagnostic_images, len(records))
    picks = np.linspace(0, len(records) - 1, count).round().astype(int)
    images = np.concatenate(list(eval_dataset([records[i].path for i in picks], config.image_size)
                                 .as_numpy_iterator()))
    mask = "attention" if stage == "attention" else config.mask  # stage 2 always has M_att
    return AttentionDiagnostics(images, np.asarray(labels)[picks], mask, config.grid_size,
                                config.occluded_fraction, seed=config.seed, log=log, stage=stage,
                                frozen_network=stage == "attention")


# === Training ===

def cached_attention_targets(config: RunConfig, stage: str) -> bool:
    """Whether ``stage`` is stage 2 searching its targets once per view (``attention_targets.py``)."""
    return stage == "attention" and config.attention_targets == "cached"


def stage_data(config: RunConfig, stage: str, paths, labels) -> tf.data.Dataset:
    """The training batches of ``stage``: stage 2's views with ``--attention-targets cached``,
    else pad-crop-flip (P x K batches where ``identity_batches``; random erasing in stage 1)."""
    if cached_attention_targets(config, stage):
        return attention_targets.view_dataset(paths, labels, config.image_size, config.batch_size,
                                              seed=config.seed)
    erasing = config.random_erasing_probability if (config.random_erasing and stage == "baseline") else 0.0
    pk = dict(ids_per_batch=config.ids_per_batch, images_per_id=config.images_per_id) \
        if identity_batches(config, stage) else {}
    return train_dataset(paths, labels, config.image_size, config.batch_size,
                         seed=config.seed, random_erasing_probability=erasing, **pk)


def _fill_target_table(model, config: RunConfig, paths, labels, log) -> None:
    """Stage 2: the grid search of every training view, once, before the first epoch."""
    started = time.time()
    table = attention_targets.target_table(model, paths, labels, config.image_size)
    model.set_target_table(table)
    log(f"Stage attention: grid search of {len(paths)} images x {attention_targets.VIEWS_PER_IMAGE} "
        f"views done once in {time.time() - started:.1f} s; every epoch reads its targets from it "
        "(--attention-targets cached)")


def identity_batches(config: RunConfig, stage: str) -> bool:
    """Whether ``stage`` trains on P x K batches: stages 1 and 3 with ``ids_per_batch`` set."""
    return bool(config.ids_per_batch) and stage != "attention"


def _steps_per_epoch(config: RunConfig, num_images: int, labels=None, stage: str = "baseline") -> int:
    """``--steps-per-epoch``, else one pass over the images (P x K batches: BoT's epoch, data/sampler.py)."""
    if config.steps_per_epoch:
        return config.steps_per_epoch
    if labels is not None and identity_batches(config, stage):
        return batches_per_epoch(labels, config.ids_per_batch, config.images_per_id)
    return max(1, num_images // config.batch_size)


def train_stage(stage: str, config: RunConfig, dataset: ReidDataset, run_dir: str, log=print,
                callbacks=(), strategy: tf.distribute.Strategy | None = None,
                watcher: preemption.Watcher | None = None) -> dict:
    """Train one stage to completion (resuming a backup if one exists); returns its summary.

    ``callbacks`` are added after the run's own (BackupAndRestore, CSVLogger,
    TensorBoard). ``watcher`` (``preemption.watch``): SIGTERM saves the backup within
    about a second and a step, and exits 143; a backup saved mid-epoch resumes at that step.
    """
    directory = stage_dir(run_dir, stage)
    os.makedirs(directory, exist_ok=True)
    records = dataset.train_identities()
    labels, _ = dataset.relabel(records)
    steps = _steps_per_epoch(config, len(records), labels, stage)
    paths = [r.path for r in records]
    data = stage_data(config, stage, paths, labels)

    strategy = strategy or distribution_strategy(config.distribute)
    with precision_policy(config.mixed_precision):  # restored afterwards, also on error
        with strategy.scope():
            model = build_stage_model(stage, config, run_dir, log)
            compile_options = {}
            if stage == "adversarial" and config.mask == "attention":  # the second player
                compile_options["attention_optimizer"] = make_optimizer(config, stage, steps, "attention")
            model.compile(optimizer=make_optimizer(config, stage, steps), jit_compile=config.jit_compile,
                          **compile_options)
            model(tf.zeros((1, *config.image_size, 3)))  # build before BackupAndRestore
        batch = (f"P x K = {config.ids_per_batch} ids x {config.images_per_id} images"
                 if identity_batches(config, stage) else f"batch {config.batch_size}")
        log(f"Stage {stage}: {len(model.trainable_variables)} trainable variables, "
            f"{steps} steps x {config.stage_epochs(stage)} epochs, {batch}")
        diagnostics = diagnostics_callback(stage, config, dataset, log)
        backup_dir = os.path.join(directory, BACKUP_DIR)
        resume_epoch, resume_step = preemption.saved_position(backup_dir)
        if resume_step:
            log(f"Stage {stage}: resuming at epoch {resume_epoch + 1} step {resume_step} of {steps} "
                f"(saved when asked to stop)")
        callbacks = [
            *([diagnostics] if diagnostics else []),  # first: the loggers below record its values
            # double_checkpoint: a kill -9 while the backup is written leaves a corrupt file; Keras then
            # restores the previous epoch's copy instead of failing the rerun
            keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True),
            *([watcher.callback(stage, backup_dir, steps, resume_step)] if watcher else []),
            keras.callbacks.CSVLogger(os.path.join(directory, LOG_FILE), append=True),
            keras.callbacks.TensorBoard(os.path.join(directory, TENSORBOARD_DIR), write_graph=False),
            *callbacks,
        ]
        guard.check_free_space(directory, model, stage)  # two checkpoints + logs, before any work
        guard.keep_backup_until_saved(callbacks)  # removed below, once the weights are saved
        started = time.time()
        if cached_attention_targets(config, stage):
            _fill_target_table(model, config, paths, labels, log)
        with guard.guarded_training(run_dir, stage, directory):  # NaN loss, full disk -> one line
            history = _fit_from(model, data, config.stage_epochs(stage), steps, resume_epoch, resume_step,
                                callbacks=[*callbacks, guard.StopOnNonFiniteLoss(stage)])
        if cached_attention_targets(config, stage):  # the frozen network still gives the cached targets
            attention_targets.verify_target_table(model, model.target_table.numpy(), paths, labels,
                                                  config.image_size, seed=config.seed)
        precise_bn = _precise_batchnorm(stage, config, model, data, log)
        seconds = time.time() - started

        _save_weights_atomically(model.parts.network, os.path.join(directory, NETWORK_WEIGHTS))
        if getattr(model, "attention", None) is not None:
            _save_weights_atomically(model.attention, os.path.join(directory, ATTENTION_WEIGHTS))
        summary = {
            "stage": stage, "epochs": config.stage_epochs(stage), "steps_per_epoch": steps,
            "seconds": round(seconds, 1), "mask": config.mask,
            "settings": stage_settings(config, stage),
            "optimizer_steps": int(model.optimizer.iterations.numpy()),  # epochs x steps, also after a resume
            "final_metrics": {k: float(v[-1]) for k, v in history.items() if v}
            # no epoch ran: the backup restored them all (a rerun after a failed final save); log.csv has them
            or last_epoch_metrics(run_dir, stage),
        }
        if precise_bn is not None:
            summary["precise_bn_variance_ratio"] = round(precise_bn, 4)
        # save_or_fail is the atomic step: the lambda writes its temporary file plainly
        guard.save_or_fail(lambda tmp: _write_text(tmp, json_text(summary)),
                           os.path.join(directory, DONE_FILE), run_dir, stage)
        guard.remove_backup(directory)
        return summary


def _fit_from(model, data, epochs: int, steps: int, resume_epoch: int, resume_step: int, callbacks) -> dict:
    """``model.fit`` over ``epochs``, starting ``resume_step`` steps into epoch ``resume_epoch`` (a backup
    saved at SIGTERM): that epoch's remaining steps, then the rest; returns the merged history.

    Keras' fit has no initial step, hence a first fit of one short epoch. BackupAndRestore
    restores the weights and optimizer (its step counter too) and the epoch; the data
    stream starts again from its beginning, as on an epoch resume.
    """
    fits = [dict(initial_epoch=resume_epoch, epochs=resume_epoch + 1, steps_per_epoch=steps - resume_step)] \
        if 0 < resume_step < steps else []
    if not fits or resume_epoch + 1 < epochs:
        fits.append(dict(epochs=epochs, steps_per_epoch=steps))
    merged = {}
    for arguments in fits:
        history = model.fit(data, shuffle=False, callbacks=callbacks, verbose=config_verbosity(), **arguments)
        for name, values in history.history.items():
            merged.setdefault(name, []).extend(values)
    return merged


def _precise_batchnorm(stage: str, config: RunConfig, model, data, log) -> float | None:
    """After a stage that trains the network: its BatchNorm statistics from
    ``--precise-bn-batches`` batches of the stage's own training pipeline (un-occluded images, as
    at test time), logged with how far the running averages were off."""
    if stage == "attention" or not config.precise_bn_batches:
        return None
    ratio = recompute_batchnorm(model.parts.network, (images for images, _ in data.take(config.precise_bn_batches)))
    if ratio is not None:
        log(f"Stage {stage}: precise BatchNorm over {config.precise_bn_batches} training batches; the running "
            f"variances were {ratio:.2f}x the recomputed ones (median over channels; 1.00 = already right)")
    return ratio


def config_verbosity() -> int:
    """Keras' progress bar on a terminal, one line per epoch otherwise (``AAA_KERAS_VERBOSE`` overrides).

    A log file, CI or ``nohup`` gets ``verbose=2``: Keras' ``"auto"`` would
    write the progress bar's carriage returns and control codes into it.
    """
    value = os.environ.get("AAA_KERAS_VERBOSE", "")
    if value.isdigit():
        return int(value)
    import sys

    return 1 if sys.stdout.isatty() else 2


def fit(stage: str, config: RunConfig, run_dir: str, log=print, callbacks=(),
        skip_bad_images: bool = False) -> list[str]:
    """Train ``stage`` and any stage it stands on that is not trained yet; returns what was trained."""
    plan = required_stages(stage, config.mask)
    strategy = distribution_strategy(config.distribute)  # before any other TensorFlow op
    if strategy.num_replicas_in_sync > 1:
        log(f"Distributing with {type(strategy).__name__} over {strategy.num_replicas_in_sync} "
            f"replicas; --batch-size {config.batch_size} is the global batch")
    shared_run_dir = run_dir
    run_dir, temporary = multiworker.worker_run_dir(run_dir, strategy, log)  # only the chief writes RUN
    try:
        with preemption.watch(strategy, log) as watcher:  # SIGTERM: save within ~1 s and a step, exit 143
            return _fit_plan(stage, plan, config, run_dir, log, callbacks, skip_bad_images, strategy, watcher)
    finally:
        if temporary:
            multiworker.remove_worker_dir(run_dir)
            log(f"Worker done; the trained stages are in {shared_run_dir} (written by the chief)")


def _fit_plan(stage, plan, config, run_dir, log, callbacks, skip_bad_images, strategy, watcher) -> list[str]:
    config, dataset = start_run(config, run_dir, log, plan, skip_bad_images)
    log("Run configuration:\n" + config.summary())
    log(f"Data: {dataset.root}: {len(dataset.train_identities())} training images of "
        f"{config.num_classes} ids, {len(dataset.query)} query, {len(dataset.gallery)} gallery")
    log(f"Run directory: {os.path.abspath(run_dir)}")
    trained = []
    for step in plan:
        if stage_is_done(run_dir, step):
            log(f"Stage {step}: already trained in {stage_dir(run_dir, step)}, not retraining")
            continue
        if step != stage:
            log(f"Stage {stage} needs stage {step} first: training {step} now")
        summary = train_stage(step, config, dataset, run_dir, log, callbacks, strategy, watcher)
        log(f"Stage {step}: done in {summary['seconds']:.0f} s -> {stage_dir(run_dir, step)}")
        trained.append(step)
    return trained
