"""One flat run configuration, its presets, and its JSON file in the run directory.

A run directory holds every stage of one experiment, so the configuration is
shared by the three stages: the stage-specific learning rates sit side by side
(``baseline_lr``, ``attention_lr``, ...), there are no nested dicts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings

from aaa_keras.errors import RunDirError, UserError
from aaa_keras.files import read_json_back, write_json_atomically

STAGES = ("baseline", "attention", "adversarial")
ATTENTION_LOSSES = ("l1", "bce", "soft")  # readings of eq. 2 (model/losses.py)
MASKS = ("attention", "response", "random")  # what stage 3 ranks to occlude (model/occlusion.py)
OCCLUDED_BATCHNORM = ("batch", "moving")
# Stage 3 occludes the conv3 feature map with zeros (paper) or the image with another identity's
# pixels (model/pixel_occlusion.py; issue 21 item 2, beyond the paper)
OCCLUSION_SPACES = ("feature", "pixel")
# Stage 2's M_occ: searched once per training view (image x flip; stage 2 augments by flip only) or
# every step on pad-crop-flip views (attention_targets.py; docs/decisions.md, "Stage 2's grid search once")
ATTENTION_TARGETS = ("cached", "per-step")
# Stage 3's M_occ: searched for the samples whose gate of eq. 4 is open, or for every sample (same loss)
ADVERSARIAL_TARGETS = ("gated", "all", "sampled")
OCCLUSION_POINTS = ("conv2", "conv3", "conv4", "conv5")
BACKBONES = ("resnet50", "mobilenet_v3_large", "efficientnet_b0", "tiny_resnet")
DISTRIBUTE_STRATEGIES = ("none", "mirrored", "multiworker")  # tf.distribute (execution.py)
MIXED_PRECISIONS = ("mixed_float16", "mixed_bfloat16")  # Keras dtype policies; "" = float32
RECIPES = ("paper", "strong")  # training recipe: the paper's, or the Bag of Tricks (RECIPE_DEFAULTS)
NECK_FEATURES = ("after", "before")  # the retrieval feature with a BNNeck (BoT's TEST.NECK_FEAT)
OPTIMIZERS = ("sgd", "adam")  # the network's optimizer in stages 1 and 3 (training.make_optimizer)
LAST_STRIDES = (1, 2)  # stride of conv5's first block (model/backbone.py: LAST_STRIDE_LAYERS)
LAST_STRIDE_BACKBONES = ("resnet50", "tiny_resnet")  # backbones whose last stride can be 1
CONFIG_FILE = "config.json"


@dataclasses.dataclass
class RunConfig:
    """Every setting of a run. Saved as ``config.json`` beside the weights."""

    # === Data ===
    data: str = ""  # dataset root; "" means the built-in synthetic data
    image_height: int = 64
    image_width: int = 32
    batch_size: int = 16
    seed: int = 0
    random_erasing: bool = False  # paper Table 5 comparison (baseline only)
    random_erasing_probability: float = 0.5
    ids_per_batch: int = 0  # P of identity-balanced P x K batches (stages 1 and 3); 0 = shuffled batches
    images_per_id: int = 4  # K of P x K batches
    # === Model ===
    backbone: str = "resnet50"
    backbone_weights: str = ""  # "" = random init, "imagenet", or a path to an .h5 file
    occlude_after: str = "conv3"  # paper Table 3: conv3 is best
    dropout: float = 0.5  # paper 4.2: 0.5 Market-1501, 0.6 DukeMTMC-reID
    attention_filters: int = 0  # 0 = model/attention.py's attention_width: clip(channels of f, 64, 256)
    bnneck: bool = False  # BatchNorm between the pooled feature and a bias-free classifier (BoT)
    neck_feature: str = "after"  # with bnneck, the retrieval feature: after its BatchNorm or before (BoT)
    last_stride: int = 2  # 1 keeps conv5 at conv4's resolution (BoT)
    # === Recipe: the paper's or the Bag of Tricks' (RECIPE_DEFAULTS) ===
    recipe: str = "paper"
    label_smoothing: float = 0.0  # epsilon of the label-smoothing cross-entropy (stages 1 and 3)
    triplet: bool = False  # batch-hard triplet loss on the pooled feature (needs P x K batches)
    triplet_margin: float = 0.3
    optimizer: str = "sgd"  # the network's optimizer in stages 1 and 3: sgd or adam
    warmup_epochs: int = 0  # linear warm-up from 0.1x of the network's lr (stages 1 and 3)
    precise_bn_batches: int = 0  # after stages 1 and 3: BatchNorm statistics over this many training batches
    # === Optimisation (paper 4.2) ===
    epochs: int = 10  # per stage
    baseline_epochs: int = 0  # stage 1's own epoch count; 0 = ``epochs``
    momentum: float = 0.9
    weight_decay: float = 0.0  # the network's (stages 1 and 3); adam: L2 added to the gradient
    baseline_lr: float = 1e-3
    baseline_lr_decay_epochs: int = 2
    # Eq. 2 and eq. 3 are per-position means (model/losses.py), so this rate means the same at
    # every map size: 0.03 ~ the paper's 1e-4 on a sum over 300 positions (docs/decisions.md,
    # "Eq. 2 and eq. 3 on one scale"). Also stage 3's attention player.
    attention_lr: float = 0.03
    attention_momentum: float = 0.9  # stage 2 (docs/decisions.md: 0.9 learns faster with bce)
    adversarial_attention_momentum: float = 0.0  # stage 3's attention player (exact skips anywhere)
    attention_lr_decay_epochs: int = 3
    adversarial_lr: float = 1e-4
    adversarial_lr_decay_epochs: int = 3
    lr_decay_rate: float = 0.1
    # === AAA-Net (paper 3.2-3.3, eq. 4) ===
    grid_size: int = 4  # 4x4 = 16 occlusion cells
    occluded_fraction: float = 1.0 / 3.0  # stage 3 masks the top third of M_att
    lambda1: float = 0.3  # weight of L_r in eq. 4
    lambda2: float = 1.7  # weight of L_att in eq. 4
    omega: float = 0.04  # gate threshold on p_bf - p_af in eq. 4
    attention_loss: str = "bce"  # reading of eq. 2 in stages 2 and 3 (docs/decisions.md)
    mask: str = "attention"  # stage 3 occludes the top third of: M_att | feature response | noise
    occluded_batchnorm: str = "batch"  # BatchNorm statistics of stage 3's occluded pass
    occlusion_space: str = "feature"  # stage 3 occludes f (paper) or the pixels B marks (upsampled)
    diagnostic_images: int = 64  # fixed training images the attention diagnostics use per epoch
    take_turns: bool = True  # alternate unabridged and occluded steps
    cells_per_call: int = 16  # occluded copies per tail call; lower it to save memory
    attention_targets: str = "cached"  # stage 2: grid search once per (image, flip), or every step
    adversarial_targets: str = "gated"  # stage 3: grid search for the open gates of eq. 4, every sample, or a few
    adversarial_target_samples: int = 4  # with adversarial_targets "sampled": open gates searched per step
    # === Execution ===
    jit_compile: bool = False
    distribute: str = "none"
    mixed_precision: str = ""  # "" (float32) or one of MIXED_PRECISIONS
    steps_per_epoch: int = 0  # 0 = one pass over the training split
    # === Filled in by the run (not flags) ===
    preset: str = "demo"
    num_classes: int = 0
    dataset_fingerprint: dict = dataclasses.field(default_factory=dict)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.image_height, self.image_width)

    def stage_epochs(self, stage: str) -> int:
        """Epochs of ``stage``: ``baseline_epochs`` for stage 1 when set, else ``epochs``."""
        return self.baseline_epochs if stage == "baseline" and self.baseline_epochs else self.epochs

    @property
    def finetune(self) -> bool:
        """Stage 3 fine-tunes stage 2's attention branch (paper Table 4, "with fine-tuning")."""
        return self.mask == "attention"

    def summary(self) -> str:
        """A printable, aligned listing of every setting."""
        items = dataclasses.asdict(self)
        width = max(len(k) for k in items)
        return "\n".join(f"  {k:<{width}} = {v}" for k, v in items.items())


PRESETS: dict[str, dict] = {
    # Runs all three stages end to end on 2 CPU cores in minutes: a small
    # residual backbone with ResNet-50's stage names (random init, no download)
    # and a larger stage-1/3 learning rate for training from scratch; stage 2
    # keeps its rate without the paper's x0.1 every 3 epochs, which left
    # the attention branch under-trained on the built-in data
    # (docs/decisions.md, "Stage 2 optimizer"). Every preset's attention branch is as wide as
    # model/attention.py's rule says for its backbone, clip(channels of f, 64, 256): 64 on
    # tiny_resnet's 32-channel conv3 map, 256 on ResNet-50's 512 (docs/decisions.md, "The
    # attention branch's width follows its input").
    "demo": dict(image_height=128, image_width=64, batch_size=16, epochs=10,
                 backbone="tiny_resnet", baseline_lr=0.05, baseline_lr_decay_epochs=4,
                 attention_lr_decay_epochs=10,
                 adversarial_lr=0.005, adversarial_lr_decay_epochs=4),
    # The paper's settings (section 4.2); meant for a GPU.
    "paper": dict(image_height=224, image_width=224, batch_size=32, epochs=10),
}

# What each recipe changes after the preset (docs/method.md, "Recipes"; docs/decisions.md,
# "The strong recipe"). ``strong`` is the Bag of Tricks (Luo et al., CVPR-W 2019): P x K
# batches, label smoothing, batch-hard triplet, BNNeck (no dropout), Adam 3.5e-4 with L2
# 5e-4, linear warm-up then step decay, random erasing and last stride 1, scaled to 10
# epochs per stage: one warm-up epoch (BoT: 10 of 120) and x0.1 every 4 epochs (BoT: at
# 40 and 70 of 120). Stage 3 fine-tunes at 0.1x stage 1's lr, the paper's ratio. Not BoT's:
# precise BatchNorm after stages 1 and 3 (model/batchnorm.py: recompute_batchnorm).
RECIPE_DEFAULTS: dict[str, dict] = {
    "paper": {},
    "strong": dict(ids_per_batch=16, images_per_id=4, label_smoothing=0.1, triplet=True,
                   triplet_margin=0.3, bnneck=True, dropout=0.0, last_stride=1, random_erasing=True,
                   optimizer="adam", weight_decay=5e-4, warmup_epochs=1, precise_bn_batches=50,
                   baseline_lr=3.5e-4, baseline_lr_decay_epochs=4,
                   adversarial_lr=3.5e-5, adversarial_lr_decay_epochs=4),
}
# The recipe a preset trains with when none is named: the demo preset's is the one that
# measured better on the built-in data at its budget (docs/decisions.md, "Which recipe the demo
# preset uses"); the paper preset's is the paper's.
PRESET_RECIPES: dict[str, str] = {"demo": "strong", "paper": "paper"}
# The strong recipe per preset: the demo preset keeps its batch of 16 as 4 ids x 4 images
# (16 x 4 = 64 is BoT's batch for Market's 751 ids; the demo data has 20).
RECIPE_PRESET_DEFAULTS: dict[tuple[str, str], dict] = {("strong", "demo"): dict(ids_per_batch=4)}
# BoT's lr 3.5e-4 fine-tunes an ImageNet backbone; from random init (no --backbone-weights)
# the strong recipe takes 10x that (docs/decisions.md, "Measured: paper vs strong").
STRONG_FROM_SCRATCH_LR = dict(baseline_lr=3.5e-3, adversarial_lr=3.5e-4)

# Settings that decide the shape or meaning of the weights: a run directory
# made with other values cannot be continued.
WEIGHT_DEFINING_KEYS = (
    "image_height", "image_width", "backbone", "occlude_after", "attention_filters",
    "num_classes", "dataset_fingerprint", "bnneck", "last_stride",
)


def make_config(preset: str = "demo", recipe: str | None = None, **overrides) -> RunConfig:
    """The preset, then the recipe's defaults, then explicit overrides (``None`` values are ignored).

    ``recipe`` None is the preset's (``PRESET_RECIPES``: demo -> strong, paper -> paper);
    ``"paper"`` changes nothing. The strong recipe also takes its per-preset settings and,
    from random init, 10x BoT's learning rates. With P x K batches (``ids_per_batch`` > 0)
    the batch size is ``ids_per_batch * images_per_id``; an explicit ``batch_size`` under the
    recipe's P x K batches (``ids_per_batch`` not given) sets P = ``batch_size / images_per_id``.
    """
    if preset not in PRESETS:
        raise UserError(f"--preset: unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    recipe = recipe or PRESET_RECIPES[preset]
    if recipe not in RECIPES:
        raise UserError(f"--recipe: got {recipe!r}; expected {_one_of(RECIPES)}")
    values = dict(PRESETS[preset], preset=preset)
    values.update(RECIPE_DEFAULTS[recipe], recipe=recipe)
    values.update(RECIPE_PRESET_DEFAULTS.get((recipe, preset), {}))
    explicit = {k: v for k, v in overrides.items() if v is not None}
    if recipe == "strong" and not explicit.get("backbone_weights", values.get("backbone_weights")):
        values.update(STRONG_FROM_SCRATCH_LR)
    values.update(explicit)
    if values.get("last_stride") == 1 and "last_stride" not in explicit and \
            values.get("backbone", RunConfig.backbone) not in LAST_STRIDE_BACKBONES:
        values["last_stride"] = 2  # the recipe's last stride 1 where the backbone has it (BoT's ResNet)
    if values.get("ids_per_batch") and "batch_size" in explicit and "ids_per_batch" not in explicit:
        per_id = values.get("images_per_id", RunConfig.images_per_id)
        if explicit["batch_size"] % per_id or explicit["batch_size"] < 2 * per_id:
            raise UserError(f"--batch-size {explicit['batch_size']} under P x K batches of "
                            f"--images-per-id {per_id}: give a multiple of {per_id} of at least {2 * per_id}, "
                            "or --ids-per-batch 0 for shuffled batches")
        values["ids_per_batch"] = explicit["batch_size"] // per_id
    if values.get("ids_per_batch"):
        pk = values["ids_per_batch"] * values.get("images_per_id", RunConfig.images_per_id)
        if "batch_size" in explicit and explicit["batch_size"] != pk:
            raise UserError(
                f"--batch-size {explicit['batch_size']} with --ids-per-batch {values['ids_per_batch']} "
                f"x --images-per-id {values.get('images_per_id', RunConfig.images_per_id)} = {pk}: "
                "a P x K batch holds P * K images; drop --batch-size or set --ids-per-batch 0")
        values["batch_size"] = pk
    config = RunConfig(**values)
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    if config.backbone not in BACKBONES:
        raise UserError(f"--backbone: unknown backbone {config.backbone!r}; expected one of {BACKBONES}")
    if config.occlude_after not in OCCLUSION_POINTS:
        raise UserError(
            f"--occlude-after: got {config.occlude_after!r}; expected one of {OCCLUSION_POINTS}")
    for name in ("image_height", "image_width", "batch_size", "epochs"):
        if getattr(config, name) < 1:
            raise UserError(f"{name} must be a positive integer, got {getattr(config, name)}")
    if config.baseline_epochs < 0:
        raise UserError(f"baseline_epochs must be a positive integer or 0 (= epochs), got {config.baseline_epochs}")
    if config.backbone == "resnet50" and min(config.image_size) < 32:
        raise UserError(f"--image-size {config.image_height}x{config.image_width}: ResNet-50 needs "
                        "at least 32x32 (e.g. 256x128)")
    if not 0.0 <= config.dropout < 1.0:
        raise UserError(f"--dropout must be in [0, 1), got {config.dropout}")
    if not 0.0 < config.occluded_fraction < 1.0:
        raise UserError(f"occluded_fraction must be in (0, 1), got {config.occluded_fraction}")
    if config.grid_size ** 2 % max(config.cells_per_call, 1) != 0 or config.cells_per_call < 1:
        raise UserError(
            f"--cells-per-call must divide {config.grid_size ** 2}, got {config.cells_per_call}")
    for name, choices in (("attention_loss", ATTENTION_LOSSES), ("mask", MASKS),
                          ("occluded_batchnorm", OCCLUDED_BATCHNORM), ("occlusion_space", OCCLUSION_SPACES),
                          ("attention_targets", ATTENTION_TARGETS),
                          ("adversarial_targets", ADVERSARIAL_TARGETS)):
        if getattr(config, name) not in choices:
            raise UserError(f"--{name.replace('_', '-')}: got {getattr(config, name)!r}; "
                            f"expected one of {choices}")
    if config.adversarial_target_samples < 1:
        raise UserError(f"--adversarial-target-samples must be >= 1, got {config.adversarial_target_samples}")
    if config.diagnostic_images < 0:
        raise UserError(f"diagnostic_images must be >= 0, got {config.diagnostic_images}")
    if config.distribute not in DISTRIBUTE_STRATEGIES:
        raise UserError(
            f"--distribute: got {config.distribute!r}; expected {_one_of(DISTRIBUTE_STRATEGIES)}")
    if config.distribute != "none" and config.adversarial_attention_momentum > 0:
        raise UserError(
            f"adversarial_attention_momentum {config.adversarial_attention_momentum} with "
            f"--distribute {config.distribute}: "
            "under a multi-replica strategy stage 3's attention player is updated on every step "
            "(with a zero gradient while its loss is off), so momentum would move it; use 0")
    if config.mixed_precision not in ("", *MIXED_PRECISIONS):
        raise UserError(f"--mixed-precision: got {config.mixed_precision!r}; expected "
                        f"{_one_of(MIXED_PRECISIONS)}")
    _validate_recipe(config)


def _validate_recipe(config: RunConfig) -> None:
    """The settings of the strong recipe (each also a flag of its own)."""
    for name, choices in (("recipe", RECIPES), ("optimizer", OPTIMIZERS), ("last_stride", LAST_STRIDES),
                          ("neck_feature", NECK_FEATURES)):
        if getattr(config, name) not in choices:
            raise UserError(f"--{name.replace('_', '-')}: got {getattr(config, name)!r}; expected "
                            f"{_one_of(tuple(str(c) for c in choices))}")
    if config.last_stride == 1 and config.backbone not in LAST_STRIDE_BACKBONES:
        raise UserError(f"--last-stride 1 with --backbone {config.backbone}: only "
                        f"{_one_of(LAST_STRIDE_BACKBONES)} have a conv5 stride to change; use --last-stride 2")
    if config.precise_bn_batches < 0:
        raise UserError(f"--precise-bn-batches must be 0 (off) or more, got {config.precise_bn_batches}")
    if config.ids_per_batch < 0 or config.ids_per_batch == 1:
        raise UserError(f"--ids-per-batch must be 0 (shuffled batches) or at least 2, got {config.ids_per_batch}")
    if config.ids_per_batch and config.images_per_id < 2:
        raise UserError(f"--images-per-id must be at least 2 in a P x K batch, got {config.images_per_id}")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise UserError(f"--label-smoothing must be in [0, 1), got {config.label_smoothing}")
    if config.triplet_margin < 0:
        raise UserError(f"--triplet-margin must be >= 0, got {config.triplet_margin}")
    if config.triplet and not config.ids_per_batch:
        raise UserError("--triplet needs identity-balanced batches so that every anchor has a "
                        "positive: set --ids-per-batch (e.g. 16) or use --no-triplet")
    if config.warmup_epochs < 0:
        raise UserError(f"--warmup-epochs must be >= 0, got {config.warmup_epochs}")
    if config.weight_decay < 0:
        raise UserError(f"--weight-decay must be >= 0, got {config.weight_decay}")
    for name in ("baseline_lr", "attention_lr", "adversarial_lr"):
        if getattr(config, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")


def _one_of(choices) -> str:
    """``("a", "b", "c")`` -> ``"a, b or c"``."""
    return ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]


def parse_image_size(text: str) -> tuple[int, int]:
    """``"256x128"`` -> ``(256, 128)``; a clear error for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise UserError(f"--image-size: expected HEIGHTxWIDTH such as 256x128, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def save_config(config: RunConfig, run_dir: str) -> None:
    write_json_atomically(os.path.join(run_dir, CONFIG_FILE), dataclasses.asdict(config), sort_keys=True)


def load_config(run_dir: str) -> RunConfig:
    """The configuration saved in ``run_dir``; keys RunConfig lacks are dropped with a warning naming them."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise RunDirError(f"--run-dir: {run_dir} has no {CONFIG_FILE}; train a stage there first "
                          f"with `python cli.py fit --stage baseline --run-dir {run_dir}`")
    values = read_json_back(path, "the run configuration", "restore it from a copy, or train again in a new "
                            "--run-dir (the weights cannot be loaded without it)")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(k for k in values if k not in known)
    if unknown:
        warnings.warn(f"{path}: ignoring setting{'s' if len(unknown) > 1 else ''} this version does "
                      f"not have: {', '.join(unknown)} (written by another version of aaa-keras?)",
                      UserWarning, stacklevel=2)
    return RunConfig(**{k: v for k, v in values.items() if k in known})


def check_compatible(saved: RunConfig, requested: RunConfig, run_dir: str) -> None:
    """Refuse to continue a run directory made for another dataset or model shape."""
    differences = [
        f"{key}: run dir has {getattr(saved, key)!r}, requested {getattr(requested, key)!r}"
        for key in WEIGHT_DEFINING_KEYS
        if getattr(saved, key) != getattr(requested, key)
    ]
    if differences:
        raise RunDirError(
            f"--run-dir {run_dir} was made for another configuration ("
            + "; ".join(differences) + "); use a new --run-dir or the original settings")
