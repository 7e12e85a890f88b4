#!/usr/bin/env python
"""Latency of each `export --for boxmot` file through BoxMOT's own re-ID backend (docs/deployment.md section 9).

Runs ``export/boxmot_reid.py latency`` in BoxMOT's virtual environment (the one
tests/test_boxmot.py makes: ``~/.cache/aaa_keras/boxmot-venv`` or
``--venv``) on every model file of one export version: milliseconds per
``ReID(crops)`` call (BoxMOT's crop preprocessing, the backend's forward, the
L2 normalisation), and of the backend's forward alone, at each ``--batch``
(crops per call, e.g. the detections of one frame), median of ``--repeats``
calls after ``--warmup``. The whole set
is measured ``--rounds`` times, formats interleaved, and the median of the
rounds is reported, with each format's ratio to ONNX in the same round (the
machine is shared and noisy: the ratio is the figure to compare). Threads:
BoxMOT's backends use their runtime's default (all cores); ``--cores`` pins
the process to that many cores with ``taskset`` where it exists.

    python benchmarks/boxmot_latency.py --models models/boxmot/aaa_net/1 --crops '~/synth/query/*.jpg'
    python benchmarks/boxmot_latency.py --models models/boxmot/aaa_net/1 --rounds 0 \
        --crops '~/synth/query/*.jpg' '~/synth/bounding_box_test/*.jpg' --parity-run-dir runs/demo
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO_ROOT, machine_description  # noqa: E402

SCRIPT = os.path.join(REPO_ROOT, "export", "boxmot_reid.py")
DEFAULT_VENV = os.path.expanduser("~/.cache/aaa_keras/boxmot-venv")


def model_files(directory: str) -> list[str]:
    """The re-ID files of one export version, in a fixed order: ONNX, OpenVINO, TFLite float32/16, int8."""
    names = sorted(os.listdir(directory))
    order = [n for n in names if n.endswith(".onnx")] + [n for n in names if n.endswith("_openvino_model")]
    order += [n for q in ("float32", "float16", "int8") for n in names if n.endswith(f"_{q}.tflite")]
    if not order:
        sys.exit(f"Error: --models {directory}: no .onnx, *_openvino_model or .tflite here; run "
                 "`python cli.py export --for boxmot` first")
    return [os.path.join(directory, n) for n in order]


def parity_through_boxmot(python, models, crops, run_dir, models_dir) -> None:
    """Per-image cosine of BoxMOT's embeddings (its backends, its preprocessing) to the Keras embedder's."""
    import tempfile

    import numpy as np

    from aaa_keras.deploy.boxmot import read_crops
    from aaa_keras.deploy.parity import cosines
    from aaa_keras.model.backbone import build_embedder
    from aaa_keras.run_dir import load_trained

    report = json.load(open(os.path.join(models_dir, "parity.json")))
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "boxmot.npz")
        command = [python, SCRIPT, "embed", "--out", out, "--crops", *crops]
        for model in models:
            command += ["--model", model]
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=""))
        if done.returncode != 0:
            sys.exit(f"Error: {done.stderr.strip().splitlines()[-1]}")
        saved = dict(np.load(out))
    trained = load_trained(run_dir, report["stage"], report.get("neck_feature"))
    keras = np.asarray(build_embedder(trained.parts).predict(read_crops(crops, trained.config.image_size),
                                                             verbose=0))
    print(f"Cosine to Keras of what BoxMOT returns, {len(crops)} crops (min / 1st percentile / mean):")
    for index, model in enumerate(models):
        values = cosines(keras, saved[f"emb_{index}"])
        print(f"  {os.path.basename(model)} ({str(saved['backends'][index]).split()[0]}): {values.min():.6f} / "
              f"{np.percentile(values, 1, method='lower'):.6f} / {values.mean():.6f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="An export version directory, models/boxmot/aaa_net/1.")
    parser.add_argument("--crops", required=True, nargs="+",
                        help="Globs of person crops (any size; BoxMOT resizes); the first 16 are timed.")
    parser.add_argument("--venv", default=DEFAULT_VENV, help="BoxMOT's environment. [default: %(default)s]")
    parser.add_argument("--batch", type=int, action="append", help="Crops per call; repeat. [default: 1 and 8]")
    parser.add_argument("--repeats", type=int, default=30, help="Timed calls per format. [default: %(default)s]")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed calls first. [default: %(default)s]")
    parser.add_argument("--rounds", type=int, default=3,
                        help="Whole measurements; 0: none (only --parity-run-dir). [default: %(default)s]")
    parser.add_argument("--cores", type=int, default=2, help="taskset to this many cores. [default: %(default)s]")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="PyTorch threads of BoxMOT's preprocessing. [default: PyTorch's own]")
    parser.add_argument("--parity-run-dir", default=None,
                        help="Also: the cosine of what BoxMOT's backends return to this run's Keras embedder, on "
                             "every --crops image (not only the 16 timed).")
    args = parser.parse_args(argv)
    python = os.path.join(args.venv, "bin", "python")
    if not os.path.exists(python):
        sys.exit(f"Error: --venv {args.venv}: no Python there; `pytest -m slow tests/test_boxmot.py` makes it")
    every_crop = sorted(p for pattern in args.crops for p in glob.glob(os.path.expanduser(pattern)))
    crops = every_crop[:16]
    if not crops:
        sys.exit(f"Error: --crops {args.crops}: matches no file")
    models = model_files(args.models)
    if args.parity_run_dir:
        parity_through_boxmot(python, models, every_crop, args.parity_run_dir, args.models)
    if args.rounds < 1:
        return
    prefix = (["taskset", "-c", f"0-{args.cores - 1}"] if shutil.which("taskset") and os.cpu_count() >= args.cores
              else [])
    rows = {}
    for batch in args.batch or [1, 8]:
        rounds = []
        for _ in range(args.rounds):
            command = [*prefix, python, SCRIPT, "latency", "--crops", *crops, "--batch", str(batch),
                       "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
            if args.torch_threads:
                command += ["--torch-threads", str(args.torch_threads)]
            for model in models:
                command += ["--model", model]
            done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=""))
            if done.returncode != 0:
                sys.exit(f"Error: {done.stderr.strip().splitlines()[-1]}")
            rounds.append(json.loads(done.stdout.strip().splitlines()[-1]))
        for index, model in enumerate(models):
            row = rows.setdefault(model, {"backend": rounds[0][index]["backend"]})
            for key in ("ms_median", "forward_ms_median"):
                row[(key, batch)] = (statistics.median(r[index][key] for r in rounds),
                                     statistics.median(r[index][key] / r[0][key] for r in rounds))
    print(f"Machine: {machine_description()}; pinned: {' '.join(prefix) or 'no'}; "
          f"PyTorch threads: {args.torch_threads or 'its own'}")
    print(f"Crops: {len(crops)} of {' '.join(args.crops)}; median of {args.rounds} rounds of {args.repeats} calls each")
    batches = args.batch or [1, 8]
    columns = [(key, b) for b in batches for key in ("ms_median", "forward_ms_median")]
    names = {"ms_median": "ReID call", "forward_ms_median": "forward"}
    print("| file | BoxMOT backend | " + " | ".join(f"{b} crops, {names[k]}: ms (x ONNX)" for k, b in columns) + " |")
    print("|---|---|" + "---:|" * len(columns))
    for model, row in rows.items():
        cells = " | ".join(f"{row[c][0]:.2f} ({row[c][1]:.2f}x)" for c in columns)
        print(f"| {os.path.basename(model)} | {row['backend']} | {cells} |")


if __name__ == "__main__":
    main()
