#!/usr/bin/env python
"""aaa-keras command line: data, fit, evaluate, visualize, export, index, search.

Commands only parse arguments, call the library and print. TensorFlow is
imported inside the commands, so ``--help`` answers at once.
"""

from __future__ import annotations

import functools
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click  # noqa: E402

from aaa_keras.errors import UserError  # noqa: E402

STAGE_CHOICE = click.Choice(["baseline", "attention", "adversarial"])


def user_errors(command):
    """Print a UserError (or an OSError on a given path) as one ``Error:`` line and exit 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (UserError, OSError) as error:  # OSError: a path the user gave (a directory, no permission)
            click.echo(f"Error: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted. Run the same command again to resume.", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli():
    """AAA-Net (attention-aware adversarial network) for person re-ID, in Keras 3.

    \b
    Example, all offline on the built-in synthetic data:
      python cli.py fit --stage adversarial --run-dir runs/demo
      python cli.py evaluate --run-dir runs/demo --metric all --rerank
      python cli.py visualize --run-dir runs/demo --what all
      python cli.py export --run-dir runs/demo --out models --format all --quantize all
    """


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
@click.option("--ids", default=40, show_default=True, type=click.IntRange(4), help="Person ids (half train, half test).")
@click.option("--cams", default=4, show_default=True, type=click.IntRange(2), help="Cameras.")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, byte-identical files.")
@user_errors
def data_synth(out, ids, cams, seed):
    """Write a deterministic synthetic dataset in the Market-1501 layout.

    \b
    Example:
      python cli.py data synth --out /tmp/synth --ids 40 --cams 4 --seed 0
    """
    from aaa_keras.data.synth import synthesize_market

    synthesize_market(out, num_ids=ids, num_cams=cams, seed=seed)
    click.echo(f"Wrote the synthetic dataset to {out}")


@data.command("check")
@click.argument("root", type=click.Path())
@click.option("--strict", is_flag=True, help="Every warning is an error (e.g. a query id with no gallery match in another camera).")
@user_errors
def data_check(root, strict):
    """Count ids / images / cameras per split; fail clearly on malformed data.

    \b
    Example:
      python cli.py data check ~/datasets/Market-1501-v15.09.15
    """
    from aaa_keras.data.check import check_dataset, format_report

    report = check_dataset(root, strict=strict)
    click.echo(format_report(report))


# === fit ===

@cli.command()
@click.option("--stage", type=STAGE_CHOICE, default="adversarial", show_default=True,
              help="Train up to this stage (earlier untrained stages are trained first).")
@click.option("--data", "data_dir", default=None, help="Dataset root (Market-1501 layout). Default: built-in synthetic data.")
@click.option("--run-dir", default="runs/demo", show_default=True, help="Where config, weights and logs go.")
@click.option("--preset", type=click.Choice(["demo", "paper"]), default="demo", show_default=True,
              help="demo: tiny_resnet at 128x64, minutes on a CPU; paper: ResNet-50 224x224, batch 32, 10 epochs (GPU).")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Epochs per stage.")
@click.option("--batch-size", type=click.IntRange(1), default=None)
@click.option("--image-size", default=None, metavar="HxW", help="Input size, e.g. 256x128.")
@click.option("--backbone", type=click.Choice(["resnet50", "tiny_resnet"]), default=None,
              help="resnet50 (default) or tiny_resnet (tests and smoke runs).")
@click.option("--backbone-weights", default=None, metavar="imagenet|PATH",
              help="Initial backbone weights; default random init (offline).")
@click.option("--occlude-after", type=click.Choice(["conv2", "conv3", "conv4", "conv5"]), default=None,
              help="Occlusion point (paper Table 3); default conv3.")
@click.option("--dropout", type=float, default=None, help="0.5 for Market-1501 (default), 0.6 for Duke.")
@click.option("--random-erasing", is_flag=True, default=None, help="Baseline with keras.layers.RandomErasing (Table 5).")
@click.option("--no-finetune", is_flag=True, default=False, help="Stage 3 with a fresh attention branch (Table 4).")
@click.option("--no-take-turns", is_flag=True, default=False, help="Stage 3: every step occluded, no alternation.")
@click.option("--lambda1", type=float, default=None, help="Weight of L_r in eq. 4 (0.3).")
@click.option("--lambda2", type=float, default=None, help="Weight of L_att in eq. 4 (1.7).")
@click.option("--omega", type=float, default=None, help="Gate threshold of eq. 4 (0.04).")
@click.option("--cells-per-call", type=click.Choice(["1", "2", "4", "8", "16"]), default=None,
              help="Occluded copies per tail call in the grid search; lower saves memory (16).")
@click.option("--steps-per-epoch", type=click.IntRange(0), default=None, help="0 = one pass over the data.")
@click.option("--distribute", type=click.Choice(["none", "mirrored", "multiworker"]), default=None,
              help="tf.distribute strategy.")
@click.option("--mixed-precision", type=click.Choice(["mixed_float16", "mixed_bfloat16"]), default=None)
@click.option("--jit-compile/--no-jit-compile", default=None, help="XLA-compile the train step (off by default; measured slower on CPU).")
@click.option("--seed", type=int, default=None)
@click.option("--evaluate/--no-evaluate", "evaluate_after", default=True, show_default=True,
              help="Evaluate the stage after training.")
@user_errors
def fit(stage, data_dir, run_dir, preset, image_size, no_finetune, no_take_turns, cells_per_call,
        evaluate_after, **options):
    """Train a stage (and the stages before it that are not trained yet).

    \b
    Examples:
      python cli.py fit --stage adversarial --run-dir runs/demo
      python cli.py fit --stage baseline --data ~/Market-1501 --preset paper --run-dir runs/market
      python cli.py fit --stage adversarial --occlude-after conv4 --run-dir runs/conv4
    An interrupted run resumes when the same command is run again.
    """
    from aaa_keras import config as config_lib
    from aaa_keras.training import fit as fit_stages

    if image_size is not None:
        options["image_height"], options["image_width"] = config_lib.parse_image_size(image_size)
    if cells_per_call is not None:
        options["cells_per_call"] = int(cells_per_call)
    if no_finetune:
        options["finetune"] = False
    if no_take_turns:
        options["take_turns"] = False
    options["data"] = data_dir
    config = config_lib.make_config(preset, **options)
    fit_stages(stage, config, run_dir, log=click.echo)
    if evaluate_after:
        from aaa_keras.evaluation.run import evaluate_run

        evaluate_run(run_dir, stage, log=click.echo)
    click.echo("\nNext:\n"
               f"  python cli.py evaluate --run-dir {run_dir} --stage {stage} --metric all --rerank\n"
               f"  python cli.py visualize --run-dir {run_dir} --stage {stage} --what all\n"
               f"  python cli.py export --run-dir {run_dir} --stage {stage} --out models --format all")


# === evaluate ===

@cli.command()
@click.option("--run-dir", required=True, help="A run directory made by `fit`.")
@click.option("--stage", type=STAGE_CHOICE, default=None, help="Default: the latest trained stage.")
@click.option("--data", "data_dir", default=None, help="Default: the run's own dataset.")
@click.option("--metric", type=click.Choice(["euclidean", "xqda", "kissme", "all"]), default="euclidean",
              show_default=True, help="Distance; xqda/kissme are learned on the training split.")
@click.option("--rerank", is_flag=True, help="Add k-reciprocal re-ranking rows (k1=20, k2=6, lambda=0.3).")
@click.option("--json", "json_path", default=None, help="Write the results as JSON (values in percent).")
@click.option("--distribute", type=click.Choice(["none", "mirrored", "multiworker"]), default="none",
              show_default=True, help="tf.distribute strategy for the embedding extraction.")
@click.option("--mixed-precision", type=click.Choice(["mixed_float16", "mixed_bfloat16"]), default=None)
@click.option("--jit-compile/--no-jit-compile", default=False, show_default=True,
              help="XLA-compile the embedding extraction.")
@click.option("--skip-bad-images", is_flag=True,
              help="Drop images that do not decode (each is named) instead of stopping.")
@user_errors
def evaluate(run_dir, stage, data_dir, metric, rerank, json_path, distribute, mixed_precision,
             jit_compile, skip_bad_images):
    """CMC Rank-1/5/10, mAP and mINP under the standard Market-1501 protocol.

    \b
    Example:
      python cli.py evaluate --run-dir runs/demo --stage adversarial --metric all --rerank --json runs/demo/eval.json
    """
    from aaa_keras.evaluation.run import METRICS, evaluate_run

    metrics = METRICS if metric == "all" else (metric,)
    evaluate_run(run_dir, stage, data_dir, metrics, rerank, json_path, log=click.echo,
                 distribute=distribute, mixed_precision=mixed_precision or "",
                 jit_compile=jit_compile, skip_bad_images=skip_bad_images)


# === visualize ===

@cli.command()
@click.option("--run-dir", required=True, help="A run directory made by `fit`.")
@click.option("--stage", type=STAGE_CHOICE, default=None, help="Default: the latest trained stage.")
@click.option("--data", "data_dir", default=None, help="Default: the run's own dataset.")
@click.option("--what", type=click.Choice(["ranks", "attention", "occlusion", "curves", "all"]),
              default="all", show_default=True)
@click.option("--num", type=click.IntRange(1), default=8, show_default=True, help="Images per picture.")
@click.option("--out-dir", default=None, help="Default: RUN_DIR/pictures.")
@user_errors
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
@click.option("--format", "formats", type=click.Choice(["saved_model", "tflite", "all"]), default="all",
              show_default=True)
@click.option("--quantize", type=click.Choice(["float32", "float16", "int8", "all"]), default="all",
              show_default=True, help="TFLite variants.")
@click.option("--model-name", default="aaa_net", show_default=True)
@click.option("--version", type=click.IntRange(1), default=None, help="Default: the next free version.")
@click.option("--representative-count", type=click.IntRange(1), default=100, show_default=True,
              help="Training images that calibrate int8.")
@click.option("--data", "data_dir", default=None, help="Default: the run's own dataset (parity, calibration).")
@click.option("--parity-max-images", type=click.IntRange(1), default=None,
              help="Bound the parity held set (whole test ids) on large datasets; default all.")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True,
              help="LiteRT threads for the parity runs.")
@user_errors
def export(run_dir, stage, out, formats, quantize, model_name, version, representative_count, data_dir,
           parity_max_images, threads):
    """SavedModel for TF Serving and TFLite (float32/float16/int8) for cameras, with checked parity.

    \b
    Example:
      python cli.py export --run-dir runs/demo --out models --format all --quantize all
    Writes models/aaa_net/<version>/ (signatures serving_default, serving_uint8,
    serve_bytes) and models/tflite/aaa_net/<version>/*.tflite with parity.json;
    a missed parity threshold fails the export and installs nothing.
    """
    from aaa_keras.deploy import export_run

    export_run(run_dir, out, stage, formats, quantize, model_name, version, representative_count,
               log=click.echo, data=data_dir, parity_max_images=parity_max_images,
               num_threads=threads)


@cli.command()
@click.option("--model", "model_path", required=True, help="An exported SavedModel directory or .tflite file.")
@click.option("--gallery", required=True, help="A folder of person crops (e.g. bounding_box_test/).")
@click.option("--out", required=True, help="Index file to write (.npz).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@user_errors
def index(model_path, gallery, out, batch_size):
    """Embed a folder of crops with an exported model into a searchable index.

    \b
    Example:
      python cli.py index --model models/aaa_net/1 --gallery ~/synth/bounding_box_test --out gallery.npz
    """
    from aaa_keras.deploy import build_index

    build_index(model_path, gallery, out, batch_size, log=click.echo)


@cli.command()
@click.option("--index", "index_path", required=True, help="An index made by `index`.")
@click.option("--model", "model_path", required=True, help="The exported model the index was made with.")
@click.argument("images", nargs=-1, required=True)
@click.option("--top", type=click.IntRange(1), default=10, show_default=True)
@click.option("--picture", default=None, help="Also write the ranked lists as a PNG.")
@user_errors
def search(index_path, model_path, images, top, picture):
    """Rank the indexed gallery for each query IMAGE with an exported model.

    \b
    Example:
      python cli.py search --index gallery.npz --model models/aaa_net/1 query.jpg --top 10 --picture ranks.png
    """
    from aaa_keras.deploy import format_search
    from aaa_keras.deploy import search as search_gallery

    rankings = search_gallery(index_path, model_path, list(images), top, picture=picture)
    click.echo(format_search(list(images), rankings))
    if picture:
        click.echo(f"Wrote {picture}")


if __name__ == "__main__":
    cli()
