#!/usr/bin/env python
"""aaa-keras command line: data, fit, evaluate, visualize, export, embed, index, search.

Commands only parse arguments, call the library and print. TensorFlow is
imported inside the commands, so ``--help`` answers at once.

Why past ~450 lines: this file is the one home of every command's options and help texts
(the brief keeps click commands here and nowhere else); about two thirds of it is
``@click.option`` declarations, and splitting commands across files would only scatter them.
"""

from __future__ import annotations

import functools
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click  # noqa: E402

from aaa_keras import config as config_lib, quiet_tensorflow, vocabulary  # noqa: E402  (TensorFlow-free)
from aaa_keras.errors import RunFailure, UserError  # noqa: E402
from aaa_keras.run_lock import locks_run_dir  # noqa: E402

STAGE_CHOICE = click.Choice(config_lib.STAGES)
PRESET_CHOICE = click.Choice(list(config_lib.PRESETS))
BACKBONE_CHOICE = click.Choice(config_lib.BACKBONES)
DISTRIBUTE_CHOICE = click.Choice(config_lib.DISTRIBUTE_STRATEGIES)
MIXED_PRECISION_CHOICE = click.Choice(config_lib.MIXED_PRECISIONS)
METRIC_CHOICE = click.Choice([*vocabulary.METRICS, vocabulary.ALL])
# fit, evaluate and export: the retrieval feature (the same weights either way)
NECK_FEATURE_OPTION = click.option(
    "--neck-feature", type=click.Choice(config_lib.NECK_FEATURES), default=None,
    help="With a BNNeck: retrieve with the feature after its BatchNorm (BoT's) or before it "
         "(robust to int8: docs/deployment.md). [default: fit: after; evaluate: the run's own; export: "
         "before when int8 TFLite is exported (in every format of that export), else the run's own]")
RECIPE_CHOICE = click.Choice(config_lib.RECIPES)
OPTIMIZER_CHOICE = click.Choice(config_lib.OPTIMIZERS)
LAST_STRIDE_CHOICE = click.Choice([str(s) for s in config_lib.LAST_STRIDES])
RECIPE_HELP = ("Training recipe: paper = the paper's (softmax CE, SGD); strong = Bag of Tricks: P x K "
               "batches, label smoothing, batch-hard triplet and Adam with warm-up in stages 1 and 3, random "
               "erasing in stage 1, BNNeck, last stride 1, precise BatchNorm; stage 2 stays SGD (each also a "
               "flag below, which wins). [default: demo preset strong, paper preset paper]")


DATA_HELP = ("A dataset root (Market-1501, DukeMTMC-reID, Occluded-DukeMTMC, CUHK03-NP labeled/ or detected/, "
             "MSMT17, Occluded-REID, Partial-REID: recognised by their files), folder:DIR (a sub-folder per "
             "identity), csv:FILE (path,pid,camid[,split]), or builtin:demo / builtin:ablate / builtin:occluded (docs/data.md).")
CAMERA_PATTERN_OPTION = click.option(
    "--camera-pattern", default=None, metavar="REGEX",
    help="folder:/csv: data: read each image's camera from its path relative to DIR with this regular "
         r"expression's group 'cam', e.g. '_c(?P<cam>\d+)'. Unset: a camera folder level, else one camera.")
SAME_CAMERA_OK_OPTION = click.option(
    "--same-camera-ok", is_flag=True,
    help="Evaluate single-camera data: keep gallery images of the query's identity from its own camera "
         "(never the query image itself). Another protocol than Market-1501's; the result says same-camera-ok.")


def user_errors(command):
    """Print a UserError (or an OSError on a given path) as one ``Error:`` line and exit 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (UserError, OSError) as error:  # OSError: a path the user gave (a directory, no permission)
            click.echo(f"Error: {error}", err=True)
            sys.exit(2)
        except RunFailure as error:  # disk full, non-finite loss: one line, earlier work intact
            click.echo(f"Error: {error}", err=True)
            if error.exit_now:  # h5py holds a file it cannot close: skip finalisation (segfault)
                sys.stdout.flush(), sys.stderr.flush()
                os._exit(1)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted. Run the same command again to resume.", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--verbose", is_flag=True, help="Show TensorFlow's start-up and C++ log messages.")
def cli(verbose):
    """AAA-Net (attention-aware adversarial network) for person re-ID, in Keras 3.

    \b
    Example, all offline on the built-in synthetic data:
      python cli.py fit --stage adversarial --run-dir runs/demo
      python cli.py evaluate --run-dir runs/demo --metric all --rerank
      python cli.py visualize --run-dir runs/demo --what all
      python cli.py export --run-dir runs/demo --out models --format all --quantize all
    """
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        quiet_tensorflow.install()  # TensorFlow when a command first needs it (after its run-dir lock), quietly


# === data ===

@cli.group()
def data():
    """Make the built-in synthetic dataset or check a dataset directory.

    \b
    Example:
      python cli.py data synth --out /tmp/synth --ids 40
      python cli.py data check /tmp/synth
    """


@data.command("synth")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option("--ids", default=40, show_default=True, type=click.IntRange(4), help="Person ids, training and test together.")
@click.option("--test-ids", default=None, type=click.IntRange(1),
              help="How many of --ids are test ids. [default: half, rounded up]")
@click.option("--queries-per-camera", default=1, show_default=True, type=click.IntRange(1),
              help="Query images of a test id per camera (all its cameras but one).")
@click.option("--cams", default=4, show_default=True, type=click.IntRange(2), help="Cameras.")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, byte-identical files.")
@click.option("--occluded", is_flag=True,
              help="builtin:occluded's protocol: every query occluded 20-50 %, ~10 % of the gallery, 7 % of "
                   "training images; query_clean/ and occlusion.json at the root.")
@user_errors
def data_synth(out, ids, test_ids, queries_per_camera, cams, seed, occluded):
    """Write a deterministic synthetic dataset in the Market-1501 layout.

    \b
    Example:
      python cli.py data synth --out /tmp/synth --ids 40 --cams 4 --seed 0
      python cli.py data synth --out /tmp/ablate --ids 310 --test-ids 250 --queries-per-camera 3
      python cli.py data synth --out /tmp/occluded --ids 40 --occluded
    """
    from aaa_keras.data.synth import synthesize_market

    synthesize_market(out, num_ids=ids, num_cams=cams, seed=seed, num_test_ids=test_ids,
                      queries_per_camera=queries_per_camera, occluded=occluded)
    click.echo(f"Wrote the synthetic dataset to {out}")


@data.command("check")
@click.argument("root", metavar="DATA")
@click.option("--strict", is_flag=True, help="Every warning is an error (e.g. a query id with no gallery match in another camera).")
@CAMERA_PATTERN_OPTION
@user_errors
def data_check(root, strict, camera_pattern):
    """Recognise DATA's layout, count ids / images / cameras per split; fail clearly on malformed data.

    DATA is anything --data accepts: a dataset root (Market-1501, DukeMTMC-reID,
    Occluded-DukeMTMC, CUHK03-NP, MSMT17, Occluded-REID, Partial-REID), folder:DIR,
    csv:FILE or a built-in name.

    \b
    Example:
      python cli.py data check ~/datasets/Market-1501-v15.09.15
      python cli.py data check folder:~/crops --camera-pattern '_c(?P<cam>\d+)'
      python cli.py data check builtin:demo
    """
    from aaa_keras.data.check import check_data, format_report
    from aaa_keras.data.layouts import with_camera_pattern

    for report in check_data(with_camera_pattern(root, camera_pattern), strict=strict, log=click.echo):
        click.echo(format_report(report))


# === fit ===

@cli.command()
@click.option("--stage", type=STAGE_CHOICE, default="adversarial", show_default=True,
              help="Train up to this stage (earlier untrained stages are trained first).")
@click.option("--data", "data_dir", default=None, help=DATA_HELP + " [default: builtin:demo]")
@CAMERA_PATTERN_OPTION
@click.option("--run-dir", default="runs/demo", show_default=True, help="Where config, weights and logs go.")
@click.option("--preset", type=PRESET_CHOICE, default="demo", show_default=True,
              help="demo = tiny_resnet at 128x64, strong recipe, minutes on a CPU; paper = ResNet-50 224x224, "
                   "batch 32, 10 epochs, the paper's recipe (GPU).")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Epochs per stage. [default: 10]")
@click.option("--baseline-epochs", type=click.IntRange(1), default=None, help="Stage 1's epochs. [default: --epochs]")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="[default: demo preset 16, paper preset 32]")
@click.option("--image-size", default=None, metavar="HxW",
              help="Input size, e.g. 256x128. [default: demo preset 128x64, paper preset 224x224]")
@click.option("--backbone", type=BACKBONE_CHOICE, default=None,
              help="resnet50 (paper preset), mobilenet_v3_large / efficientnet_b0 (cameras), tiny_resnet (demo "
                   "preset, tests). [default: demo preset tiny_resnet, paper preset resnet50]")
@click.option("--backbone-weights", default=None, metavar="imagenet|PATH",
              help="Initial backbone weights. [default: none (random init, offline)]")
@click.option("--occlude-after", type=click.Choice(config_lib.OCCLUSION_POINTS), default=None,
              help="Occlusion point (paper Table 3). [default: conv3]")
@click.option("--dropout", type=float, default=None,
              help="Dropout before the classifier; the paper's 0.5 is for Market-1501, 0.6 for DukeMTMC-reID. "
                   "paper: 0.5, strong: 0 (BNNeck).")
@click.option("--random-erasing/--no-random-erasing", default=None,
              help="Stage 1 with keras.layers.RandomErasing (Table 5). paper: off, strong: on.")
@click.option("--recipe", type=RECIPE_CHOICE, default=None, help=RECIPE_HELP)
@click.option("--ids-per-batch", type=click.IntRange(0), default=None,
              help="P of identity-balanced P x K batches in stages 1 and 3 (batch = P x K); 0 = shuffled "
                   "batches. paper: 0, strong: 16 (demo preset: 4).")
@click.option("--images-per-id", type=click.IntRange(2), default=None, help="K of P x K batches. [default: 4]")
@click.option("--label-smoothing", type=float, default=None,
              help="Epsilon of the label-smoothing cross-entropy, stages 1 and 3. paper: 0, strong: 0.1.")
@click.option("--triplet/--no-triplet", default=None,
              help="Batch-hard triplet loss on the pooled feature (needs --ids-per-batch). paper: off, strong: on.")
@click.option("--triplet-margin", type=float, default=None, help="Margin of the triplet loss. [default: 0.3]")
@click.option("--bnneck/--no-bnneck", default=None,
              help="BatchNorm before a bias-free classifier; retrieval uses the feature after it. paper: off, "
                   "strong: on.")
@NECK_FEATURE_OPTION
@click.option("--last-stride", type=LAST_STRIDE_CHOICE, default=None,
              help="Stride of conv5 (resnet50, tiny_resnet). paper: 2, strong: 1.")
@click.option("--optimizer", type=OPTIMIZER_CHOICE, default=None,
              help="The network's optimizer in stages 1 and 3. paper: sgd, strong: adam.")
@click.option("--baseline-lr", type=float, default=None,
              help="Stage 1's learning rate. paper: 1e-3 (demo preset: 0.05), strong: 3.5e-3 from random init "
                   "(BoT's 3.5e-4 with --backbone-weights).")
@click.option("--adversarial-lr", type=float, default=None,
              help="Stage 3's network learning rate. paper: 1e-4 (demo preset: 0.005), strong: 3.5e-4 from "
                   "random init (BoT's 3.5e-5 with --backbone-weights).")
@click.option("--weight-decay", type=float, default=None,
              help="The network's weight decay (sgd: Keras', adam: L2 on the gradient). paper: 0, strong: 5e-4.")
@click.option("--warmup-epochs", type=click.IntRange(0), default=None,
              help="Linear warm-up from 0.1x of the network's lr, stages 1 and 3. paper: 0, strong: 1.")
@click.option("--precise-bn-batches", type=click.IntRange(0), default=None,
              help="After stages 1 and 3, BatchNorm statistics recomputed over N training batches. paper: 0, strong: 50.")
@click.option("--attention-loss", type=click.Choice(config_lib.ATTENTION_LOSSES), default=None,
              help="Reading of eq. 2 in stages 2-3: l1 = as printed (collapses), bce = per-position "
                   "sigmoid CE as ref. [7], soft = bce on every cell's probability drop. [default: bce]")
@click.option("--mask", type=click.Choice(config_lib.MASKS), default=None,
              help="Stage 3 occludes the top third of: attention = M_att (AAA-Net), "
                   "response = the feature response (Table 4 without fine-tuning), random = control. "
                   "[default: attention]")
@click.option("--no-finetune", is_flag=True, default=False,
              help="Paper Table 4 without fine-tuning: same as --mask response (no stage 2).")
@click.option("--occlusion-space", type=click.Choice(config_lib.OCCLUSION_SPACES), default=None,
              help="Stage 3 occludes: feature = the conv3 feature map with zeros (paper), pixel = the "
                   "image region the mask marks, covered with another identity of the batch (beyond "
                   "the paper; docs/decisions.md). [default: feature]")
@click.option("--occluded-batchnorm", type=click.Choice(config_lib.OCCLUDED_BATCHNORM), default=None,
              help="Stage 3: BatchNorm statistics of the occluded pass (docs/decisions.md). [default: batch]")
@click.option("--no-take-turns", is_flag=True, default=False, help="Stage 3: every step occluded, no alternation.")
@click.option("--lambda1", type=float, default=None, help="Weight of L_r in eq. 4. [default: 0.3]")
@click.option("--lambda2", type=float, default=None, help="Weight of L_att in eq. 4. [default: 1.7]")
@click.option("--omega", type=float, default=None, help="Gate threshold of eq. 4. [default: 0.04]")
@click.option("--cells-per-call", type=click.Choice(["1", "2", "4", "8", "16"]), default=None,
              help="Occluded copies per tail call in the grid search; lower saves memory. [default: 16]")
@click.option("--attention-filters", type=click.IntRange(1), default=None,
              help="Filters of the attention branch's two 3x3 convolutions. [default: clip(channels of the "
                   "occluded feature map, 64, 256): 64 on tiny_resnet, 256 on ResNet-50 at conv3]")
@click.option("--attention-targets", type=click.Choice(config_lib.ATTENTION_TARGETS), default=None,
              help="Stage 2's grid search: cached = once per image and flip (stage 2 augments by flip "
                   "only), per-step = every step on pad-crop-flip views. [default: cached]")
@click.option("--adversarial-targets", type=click.Choice(config_lib.ADVERSARIAL_TARGETS), default=None,
              help="Stage 3's grid search: gated = only where eq. 4's gate is open (same loss), "
                   "all = every sample, sampled = a few open gates per step, weighted by 1 / P(drawn) "
                   "(the same gradient in expectation; beyond the paper). [default: gated]")
@click.option("--adversarial-target-samples", type=click.IntRange(1), default=None,
              help="With --adversarial-targets sampled: open gates searched per step. [default: 4]")
@click.option("--steps-per-epoch", type=click.IntRange(0), default=None,
              help="0 = one pass over the data. [default: 0]")
@click.option("--distribute", type=DISTRIBUTE_CHOICE, default=None,
              help="tf.distribute strategy. [default: none]")
@click.option("--mixed-precision", type=MIXED_PRECISION_CHOICE, default=None)
@click.option("--jit-compile/--no-jit-compile", default=None,
              help="XLA-compile the train step (measured slower on CPU). [default: off]")
@click.option("--seed", type=int, default=None, help="[default: 0]")
@click.option("--evaluate/--no-evaluate", "evaluate_after", default=True, show_default=True,
              help="Evaluate the stage after training.")
@click.option("--skip-bad-images", is_flag=True,
              help="Leave out images that do not decode (named, with a count) instead of stopping.")
@SAME_CAMERA_OK_OPTION
@user_errors
@locks_run_dir("fit")
def fit(stage, data_dir, run_dir, preset, image_size, no_finetune, no_take_turns, cells_per_call,
        evaluate_after, last_stride, camera_pattern, same_camera_ok, **options):
    """Train a stage (and the stages before it that are not trained yet).

    \b
    Examples:
      python cli.py fit --stage adversarial --run-dir runs/demo
      python cli.py fit --stage baseline --data ~/Market-1501 --preset paper --run-dir runs/market
      python cli.py fit --stage adversarial --occlude-after conv4 --run-dir runs/conv4
      python cli.py fit --stage baseline --recipe strong --run-dir runs/strong
      python cli.py fit --data folder:~/crops --run-dir runs/crops
    An interrupted run resumes when the same command is run again.
    """
    from aaa_keras.data.layouts import with_camera_pattern
    from aaa_keras.training import fit as fit_stages

    data_dir = with_camera_pattern(data_dir, camera_pattern)
    if image_size is not None:
        options["image_height"], options["image_width"] = config_lib.parse_image_size(image_size)
    if cells_per_call is not None:
        options["cells_per_call"] = int(cells_per_call)
    if last_stride is not None:
        options["last_stride"] = int(last_stride)
    if no_finetune:
        if options.get("mask") not in (None, "response"):
            raise UserError(f"--no-finetune is --mask response; it cannot be combined with "
                            f"--mask {options['mask']}")
        options["mask"] = "response"
    if no_take_turns:
        options["take_turns"] = False
    options["data"] = data_dir
    skip_bad_images = options.pop("skip_bad_images")
    config = config_lib.make_config(preset, **options)
    fit_stages(stage, config, run_dir, log=click.echo, skip_bad_images=skip_bad_images)
    if evaluate_after:
        from aaa_keras.evaluation.run import evaluate_run

        evaluate_run(run_dir, stage, log=click.echo, skip_bad_images=skip_bad_images,
                     **({"same_camera_ok": True} if same_camera_ok else {}))
    click.echo("\nNext:\n"
               f"  python cli.py evaluate --run-dir {run_dir} --stage {stage} --metric all --rerank"
               f"{' --same-camera-ok' if same_camera_ok else ''}\n"
               f"  python cli.py visualize --run-dir {run_dir} --stage {stage} --what all\n"
               f"  python cli.py export --run-dir {run_dir} --stage {stage} --out models --format all")


# === evaluate ===

@cli.command()
@click.option("--run-dir", required=True, help="A run directory made by `fit`.")
@click.option("--stage", type=STAGE_CHOICE, default=None, help="Default: the latest trained stage.")
@click.option("--data", "data_dir", default=None,
              help="Default: the run's own dataset. Another one (other identities) works: only its query and "
                   "gallery are used. " + DATA_HELP)
@CAMERA_PATTERN_OPTION
@SAME_CAMERA_OK_OPTION
@click.option("--metric", type=METRIC_CHOICE, default="euclidean",
              show_default=True, help="Distance; xqda/kissme are learned on the training split.")
@click.option("--rerank", is_flag=True, help="Add k-reciprocal re-ranking rows (k1=20, k2=6, lambda=0.3).")
@click.option("--json", "json_path", default=None, help="Write the results as JSON (values in percent).")
@click.option("--distribute", type=DISTRIBUTE_CHOICE, default="none",
              show_default=True, help="tf.distribute strategy for the embedding extraction.")
@click.option("--mixed-precision", type=MIXED_PRECISION_CHOICE, default=None)
@click.option("--jit-compile/--no-jit-compile", default=False, show_default=True,
              help="XLA-compile the embedding extraction.")
@click.option("--skip-bad-images", is_flag=True,
              help="Drop images that do not decode (each is named) instead of stopping.")
@NECK_FEATURE_OPTION
@click.option("--occlude-queries", type=click.IntRange(0), default=None, metavar="SEED",
              help="Occlusion stress test: also evaluate the queries occluded 20-50 % by a person or an "
                   "object (deterministic per SEED; gallery untouched), beside the clean result. Off when not given.")
@user_errors
@locks_run_dir("evaluate", when=lambda options: options["json_path"] or options["metric"] != "euclidean")
def evaluate(run_dir, stage, data_dir, camera_pattern, same_camera_ok, metric, rerank, json_path, distribute,
             mixed_precision, jit_compile, skip_bad_images, neck_feature, occlude_queries):
    """CMC Rank-1/5/10, mAP and mINP under the standard Market-1501 protocol.

    \b
    Example:
      python cli.py evaluate --run-dir runs/demo --stage adversarial --metric all --rerank --json runs/demo/eval.json
      python cli.py evaluate --run-dir runs/demo --occlude-queries 0
      python cli.py evaluate --run-dir runs/market --data ~/datasets/Occluded_REID-png
    """
    from aaa_keras.data.layouts import with_camera_pattern
    from aaa_keras.evaluation.run import evaluate_run

    data_dir = with_camera_pattern(data_dir, camera_pattern)
    metrics = vocabulary.METRICS if metric == vocabulary.ALL else (metric,)
    evaluate_run(run_dir, stage, data_dir, metrics, rerank, json_path, log=click.echo,
                 distribute=distribute, mixed_precision=mixed_precision or "",
                 jit_compile=jit_compile, skip_bad_images=skip_bad_images, neck_feature=neck_feature,
                 occlude_queries=occlude_queries, **({"same_camera_ok": True} if same_camera_ok else {}))


# === visualize ===

@cli.command()
@click.option("--run-dir", required=True, help="A run directory made by `fit`.")
@click.option("--stage", type=STAGE_CHOICE, default=None, help="Default: the latest trained stage.")
@click.option("--data", "data_dir", default=None, help="Default: the run's own dataset. " + DATA_HELP)
@click.option("--what", type=click.Choice([*vocabulary.VISUALIZATIONS, vocabulary.ALL]),
              default="all", show_default=True)
@click.option("--num", type=click.IntRange(1), default=8, show_default=True, help="Images per picture.")
@click.option("--out-dir", default=None, help="Default: RUN_DIR/pictures.")
@user_errors
@locks_run_dir("visualize")
def visualize(run_dir, stage, data_dir, what, num, out_dir):
    """Ranked lists, attention maps (Fig. 1), grid occlusions (Fig. 2), masks (Fig. 4), curves.

    \b
    Example:
      python cli.py visualize --run-dir runs/demo --what all
    """
    from aaa_keras.visualize import visualize_run

    visualize_run(run_dir, stage, data_dir, what, num, out_dir, log=click.echo)


# === export, index, search ===

@cli.command()
@click.option("--run-dir", required=True, help="A run directory made by `fit`.")
@click.option("--stage", type=STAGE_CHOICE, default=None, help="Default: the latest trained stage.")
@click.option("--out", required=True, help="Models root: the SavedModel goes to OUT/MODEL_NAME/VERSION/.")
@click.option("--format", "formats", type=click.Choice([*vocabulary.EXPORT_FORMATS, vocabulary.ALL]),
              default=["all"], show_default=True, multiple=True,
              help="Repeat for several, e.g. --format onnx --format openvino.")
@click.option("--quantize", type=click.Choice([*vocabulary.QUANTIZATIONS, vocabulary.ALL]), default="all",
              show_default=True, help="TFLite variants.")
@click.option("--model-name", default="aaa_net", show_default=True)
@click.option("--version", type=click.IntRange(1), default=None, help="Default: the next free version.")
@click.option("--representative-count", type=click.IntRange(1), default=100, show_default=True,
              help="Training images that calibrate int8.")
@click.option("--data", "data_dir", default=None,
              help="Default: the run's own dataset (parity, calibration). " + DATA_HELP)
@click.option("--parity-max-images", type=click.IntRange(1), default=None,
              help="Bound the parity held set (whole test ids) on large datasets; default all.")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True,
              help="LiteRT threads for the parity runs.")
@click.option("--for", "target", type=click.Choice(vocabulary.EXPORT_TARGETS), default="aaa-keras", show_default=True,
              help="aaa-keras: the project's contract (RGB 0-255 NHWC input); boxmot: ONNX, OpenVINO and TFLite in "
                   "BoxMOT's re-ID contract (normalised NCHW input, metadata sidecar) under "
                   "OUT/boxmot/MODEL_NAME/VERSION/; --format and --quantize pick among them.")
@NECK_FEATURE_OPTION
@user_errors
@locks_run_dir("export")
def export(run_dir, stage, out, formats, quantize, model_name, version, representative_count, data_dir,
           parity_max_images, threads, target, neck_feature):
    """SavedModel (TF Serving), TFLite float32/float16/int8 (cameras), ONNX and OpenVINO, with checked parity.

    \b
    Examples:
      python cli.py export --run-dir runs/demo --out models --format all --quantize all
      python cli.py export --run-dir runs/demo --out models --format onnx --format openvino
      python cli.py export --run-dir runs/demo --out models --for boxmot
    Writes models/aaa_net/<version>/ (signatures serving_default, serving_uint8,
    serve_bytes), models/tflite/aaa_net/<version>/*.tflite,
    models/onnx/aaa_net/<version>/*.onnx and models/openvino/aaa_net/<version>/*.xml
    with parity.json; a missed parity threshold fails the export and installs nothing.
    --for boxmot writes models/boxmot/aaa_net/<version>/ for a BoxMOT tracker's
    reid_weights (docs/deployment.md, section 9).
    """
    if target == "boxmot":
        from aaa_keras.deploy.boxmot_export import export_boxmot

        export_boxmot(run_dir, out, stage, formats, quantize, model_name, version, representative_count,
                      log=click.echo, data=data_dir, parity_max_images=parity_max_images, num_threads=threads,
                      neck_feature=neck_feature)
        return
    from aaa_keras.deploy import export_run

    export_run(run_dir, out, stage, formats, quantize, model_name, version, representative_count,
               log=click.echo, data=data_dir, parity_max_images=parity_max_images,
               num_threads=threads, neck_feature=neck_feature)


@cli.command()
@click.option("--model", "model_path", default=None,
              help="An exported SavedModel directory, .tflite, .onnx or OpenVINO .xml file.")
@click.option("--gallery", default=None, help="A folder of person crops (e.g. bounding_box_test/).")
@click.option("--out", required=True, help="Index directory to write (FAISS vectors + meta.sqlite).")
@click.option("--append", is_flag=True,
              help="Add the crops of --gallery that are not in the existing index yet (the others are not re-embedded).")
@click.option("--index-type", type=click.Choice(vocabulary.INDEX_TYPES), default="exact", show_default=True,
              help="exact: brute force. The others are approximate, for large galleries (>= 256 images), named "
                   "after their FAISS stages (pca: PCA to --pca dims; ivf: --nlist cells; sq8: 8-bit codes; "
                   "opq/pq: product codes of --pq-m bytes; refine: candidates re-ranked by full-dimension "
                   "distance (8-bit codes; with -sq6, 6-bit); hnsw: a graph searched with --ef-search); "
                   "recall, speed and memory of each: docs/benchmarks.md.")
@click.option("--nlist", type=click.IntRange(1), default=None,
              help="IVF cells, over N gallery images: at least 39 training images per cell, so N // 39 "
                   "decides below about 24,000 images. [default: min(4 sqrt(N), N // 39)]")
@click.option("--pq-m", type=click.IntRange(1), default=None,
              help="ivf-pq / opq bytes per image; must divide D (opq: --pca, as D). "
                   "[default: the largest divisor of D up to min(64, D / 2)]")
@click.option("--pca", type=click.IntRange(1), default=None,
              help="pca / opq types: dimensions kept. [default: min(256, D)]")
@click.option("--nprobe", type=click.IntRange(1), default=16, show_default=True,
              help="IVF cells searched per query (stored in the index for `search`).")
@click.option("--k-factor", type=click.FloatRange(1), default=4.0, show_default=True,
              help="refine types: candidates re-ranked per result (stored in the index for `search`).")
@click.option("--ef-search", type=click.IntRange(1), default=64, show_default=True,
              help="hnsw types: candidates kept in the graph search, FAISS's efSearch (stored in the index for "
                   "`search`).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--skip-bad-images", is_flag=True,
              help="Leave out crops that do not decode (named in one line) instead of stopping.")
@click.option("--verify", is_flag=True, help="Check the index --out instead: every file readable, rows = "
              "vectors, its model present (--gallery not needed).")
@user_errors
def index(model_path, gallery, out, append, index_type, nlist, pq_m, pca, nprobe, k_factor, ef_search, batch_size,
          skip_bad_images, verify):
    """Embed a folder of crops with an exported model into a searchable gallery index.

    \b
    Examples:
      python cli.py index --model models/aaa_net/1 --gallery ~/synth/bounding_box_test --out gallery_index
      python cli.py index --model models/aaa_net/1 --gallery crops/2024-06-02 --out gallery_index --append
      python cli.py index --model models/onnx/aaa_net/1/aaa_net_v1.onnx --gallery big/ --out big_index \\
          --index-type pca-ivf-sq8-refine-sq6
    """
    from aaa_keras.deploy import build_index

    if verify:
        from aaa_keras.deploy.search import verify_index

        verify_index(out, model_path, log=click.echo)
        return
    build_index(model_path, gallery, out, batch_size, log=click.echo, append=append, index_type=index_type,
                nlist=nlist, pq_m=pq_m, nprobe=nprobe, skip_bad_images=skip_bad_images, pca=pca, k_factor=k_factor,
                ef_search=ef_search)


@cli.command()
@click.option("--model", "model_path", required=True,
              help="An exported model: SavedModel directory, .tflite (float or int8), .onnx, OpenVINO .xml, or an "
                   "`export --for boxmot` file.")
@click.option("--images", required=True,
              help="A folder of crops (searched recursively), one image, or a glob pattern in quotes, e.g. 'crops/**/*.jpg'.")
@click.option("--out", required=True, help="The .npz to write: embeddings, paths, pid, camid, named.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--skip-bad-images", is_flag=True,
              help="Leave out crops that do not decode (named in one line) instead of stopping.")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True,
              help="Threads of the model's runtime (LiteRT, ONNX Runtime, OpenVINO).")
@user_errors
def embed(model_path, images, out, batch_size, skip_bad_images, threads):
    """Your crops to vectors: L2-normalised embeddings of image files with an exported model, in one .npz.

    \b
    Examples:
      python cli.py embed --model models/aaa_net/1 --images crops/ --out embeddings.npz
      python cli.py embed --model models/tflite/aaa_net/1/aaa_net_v1_int8.tflite --images 'cam3/*.jpg' --out cam3.npz
    The .npz holds embeddings [N, D] float32, paths, and pid / camid where a file
    name parses (Market-1501 / DukeMTMC-reID names; `named` marks those rows).
    """
    from aaa_keras.deploy.embed import embed_to_file

    embed_to_file(model_path, images, out, batch_size, skip_bad_images, threads, log=click.echo)


@cli.command()
@click.option("--index", "index_path", required=True, help="An index directory made by `index`.")
@click.option("--model", "model_path", required=True, help="The exported model the index was made with.")
@click.argument("images", nargs=-1, required=True)
@click.option("--top", type=click.IntRange(1), default=10, show_default=True)
@click.option("--nprobe", type=click.IntRange(1), default=None,
              help="IVF cells searched per query. [default: the index's own]")
@click.option("--k-factor", type=click.FloatRange(1), default=None,
              help="refine types: candidates re-ranked per result. [default: the index's own]")
@click.option("--ef-search", type=click.IntRange(1), default=None,
              help="hnsw types: candidates kept in the graph search (efSearch). [default: the index's own]")
@click.option("--picture", default=None, help="Also write the ranked lists as a PNG.")
@user_errors
def search(index_path, model_path, images, top, nprobe, k_factor, ef_search, picture):
    """Rank the indexed gallery for each query IMAGE with an exported model.

    \b
    Example:
      python cli.py search --index gallery_index --model models/aaa_net/1 query.jpg --top 10 --picture ranks.png
    """
    from aaa_keras.deploy import format_search
    from aaa_keras.deploy import search as search_gallery

    rankings = search_gallery(index_path, model_path, list(images), top, picture=picture, nprobe=nprobe,
                              k_factor=k_factor, ef_search=ef_search)
    click.echo(format_search(list(images), rankings))
    if picture:
        click.echo(f"Wrote {picture}")


# === ablate ===

@cli.command()
@click.option("--data", "data_dir", default="builtin:ablate", show_default=True,
              help=DATA_HELP + " builtin:ablate: 250 test ids, ~1,600 queries; builtin:occluded: the same size, "
                   "every query occluded (clean and occluded results).")
@click.option("--out", default=None,
              help="Grid directory: OUT/seed<S>/<config>/ run dirs, results.json/.md, claims.png. [default: "
                   "runs/ablate for builtin:ablate, else runs/ablate-<dataset name>; -<preset> for another preset than demo, "
                   "-oq<SEED> with --occlude-queries, -strong with --recipe strong]")
@click.option("--table", type=click.Choice([*vocabulary.ABLATION_TABLES, vocabulary.ALL]), default=None,
              help="Paper Table 3 (occlusion point), 4 (fine-tuning), 5 (random erasing), the controls, the "
                   "occlusion claims (on occluded queries: use builtin:occluded or --occlude-queries), or all. "
                   "[default: occlusion with occluded queries (builtin:occluded, --occlude-queries), else all]")
@click.option("--seeds", type=click.IntRange(1), default=5, show_default=True, help="Seeds 0..N-1.")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Epochs of stages 2 and 3, and of stage 1 unless --baseline-epochs is given. Given neither, "
                   "the demo preset trains stage 1 for 30 (lr x0.1 every 12), the others the preset's own. "
                   "[default: demo preset 4, paper preset 10]")
@click.option("--baseline-epochs", type=click.IntRange(1), default=None,
              help="Stage 1's epochs (with --epochs alone: --epochs). [default: demo preset 30, paper preset 10]")
@click.option("--preset", type=PRESET_CHOICE, default="demo", show_default=True)
@click.option("--recipe", type=RECIPE_CHOICE, default=None,
              help="Training recipe of every run: paper = the paper's (softmax CE, SGD); strong = the Bag of "
                   "Tricks set of `fit --recipe strong` (ablate has no flag per trick). [default: paper (whatever "
                   "the preset: docs/results.md)]")
@click.option("--metric", type=METRIC_CHOICE, default="euclidean",
              show_default=True, help="Distance(s) to evaluate; the first is the one of the progress lines and the figure.")
@click.option("--backbone", type=BACKBONE_CHOICE, default=None)
@click.option("--batch-size", type=click.IntRange(1), default=None)
@click.option("--image-size", default=None, metavar="HxW", help="Input size, e.g. 256x128.")
@click.option("--steps-per-epoch", type=click.IntRange(0), default=None, help="0 = one pass over the data.")
@click.option("--bootstrap", "n_boot", type=click.IntRange(100), default=10000, show_default=True,
              help="Bootstrap replicates for intervals and p-values.")
@click.option("--occlude-queries", type=click.IntRange(0), default=None, metavar="SEED",
              help="Also evaluate every run on its queries occluded 20-50 % (deterministic per SEED); the "
                   "verdicts are then on the occluded queries, beside the clean results. Off when not given.")
@click.option("--report-only", is_flag=True, help="Train nothing: recompute the statistics from OUT/results.json.")
@click.option("--compare-with", "other_out", default=None, metavar="OUT2",
              help="Another finished grid of the other recipe (same data and seeds): adds the table baseline vs "
                   "AAA-Net under both recipes, with verdicts, to OUT/recipes.md and every --write file.")
@click.option("--write", "write_path", multiple=True, metavar="PATH",
              help="Also write the tables and verdicts into PATH's generated block (e.g. docs/results.md); "
                   "a file with the ablate-summary markers (README.md) gets the short form, one with only the "
                   "ablate-recipes markers only the --compare-with table. Repeatable.")
@user_errors
def ablate(data_dir, out, table, seeds, epochs, baseline_epochs, preset, recipe, metric, backbone, batch_size,
           image_size, steps_per_epoch, n_boot, occlude_queries, report_only, other_out, write_path):
    """The paper's Tables 3-5 and controls over seeds, paired, with intervals and a verdict per claim.

    Every configuration is a normal run dir under OUT/seed<S>/<config>/; within a seed the
    AAA-Net runs start from the baseline's stage-1 weights (copied, not retrained). Finished
    runs are reused and an interrupted one resumes, so the same command continues a grid.

    \b
    Example:
      python cli.py ablate --out runs/ablate --table all --seeds 5 --metric all
      python cli.py ablate --out runs/ablate --report-only --write docs/results.md --write README.md
      python cli.py ablate --out runs/ablate-strong --recipe strong --table controls
      python cli.py ablate --out runs/ablate-occluded --data builtin:occluded --table occlusion
      python cli.py ablate --out runs/ablate-strong --report-only --compare-with runs/ablate --write docs/results.md
    """
    import shlex

    from aaa_keras import ablate as ablate_lib
    from aaa_keras.ablate.grid import default_out
    from aaa_keras.run_lock import hold

    if out is None:
        out = default_out(data_dir, recipe, preset, occlude_queries)
        click.echo(f"--out not given: the grid is {out}")

    arguments, skip = [], False
    for argument in sys.argv[1:]:  # the grid's command: without --report-only and --write PATH
        if skip or argument == "--report-only" or argument.startswith(("--write", "--compare-with")):
            skip = argument in ("--write", "--compare-with")
            continue
        arguments.append(argument)
    command = "python cli.py " + " ".join(shlex.quote(a) for a in arguments)
    if report_only:
        results = ablate_lib.load_results(out, n_boot)
    else:
        os.environ.setdefault("AAA_KERAS_VERBOSE", "0")  # the progress lines, not Keras' bars
        # --recipe paper is the default: left out, so a grid made before --recipe existed continues
        overrides = dict(backbone=backbone, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                         recipe=None if recipe == "paper" else recipe)
        if image_size:
            overrides["image_height"], overrides["image_width"] = config_lib.parse_image_size(image_size)
        with hold(out, "ablate"):  # a second writer of OUT is refused before TensorFlow is imported
            import tensorflow as tf

            tf.get_logger().setLevel("ERROR")  # "retracing" warnings: dozens of models in one process
            results = ablate_lib.run_grid(out, table, seeds, epochs, preset, data_dir, metric,
                                          overrides, progress=click.echo, n_boot=n_boot,
                                          baseline_epochs=baseline_epochs, occlude_queries=occlude_queries)
    for path in ablate_lib.write_report(results, out, write_path, command):
        click.echo(f"Wrote {path}")
    if other_out:
        compare_command = (f"python cli.py ablate --out {shlex.quote(out)} --report-only "
                           f"--compare-with {shlex.quote(other_out)}")
        for path in ablate_lib.write_comparison(results, ablate_lib.load_results(other_out, n_boot, "--compare-with"), out,
                                                write_path, compare_command):
            click.echo(f"Wrote {path}")
    for row in results["claims"][results["metrics"][0]]["mAP"]:
        click.echo(f"  {row['claim']}: Δ mAP {row['mean']:+.2f} [{row['low']:+.2f}, {row['high']:+.2f}], "
                   f"Holm p {row['p_holm']:.4f} -> {row['verdict']}")


if __name__ == "__main__":
    cli()
