#!/usr/bin/env python
"""Run `export --for boxmot` files through BoxMOT's own re-ID backends (in BoxMOT's environment).

Needs only BoxMOT (``pip install boxmot``, which brings PyTorch, OpenCV,
NumPy; ONNX Runtime, OpenVINO and ai-edge-litert for the three formats);
never imports aaa_keras. Three modes:

embed    each MODEL through ``boxmot.reid.core.runtime.ReID`` (the runtime a
         tracker's ``reid_weights=`` builds: backend class chosen by the file
         suffix, BoxMOT's crop preprocessing, L2-normalised output) on the
         CROPS (BGR image files); writes OUT.npz with one array per model
         (``emb_<i>``), ``models``, ``backends`` and ``crops``.
track    a BotSort tracker with ``reid_weights=MODEL`` on a few synthetic
         frames made of the CROPS; prints the track ids (smoke test of the
         whole tracker path).
latency  milliseconds per ``ReID(crops)`` call of a batch of BATCH crops
         (its preprocess, process and postprocess stages; the backend's
         forward alone too), median of REPEATS after WARMUP calls, per MODEL;
         prints JSON.

Examples:
  python export/boxmot_reid.py embed --out emb.npz --crops crops/*.jpg --model models/boxmot/aaa_net/1/aaa_net_v1.onnx
  python export/boxmot_reid.py track --crops crops/*.jpg --model models/boxmot/aaa_net/1/aaa_net_v1_openvino_model
  python export/boxmot_reid.py latency --crops crops/*.jpg --batch 8 \
      --model models/boxmot/aaa_net/1/aaa_net_v1_int8.tflite
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def _crops(paths):
    import cv2

    crops = []
    for path in paths:
        image = cv2.imread(path)
        if image is None:
            sys.exit(f"Error: {path}: OpenCV cannot read this image")
        crops.append(image)
    if not crops:
        sys.exit("Error: --crops: no images given")
    return crops


def _runtime(model):
    from boxmot.reid.core.runtime import ReID

    return ReID(weights=model, device="cpu", half=False)


def embed(models, crops, crop_paths, out):
    import numpy as np

    arrays, backends = {}, []
    for index, model in enumerate(models):
        runtime = _runtime(model)
        arrays[f"emb_{index}"] = np.asarray(runtime(crops), np.float32)
        backends.append(f"{type(runtime.model).__name__} {tuple(runtime.model.input_shape)}")
    np.savez(out, models=np.array(models), backends=np.array(backends), crops=np.array(crop_paths), **arrays)
    for model, backend in zip(models, backends):
        print(f"{model}: {backend}")


def track(models, crops, frames: int = 4):
    """BotSort with the model as its re-ID: the crops side by side on a grey frame, moving 2 px a frame."""
    from pathlib import Path

    import numpy as np

    from boxmot import BotSort

    height = max(c.shape[0] for c in crops[:6]) + 20
    width = sum(c.shape[1] + 20 for c in crops[:6]) + 40
    for model in models:
        tracker = BotSort(reid_weights=Path(model), device="cpu", half=False, use_cmc=False)
        ids = []
        for step in range(frames):
            frame = np.full((height, width, 3), 114, np.uint8)
            detections, x = [], 10 + 2 * step
            for crop in crops[:6]:
                h, w = crop.shape[:2]
                frame[10:10 + h, x:x + w] = crop
                detections.append([x, 10, x + w, 10 + h, 0.9, 0])
                x += w + 20
            tracks = tracker.update(np.array(detections, np.float32), frame)
            ids.append(sorted(int(t) for t in tracks[:, 4]) if len(tracks) else [])
        reid = getattr(tracker, "_reid_model", None)  # the backend the tracker built from reid_weights (25.0.0)
        print(json.dumps({"model": model, "backend": type(reid).__name__ if reid is not None else None,
                          "embedding_width": getattr(tracker, "last_emb_size", None), "track_ids": ids}))


def latency(models, crops, batch: int, repeats: int, warmup: int):
    results = []
    chosen = (crops * (batch // len(crops) + 1))[:batch]
    for model in models:
        runtime = _runtime(model)
        for _ in range(warmup):
            runtime(chosen)
        times, forward = [], []
        for _ in range(repeats):  # ReID.__call__'s three stages, timed apart
            started = time.perf_counter()
            payload = runtime.preprocess(chosen)
            middle = time.perf_counter()
            features = runtime.process(payload)
            after = time.perf_counter()
            runtime.postprocess(features)
            times.append(1000.0 * (time.perf_counter() - started))
            forward.append(1000.0 * (after - middle))
        results.append({"model": model, "backend": type(runtime.model).__name__, "batch": batch,
                        "ms_median": round(statistics.median(times), 3), "ms_min": round(min(times), 3),
                        "forward_ms_median": round(statistics.median(forward), 3), "repeats": repeats})
    print(json.dumps(results))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("embed", "track", "latency"))
    parser.add_argument("--model", action="append", required=True, help="A re-ID file; repeat for several.")
    parser.add_argument("--crops", nargs="+", required=True, help="BGR image files (person crops).")
    parser.add_argument("--out", default="boxmot_embeddings.npz",
                        help="embed: the .npz to write. [default: %(default)s]")
    parser.add_argument("--batch", type=int, default=8, help="latency: crops per call. [default: %(default)s]")
    parser.add_argument("--repeats", type=int, default=30, help="latency: timed calls. [default: %(default)s]")
    parser.add_argument("--warmup", type=int, default=5, help="latency: untimed calls first. [default: %(default)s]")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads for BoxMOT's PyTorch preprocessing. [default: PyTorch's own]")
    args = parser.parse_args(argv)
    for model in args.model:
        if not os.path.exists(model):
            sys.exit(f"Error: --model {model}: no such file or directory")
    crops = _crops(args.crops)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.mode == "embed":
        embed(args.model, crops, args.crops, args.out)
    elif args.mode == "track":
        track(args.model, crops)
    else:
        latency(args.model, crops, args.batch, args.repeats, args.warmup)


if __name__ == "__main__":
    main()
