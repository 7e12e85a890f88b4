"""What should stage 3's attention branch be trained against in pixel space? (issue 21 item 2)

For fixed training crops of a trained run (spread over the sorted training split, no
augmentation, network in inference mode) it compares the two grid searches (paper Alg. 1):

- feature space (what stage 2 and stage 3 use today): each of the 16 cells of the conv3 map
  zeroed, tail only;
- pixel space: each cell's pixels (the cell upsampled to the image, as ``--occlusion-space
  pixel`` occludes) covered with another identity of the batch, the whole network.

Printed: how often the two hardest cells agree (chance 1/16), the mean Spearman correlation of
the 16 cell probabilities per crop, how much of the pixel search's own drop (p_full - min_k p_k)
the feature search's hardest cell k* reaches when occluded in pixel space, the drop the stage-3
mask (top third of M_att) and a random region-shaped third cause in pixel space (their ratio is
the pixel-space ``efficacy``), and the cost of the pixel search relative to the feature search.

    python benchmarks/pixel_occlusion_targets.py /tmp/mainjob --stage adversarial --images 64
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import machine_description  # noqa: E402  (puts the repo on sys.path)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from aaa_keras.data.layouts import load_dataset  # noqa: E402
from aaa_keras.data.pipeline import eval_dataset  # noqa: E402
from aaa_keras.data.source import resolve_run_data  # noqa: E402
from aaa_keras.model.occlusion import (grid_cells, hardest_occlusion, random_scores,  # noqa: E402
                                       top_fraction_mask, true_class_probability)
from aaa_keras.model.pixel_occlusion import donor_indices, occlude_images  # noqa: E402
from aaa_keras.run_dir import load_trained  # noqa: E402


def spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def measure(run_dir, stage, count, batch_size, seed):
    trained = load_trained(run_dir, stage)
    config, parts, attention = trained.config, trained.parts, trained.attention
    dataset = load_dataset(resolve_run_data(None, config.data, run_dir, lambda *_: None))
    records = dataset.train_identities()
    labels, _ = dataset.relabel(records)
    picks = np.linspace(0, len(records) - 1, min(count, len(records))).round().astype(int)
    images = np.concatenate(list(eval_dataset([records[i].path for i in picks], config.image_size)
                                 .as_numpy_iterator()))
    labels = np.asarray(labels, np.int32)[picks]
    logits = lambda x: parts.tail(parts.stem(x, training=False), training=False)[1]  # noqa: E731
    rows = {"agree": [], "spearman": [], "reached": [], "att_drop": [], "rand_drop": []}
    seconds = {"feature": 0.0, "pixel": 0.0}
    for start in range(0, len(images), batch_size):
        x, y = tf.constant(images[start:start + batch_size]), tf.constant(labels[start:start + batch_size])
        features = parts.stem(x, training=False)
        p_full = true_class_probability(logits(x), y).numpy()
        began = time.perf_counter()
        feature_p = hardest_occlusion(lambda f: parts.tail(f, training=False)[1], features, y,
                                      config.grid_size)[1].numpy()
        seconds["feature"] += time.perf_counter() - began
        donors = donor_indices(y, seed + start)
        cells = grid_cells(features.shape[1], features.shape[2], config.grid_size)
        began = time.perf_counter()
        pixel_p = np.stack([true_class_probability(logits(occlude_images(
            x, np.broadcast_to((1.0 - cell)[None, ..., None], (len(y), *cell.shape, 1)).astype(np.float32),
            donors)[0]), y).numpy() for cell in cells], axis=1)
        seconds["pixel"] += time.perf_counter() - began
        k_feature, k_pixel = feature_p.argmin(1), pixel_p.argmin(1)
        rows["agree"] += list(k_feature == k_pixel)
        rows["spearman"] += [spearman(a, b) for a, b in zip(feature_p, pixel_p)]
        own_drop = p_full - pixel_p.min(1)
        reached = p_full - pixel_p[np.arange(len(y)), k_feature]
        rows["reached"] += list(reached[own_drop > 1e-3] / own_drop[own_drop > 1e-3])
        if attention is not None:
            keep = top_fraction_mask(attention(features, training=False), config.occluded_fraction)
            rows["att_drop"] += list(p_full - true_class_probability(
                logits(occlude_images(x, keep, donors)[0]), y).numpy())
        keep = top_fraction_mask(random_scores(features, seed + start), config.occluded_fraction)
        rows["rand_drop"] += list(p_full - true_class_probability(
            logits(occlude_images(x, keep, donors)[0]), y).numpy())
    result = {name: float(np.mean(values)) if values else float("nan") for name, values in rows.items()}
    result["cost"] = seconds["pixel"] / seconds["feature"]
    result["images"] = len(images)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--stage", default="adversarial")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(machine_description())
    print("| run (stage) | crops | k* agree (chance 0.06) | Spearman of 16 cells | share of the pixel "
          "search's drop reached by feature k* | pixel drop: M_att third / random third | "
          "pixel search cost / feature search |")
    print("|---|---|---|---|---|---|---|")
    for run_dir in args.run_dirs:
        r = measure(run_dir, args.stage, args.images, args.batch_size, args.seed)
        print(f"| {run_dir} ({args.stage}) | {r['images']} | {r['agree']:.2f} | {r['spearman']:.2f} | "
              f"{r['reached']:.2f} | {r['att_drop']:.3f} / {r['rand_drop']:.3f} | {r['cost']:.1f}x |")


if __name__ == "__main__":
    main()
