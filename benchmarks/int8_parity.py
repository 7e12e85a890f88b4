#!/usr/bin/env python
"""int8 TFLite against Keras on a trained run: where the int8 graph ends, which retrieval feature, which gate.

For each retrieval feature (after / before the BNNeck; one when the run has
no BNNeck) and each end of the int8 graph (``l2_inside``: the L2
normalisation converted too, whose SQUARE LiteRT keeps in float; ``unnormalised``:
the export's graph, integer end to end), converts the int8 model with the
export's own functions (100 calibration images from the training split, the
1.5x embedding headroom) and prints, over the held set (the test split, or
``--parity-max-images`` of it), the per-image cosine to Keras: min, low
percentiles, mean, centred mean; the float ops of the file; mAP against Keras.

    python benchmarks/int8_parity.py --run-dir runs/demo
    python benchmarks/int8_parity.py --run-dir runs/demo --ends unnormalised --features before --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

PERCENTILES = (0.1, 0.5, 1.0, 2.0, 5.0)


def measure(run_dir, stage, feature, ends, data, max_images, representative_count) -> dict:
    from aaa_keras.data.layouts import load_dataset
    from aaa_keras.data.source import resolve_run_data
    from aaa_keras.deploy import parity, tflite
    from aaa_keras.deploy.runtime import embed_files, read_images
    from aaa_keras.evaluation.run import extract_embeddings
    from aaa_keras.model.backbone import build_embedder
    from aaa_keras.run_dir import load_trained

    trained = load_trained(run_dir, stage, feature)
    dataset = load_dataset(resolve_run_data(data, trained.config.data, run_dir, lambda *_: None))
    held = parity.held_set(dataset, max_images)
    size = trained.config.image_size
    reference = parity.Reference(held, extract_embeddings(build_embedder(trained.parts), held.records, size))
    calibration = read_images([r.path for r in parity.spread(list(dataset.train), representative_count)], size)
    result = {"feature": feature, "held_images": len(held.records), "keras_mAP": reference.retrieval["mAP"]}
    for end in ends:
        started = time.time()
        content = tflite.convert(tflite.tflite_graph(trained.parts, normalize=end == "l2_inside"), "int8",
                                 calibration)
        embeddings = embed_files(tflite.TFLiteEmbedder(model_content=content), [r.path for r in held.records])
        plain = parity.cosines(reference.embeddings, embeddings)
        centred = parity.centred_cosines(reference.embeddings, embeddings, reference.mean)
        result[end] = {
            "float_ops": tflite.float_ops(tflite.Interpreter(model_content=content)),
            "cosine_min": round(float(plain.min()), 5),
            **{f"cosine_p{p:g}": round(float(np.percentile(plain, p)), 5) for p in PERCENTILES},
            "cosine_mean": round(float(plain.mean()), 5), "centred_mean": round(float(centred.mean()), 4),
            "below_0.98": int(np.sum(plain < 0.98)), "mAP": held.retrieval(embeddings)["mAP"],
            "seconds": round(time.time() - started, 1),
        }
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--stage", default=None, help="default: the latest trained")
    parser.add_argument("--features", nargs="+", default=["after", "before"], choices=["after", "before"])
    parser.add_argument("--ends", nargs="+", default=["l2_inside", "unnormalised"],
                        choices=["l2_inside", "unnormalised"])
    parser.add_argument("--data", default=None, help="default: the run's dataset")
    parser.add_argument("--parity-max-images", type=int, default=None)
    parser.add_argument("--representative-count", type=int, default=100)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    from aaa_keras.run_dir import load_trained

    features = args.features if load_trained(args.run_dir, args.stage).config.bnneck else ["after"]
    results = [measure(args.run_dir, args.stage, feature, args.ends, args.data, args.parity_max_images,
                       args.representative_count) for feature in features]
    for result in results:
        print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
