"""Pictures of a trained run: load it, compute what to draw, draw with :mod:`aaa_keras.plots`.

The pictures (``python cli.py visualize --what ...``):

- ``ranks``: ranked lists, query then its top-10 gallery images per row,
  green border = true match (same id, another camera), red = wrong, grey with
  a "junk" label = ignored by the protocol (id -1, or same id and same
  camera), distance under each image;
- ``attention``: ``max(M_att, 0)`` of stage 2 and stage 3 overlaid on the
  image (paper Figure 1), side by side when both stages are trained;
- ``occlusion``: the 16 grid occlusions of the stage-2 search with each
  cell's true-class probability and the hardest cell ``k*`` (paper Figure 2),
  and stage 3's top-third occlusion masks ``B`` in black (paper Figure 4);
- ``curves``: every metric of every stage's ``log.csv``.

The run is read through :mod:`aaa_keras.run_dir`; the ``compute_*`` helpers
run the trained networks (TensorFlow) to get the arrays the drawing
functions of :mod:`aaa_keras.plots` take; the ranking and its match / junk
rule are :mod:`aaa_keras.evaluation.rank`'s.
"""

from __future__ import annotations

import os

import numpy as np

from aaa_keras import plots
from aaa_keras.errors import RunDirError, UserError
from aaa_keras.plots import STAGE_NAMES
from aaa_keras.run_dir import (LOG_FILE, load_trained, read_log, require_stage, stage_file, stage_is_done,
                               trained_stages)

PICTURES_DIR = "pictures"
WHAT = ("ranks", "attention", "occlusion", "curves", "all")
GRID_MAX_IMAGES = 4  # "a few images": the grid-occlusion picture shows at most this many


# === Training curves ===

def _stage_logs(run_dir: str, stages=None) -> list[tuple[str, dict[str, np.ndarray]]]:
    from aaa_keras.config import STAGES

    logs = []
    for stage in stages or STAGES:
        path = stage_file(run_dir, stage, LOG_FILE)
        if os.path.isfile(path):
            log = read_log(path)
            if log and len(next(iter(log.values()))):
                logs.append((stage, log))
    return logs


def plot_training_curves(run_dir: str, out_path: str | None = None, stages=None) -> str:
    """Every metric of every stage's ``log.csv``, one panel per metric, one band per stage.

    Writes ``<run_dir>/pictures/training_curves.png`` unless ``out_path`` is
    given; returns the path. A stage still training (no ``done.json``) is
    marked so (:func:`aaa_keras.plots.plot_curves`).
    """
    logs = _stage_logs(run_dir, stages)
    if not logs:
        raise RunDirError(f"--run-dir {run_dir}: no training log (<stage>/log.csv) to plot; train a "
                          f"stage first with `python cli.py fit --stage baseline --run-dir {run_dir}`")
    out_path = out_path or os.path.join(run_dir, PICTURES_DIR, "training_curves.png")
    return plots.plot_curves(out_path, [(stage, log, stage_is_done(run_dir, stage)) for stage, log in logs],
                             os.path.basename(os.path.normpath(os.path.abspath(run_dir))))


# === Network outputs for the pictures (TensorFlow) ===

def load_images(paths: list[str], image_size, batch_size: int = 32) -> np.ndarray:
    """Network inputs: float32 ``(N, H, W, 3)`` in 0-255, as the evaluation pipeline makes them."""
    from aaa_keras.data.pipeline import eval_dataset

    if not paths:
        return np.zeros((0, *image_size, 3), np.float32)
    return np.concatenate([batch.numpy() for batch in eval_dataset(list(paths), image_size, batch_size)])


def compute_attention_maps(parts, attention, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Raw ``M_att`` ``(N, h, w)`` of images (0-255) through the frozen stem and the attention branch."""
    maps = []
    for start in range(0, len(images), batch_size):
        features = parts.stem(images[start:start + batch_size], training=False)
        maps.append(np.asarray(attention(features, training=False), np.float32)[..., 0])
    return np.concatenate(maps) if maps else np.zeros((0, 1, 1), np.float32)


def compute_grid_occlusions(parts, images: np.ndarray, labels=None, grid_size: int = 4,
                            cells_per_call: int | None = None, batch_size: int = 4) -> dict:
    """The stage-2 grid search on the frozen stem/tail (``hardest_occlusion``) for a few images.

    ``labels``: the true classes (training labels of the network's classifier);
    None uses the predicted class of the unoccluded image. Returns
    ``cell_probabilities`` ``(N, K)``, ``hardest_cells`` ``(N,)``,
    ``base_probabilities`` ``(N,)`` (unoccluded), ``labels`` ``(N,)`` and the
    ``feature_shape`` ``(h, w)``.
    """
    import tensorflow as tf

    from aaa_keras.model.occlusion import hardest_occlusion, true_class_probability

    def logits_fn(features):
        return parts.tail(features, training=False)[1]

    out = {"cell_probabilities": [], "hardest_cells": [], "base_probabilities": [], "labels": []}
    feature_shape = tuple(int(d) for d in parts.stem.output.shape[1:3])
    for start in range(0, len(images), batch_size):
        features = parts.stem(images[start:start + batch_size], training=False)
        logits = logits_fn(features)
        if labels is None:
            batch_labels = tf.argmax(logits, axis=-1, output_type=tf.int32)
        else:
            batch_labels = tf.constant(np.asarray(labels[start:start + batch_size], np.int32))
        _, probabilities, hardest = hardest_occlusion(logits_fn, features, batch_labels, grid_size,
                                                      cells_per_call)
        out["cell_probabilities"].append(probabilities.numpy())
        out["hardest_cells"].append(hardest.numpy())
        out["base_probabilities"].append(true_class_probability(logits, batch_labels).numpy())
        out["labels"].append(batch_labels.numpy())
    cells = grid_size * grid_size
    empty = {"cell_probabilities": np.zeros((0, cells)), "hardest_cells": np.zeros(0, int),
             "base_probabilities": np.zeros(0), "labels": np.zeros(0, int)}
    result = {k: np.concatenate(v) if v else empty[k] for k, v in out.items()}
    result["feature_shape"] = feature_shape
    return result


def compute_occlusion_masks(parts, attention, images: np.ndarray, fraction: float = 1.0 / 3.0,
                            batch_size: int = 16, mask: str = "attention", seed: int = 0) -> np.ndarray:
    """Stage 3's 0-1 masks ``B`` ``(N, h, w)``: 0 at the top ``fraction`` of the ranked map.

    ``mask``: ``attention`` ranks ``M_att``, ``response`` the channel mean of
    ``f`` (Table 4 without fine-tuning), ``random`` region-shaped noise.
    """
    from aaa_keras.model.occlusion import feature_response, random_scores, top_fraction_mask

    if mask == "attention":
        maps = compute_attention_maps(parts, attention, images, batch_size)[..., None]
    else:
        features = np.concatenate([parts.stem(images[i:i + batch_size], training=False)
                                   for i in range(0, len(images), batch_size)]) if len(images) else None
        if features is None:
            return np.zeros((0, 1, 1), np.float32)
        maps = (feature_response(features) if mask == "response"
                else random_scores(features, seed)).numpy()
    if not len(maps):
        return maps[..., 0]
    return np.asarray(top_fraction_mask(maps, fraction), np.float32)[..., 0]


# === A run directory's pictures ===

def pick_records(records: list, num: int) -> list:
    """``num`` records chosen deterministically, spread over identities and cameras.

    Identities are taken evenly spaced over the sorted person ids, one image
    each; when ``num`` exceeds the number of identities, further rounds take
    each identity's next image. An identity's images are ordered by file name
    within a camera and alternate between its cameras, so repeated rounds show
    the person from other cameras.
    """
    grouped: dict[int, dict[int, list]] = {}
    for record in sorted(records, key=lambda r: (r.pid, r.camid, os.path.basename(r.path))):
        grouped.setdefault(record.pid, {}).setdefault(record.camid, []).append(record)
    by_pid = {}
    for pid, by_camera in grouped.items():
        cameras = list(by_camera.values())
        by_pid[pid] = [cam[i] for i in range(max(map(len, cameras))) for cam in cameras if i < len(cam)]
    pids = sorted(by_pid)
    if not pids or num < 1:
        return []
    if num <= len(pids):
        positions = np.unique(np.round(np.linspace(0, len(pids) - 1, num)).astype(int))
        return [by_pid[pids[p]][0] for p in positions]
    chosen = []
    for round_index in range(max(len(v) for v in by_pid.values())):
        for pid in pids:
            if round_index < len(by_pid[pid]) and len(chosen) < num:
                chosen.append(by_pid[pid][round_index])
    return chosen


def _caption(record) -> str:
    return f"id {record.pid}  c{record.camid}"


def _attention_stages(run_dir: str, done: list[str], stage: str | None, what: str) -> list[str]:
    """Stages whose attention branch the attention/occlusion pictures use, or a RunDirError."""
    if stage == "baseline":
        raise RunDirError(
            f"--stage baseline has no attention branch: the {what} pictures need stage 2 "
            f"(attention) or 3 (adversarial); pass --stage attention or --stage adversarial"
            + ("" if "attention" in done or "adversarial" in done else
               f" after `python cli.py fit --stage attention --run-dir {run_dir}`"))
    if stage is not None:
        return [stage]
    stages = [s for s in ("attention", "adversarial") if s in done]
    if not stages:
        raise RunDirError(
            f"--run-dir {run_dir} has no trained attention stage (trained: {', '.join(done) or 'none'}); "
            f"the {what} pictures need stage 2 (attention) or 3 (adversarial): run "
            f"`python cli.py fit --stage attention --run-dir {run_dir}`")
    return stages


def visualize_run(run_dir: str, stage: str | None = None, data: str | None = None, what: str = "all",
                  num: int = 8, out_dir: str | None = None, log=print) -> list[str]:
    """Write the pictures of a trained run directory; returns their paths (each is logged).

    ``what``: ``ranks`` (stage ``stage`` or the latest trained one),
    ``attention`` (M_att of stages 2 and 3, or ``stage``, and stage 3's masks
    with the hardest cell k* of each image), ``occlusion`` (grid search of
    the latest attention stage or ``stage``; top-third masks of stage 3, or of
    stage 2 when stage 3 is not trained), ``curves`` (every stage), or ``all``
    (those of them the run dir has stages for: the attention and occlusion
    pictures are skipped, with a note, on a baseline-only run). ``data``:
    dataset root, default the run's own. Ranked lists use ``num`` query
    images; attention/occlusion pictures use ``num`` training images (their
    true classes are the network's classes), grid occlusions at most
    :data:`GRID_MAX_IMAGES` of them. Pictures go to ``out_dir`` (default
    ``<run_dir>/pictures``).
    """
    from aaa_keras.data.source import resolve_run_data
    from aaa_keras.config import STAGES, load_config

    # === Arguments and the run dir, checked before any slow work ===
    if what not in WHAT:
        raise UserError(f"--what: got {what!r}; expected one of {', '.join(WHAT)}")
    if not isinstance(num, int) or num < 1:
        raise UserError(f"--num must be a positive integer, got {num!r}")
    if stage is not None and stage not in STAGES:
        raise UserError(f"--stage: got {stage!r}; expected one of {STAGES}")
    config = load_config(run_dir)
    require_stage(run_dir, stage)  # the RunDirError naming the stage to train
    done = trained_stages(run_dir)
    kinds = ["curves", "ranks", "attention", "occlusion"] if what == "all" else [what]
    attention_stages: list[str] = []
    if "attention" in kinds or "occlusion" in kinds:
        try:
            attention_stages = _attention_stages(
                run_dir, done, stage, "attention and occlusion" if what == "all" else what)
        except RunDirError as error:
            if what != "all":
                raise
            log(f"Skipping the attention and occlusion pictures: {error}")  # the rest still helps
            kinds = [k for k in kinds if k not in ("attention", "occlusion")]
    out_dir = out_dir or os.path.join(run_dir, PICTURES_DIR)
    written: list[str] = []

    def wrote(path: str) -> None:
        written.append(path)
        log(f"Wrote {path}")

    if "curves" in kinds:
        wrote(plot_training_curves(run_dir, os.path.join(out_dir, "training_curves.png")))
    if kinds == ["curves"]:
        return written

    # === Data ===
    from aaa_keras.data.layouts import load_dataset
    from aaa_keras.data.names import dataset_fingerprint

    root = resolve_run_data(data, config.data, run_dir, log)
    dataset = load_dataset(root)
    own_data = dataset_fingerprint(dataset) == config.dataset_fingerprint
    data_name = os.path.basename(os.path.normpath(root))
    suffix = "" if own_data else f"_{data_name}"
    models: dict[str, tuple] = {}

    def trained(name: str):
        if name not in models:
            loaded = load_trained(run_dir, name)
            models[name] = loaded.parts, loaded.attention
        return models[name]

    # === Ranked lists ===
    if "ranks" in kinds:
        wrote(_ranked_lists_of_run(run_dir, stage or done[-1], config, dataset, data_name, num,
                                   os.path.join(out_dir, f"ranks_{stage or done[-1]}{suffix}.png"),
                                   trained))
    if "attention" not in kinds and "occlusion" not in kinds:
        return written

    # === Training images: their true classes are the classifier's classes ===
    records = dataset.train_identities() or [r for r in dataset.query if r.is_identity] or dataset.query
    chosen = pick_records(records, num)
    images = load_images([r.path for r in chosen], config.image_size)
    captions = [_caption(r) for r in chosen]
    split = "training" if dataset.train_identities() else "query"
    source = f"{len(chosen)} {split} images of {data_name}"

    def has_branch(name: str) -> bool:
        return name == "attention" or config.mask == "attention"

    if "attention" in kinds and not any(has_branch(s) for s in attention_stages):
        log(f"No attention maps to draw: stage 3 ran with --mask {config.mask} (no attention branch)")
    if "attention" in kinds and any(has_branch(s) for s in attention_stages):
        maps = {STAGE_NAMES[s].replace(" (", "\n("): compute_attention_maps(*trained(s), images)
                for s in attention_stages if has_branch(s)}
        names = " and ".join(STAGE_NAMES[s] for s in attention_stages if has_branch(s))
        wrote(plots.plot_attention_maps(
            os.path.join(out_dir, f"attention_maps{suffix}.png"), [r.path for r in chosen], maps,
            captions, title=f"Attention maps M_att of {names}\n{source}"))

    # === The hardest cells k* and stage 3's masks (--what attention and occlusion) ===
    if "attention" in kinds or "occlusion" in kinds:
        from aaa_keras.model.occlusion import grid_cells

        search_stage = attention_stages[-1]
        parts, attention = trained(search_stage)
        few = min(len(chosen), GRID_MAX_IMAGES)
        labels = None
        if own_data and split == "training":
            _, pid_to_label = dataset.relabel()
            labels = np.array([pid_to_label[r.pid] for r in chosen], np.int32)
        else:
            log("Grid occlusions: the images are not from the run's training set, so the "
                "predicted class stands in for the true class")
        everything = compute_grid_occlusions(parts, images, labels, config.grid_size,
                                             config.cells_per_call)
        cells = grid_cells(*everything["feature_shape"], config.grid_size)
        result = {k: v[:few] if k != "feature_shape" else v for k, v in everything.items()}
        class_note = "true class" if labels is not None else "predicted class"
        if "occlusion" in kinds:
            wrote(plots.plot_grid_occlusions(
                os.path.join(out_dir, f"grid_occlusion_{search_stage}{suffix}.png"),
                [r.path for r in chosen[:few]], result["cell_probabilities"], result["hardest_cells"],
                cells, result["base_probabilities"],
                [f"{c}\nclass {int(k)}" for c, k in zip(captions, result["labels"])],
                title=(f"Grid occlusion search with the {STAGE_NAMES[search_stage]} network, "
                       f"{config.occlude_after} feature map\n"
                       f"s_k = {class_note} probability with cell k of the feature map occluded; "
                       f"red = hardest cell k* (the target M_occ)")))

        mask_stage = "adversarial" if "adversarial" in attention_stages else attention_stages[-1]
        mask_kind = config.mask if mask_stage == "adversarial" else "attention"
        masks = compute_occlusion_masks(*trained(mask_stage), images, config.occluded_fraction,
                                        mask=mask_kind, seed=config.seed)
        boxes = []
        for path, cell in zip([r.path for r in chosen], everything["hardest_cells"]):
            image = plots.read_image(path)
            boxes.append(None if image is None else plots.cell_boxes(cells, image.shape)[int(cell)])
        note = "" if mask_stage == "adversarial" else " (the masks stage 3 starts from)"
        ranked = {"attention": "M_att", "response": "the feature response (channel mean of f)",
                  "random": "random noise (the control)"}[mask_kind]
        wrote(plots.plot_occlusion_masks(
            os.path.join(out_dir, f"occlusion_masks_{mask_stage}{suffix}.png"),
            [r.path for r in chosen], masks, captions, hardest_boxes=boxes,
            title=(f"Occlusion masks B of {STAGE_NAMES[mask_stage]}: top {config.occluded_fraction:.0%} "
                   f"of {ranked} in black{note}; red box = hardest grid cell k*")))
    return written


def _ranked_lists_of_run(run_dir, stage, config, dataset, data_name, num, out_path, trained) -> str:
    """Rank the gallery for ``num`` query images with the stage's embedder and draw the lists."""
    from aaa_keras.data.names import record_ids
    from aaa_keras.evaluation.distance import euclidean_distance
    from aaa_keras.evaluation.rank import ranked_gallery
    from aaa_keras.evaluation.run import extract_embeddings
    from aaa_keras.model.backbone import build_embedder

    parts, _ = trained(stage)
    embedder = build_embedder(parts)
    queries, gallery = pick_records(dataset.query, num), dataset.gallery
    query_features = extract_embeddings(embedder, queries, config.image_size)
    gallery_features = extract_embeddings(embedder, gallery, config.image_size)
    distances = np.sqrt(euclidean_distance(query_features, gallery_features))
    top = min(10, len(gallery))
    (q_pids, q_camids), (g_pids, g_camids) = record_ids(queries), record_ids(gallery)
    # Junk is kept, labelled: the picture shows what the protocol ignores.
    ranked = ranked_gallery(distances, q_pids, g_pids, q_camids, g_camids, top, keep_junk=True)
    rankings = [[dict(path=gallery[g].path, pid=gallery[g].pid, camid=gallery[g].camid, distance=float(row[g]))
                 for g in ranking["indices"]] for row, ranking in zip(distances, ranked)]
    return plots.save_ranked_lists(
        out_path, [dict(path=q.path, pid=q.pid, camid=q.camid) for q in queries], rankings, top,
        title=(f"Ranked lists of {STAGE_NAMES[stage]} on {data_name}\n"
               f"query, then its top-{top} of {len(gallery)} gallery images by Euclidean "
               f"distance d of L2-normalised embeddings"))
