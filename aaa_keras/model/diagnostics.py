"""Is the attention doing its job? Numbers a user reads in every stage-2 and stage-3 log.

Computed on a fixed batch of training images in inference mode (the frozen
stem and tail of the current network), for the map stage 3 ranks to occlude
(``M_att``, the feature response or noise, ``--mask``):

- ``hit_rate``: the share of the hardest grid cell ``k*`` (paper Algorithm 1)
  that lies inside the stage-3 mask (the top third of the map), averaged over
  images. A mask that knows nothing of ``k*`` scores the occluded fraction,
  1/3.
- ``argmax_agreement``: how often the cell with the highest mean map value
  is ``k*`` (chance 1/16).
- ``cell_rank_correlation``: Spearman correlation, over the 16 cells, between
  the cell's mean map value and the drop of the true-class probability when
  that cell is occluded; averaged over images (chance 0).
- ``efficacy``: the mean drop of the true-class probability under the
  stage-3 mask divided by the mean drop under random thirds of the same size
  and of the same kind (blobs: ``occlusion.smooth_noise``), averaged over 8
  draws (chance 1; an adversary scores above 1; NaN when random thirds do not
  lower the probability at all). ``p_full``, ``p_masked`` and
  ``p_random`` are the three mean probabilities behind it.
- liveness of ``M_att`` in training mode (the attention branch's BatchNorm
  with batch statistics, restored afterwards): ``positive_fraction`` (share of
  positions above 0; eq. 2's relu passes gradient only there) and
  ``attention_spread`` (the per-image standard deviation over positions: 0
  means the map no longer tells positions apart).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from scipy import stats

from aaa_keras.model.occlusion import (feature_response, grid_cells, hardest_occlusion, smooth_noise,
                                       top_fraction_mask, true_class_probability)

DIAGNOSTICS = ("hit_rate", "argmax_agreement", "cell_rank_correlation", "efficacy",
               "p_full", "p_masked", "p_random")
LIVENESS = ("positive_fraction", "attention_spread")
RANDOM_DRAWS = 8  # random thirds averaged in the denominator of efficacy


def _random_masks(shape, fraction: float, draws: int, seed: int, grid_size: int = 4) -> np.ndarray:
    """``draws`` random-third masks ``(draws, B, H, W, 1)``, region-shaped (``occlusion.smooth_noise``)."""
    batch, height, width = shape
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(draws):
        scores = smooth_noise(rng.random((batch, grid_size, grid_size, 1)),
                              rng.random((batch, height, width, 1)), height, width)
        masks.append(top_fraction_mask(scores, fraction).numpy())
    return np.stack(masks)


def _cell_means(maps: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Mean of ``maps`` ``(B, H, W)`` inside each cell ``(K, H, W)`` -> ``(B, K)`` (empty cells: -inf)."""
    sums = np.einsum("bhw,khw->bk", maps, cells)
    sizes = cells.sum(axis=(1, 2))
    return np.where(sizes > 0, sums / np.maximum(sizes, 1), -np.inf)


def summarize(scores, mask, cell_probabilities, hardest_cell, p_full, p_masked, p_random,
              cells) -> dict:
    """The diagnostics from their ingredients (numpy in, floats out).

    ``scores``/``mask`` ``(B, H, W)``; ``cell_probabilities`` ``(B, K)``;
    ``hardest_cell``, ``p_full``, ``p_masked`` ``(B,)``; ``p_random``
    ``(draws, B)``; ``cells`` ``(K, H, W)``.
    """
    hardest_cell = np.asarray(hardest_cell)
    occluded = 1.0 - np.asarray(mask, np.float64)
    sizes = cells.sum(axis=(1, 2))
    covered = np.einsum("bhw,khw->bk", occluded, cells) / np.maximum(sizes, 1)  # (B, K)
    hit = covered[np.arange(len(hardest_cell)), hardest_cell]
    means = _cell_means(np.asarray(scores, np.float64), cells)
    argmax = np.argmax(means, axis=1)
    drops = p_full[:, None] - cell_probabilities  # (B, K): how much occluding each cell hurts
    correlations = []
    for sample_means, sample_drops in zip(means, drops):
        valid = np.isfinite(sample_means)
        if np.ptp(sample_means[valid]) > 0 and np.ptp(sample_drops[valid]) > 0:
            correlations.append(stats.spearmanr(sample_means[valid], sample_drops[valid]).statistic)
    drop_masked = float(np.mean(p_full - p_masked))
    drop_random = float(np.mean(p_full[None, :] - p_random))
    return {
        "hit_rate": float(np.mean(hit)),
        "argmax_agreement": float(np.mean(argmax == hardest_cell)),
        "cell_rank_correlation": float(np.mean(correlations)) if correlations else float("nan"),
        "efficacy": drop_masked / drop_random if drop_random > 1e-6 else float("nan"),
        "p_full": float(np.mean(p_full)),
        "p_masked": float(np.mean(p_masked)),
        "p_random": float(np.mean(p_random)),
    }


def _liveness(attention: keras.Model, features) -> dict:
    """``positive_fraction`` and ``attention_spread`` of M_att in training mode, state restored."""
    saved = [v.numpy() for v in attention.non_trainable_variables]  # BatchNorm moving statistics
    try:
        maps = np.asarray(attention(features, training=True), np.float64)[..., 0]
    finally:
        for variable, value in zip(attention.non_trainable_variables, saved):
            variable.assign(value)
    return {"positive_fraction": float(np.mean(maps > 0)),
            "attention_spread": float(np.mean(maps.reshape(len(maps), -1).std(axis=1)))}


def network_parts(stem: keras.Model, tail: keras.Model, images, labels, grid_size: int = 4,
                  fraction: float = 1.0 / 3.0, seed: int = 0, random_draws: int = RANDOM_DRAWS,
                  chunk: int = 16) -> list[dict]:
    """What the diagnostics take from the network alone, per chunk of ``chunk`` images.

    The features, the grid search (16 occluded copies per image through the
    tail), ``p_full`` and the random thirds' ``p_random``: none depends on the
    map being judged, so while the network is frozen (stage 2) they are the
    same every epoch (:class:`AttentionDiagnostics` keeps them).
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)

    def logits_fn(f):
        return tail(f, training=False)[1]

    chunks = []
    for start in range(0, len(images), chunk):
        x = tf.constant(images[start:start + chunk])
        y = tf.constant(labels[start:start + chunk])
        features = tf.cast(stem(x, training=False), tf.float32)
        _, cell_probabilities, hardest_cell = hardest_occlusion(logits_fn, features, y, grid_size)
        randoms = _random_masks(tuple(features.shape[:3]), fraction, random_draws, seed + start,
                                grid_size)
        chunks.append({
            "x": x, "y": y, "features": features, "cell_p": cell_probabilities.numpy(),
            "hardest": hardest_cell.numpy(),
            "p_full": true_class_probability(logits_fn(features), y).numpy(),
            "p_random": np.stack([true_class_probability(logits_fn(features * m), y).numpy()
                                  for m in randoms])})
    return chunks


def attention_diagnostics(stem: keras.Model, tail: keras.Model, images, labels, mask: str = "attention",
                          attention: keras.Model | None = None, grid_size: int = 4,
                          fraction: float = 1.0 / 3.0, seed: int = 0,
                          random_draws: int = RANDOM_DRAWS, chunk: int = 16,
                          network: list[dict] | None = None) -> dict:
    """Every diagnostic of the module docstring for ``images`` (0-255) and their ``labels``.

    Images go through in chunks of ``chunk`` (each chunk sends 16 occluded
    copies per image through the tail). ``network``: :func:`network_parts` of
    these images, arguments and network, computed earlier (else computed here).
    """
    noise = np.random.default_rng(seed + 1)  # the random mask's scores, apart from efficacy's thirds

    def logits_fn(f):
        return tail(f, training=False)[1]

    if network is None:
        network = network_parts(stem, tail, images, labels, grid_size, fraction, seed, random_draws, chunk)
    parts = {name: [] for name in ("scores", "mask", "cell_p", "hardest", "p_full", "p_masked",
                                   "p_random", "features")}
    for known in network:
        features, y = known["features"], known["y"]
        if mask == "attention":
            scores = attention(features, training=False)
        elif mask == "response":
            scores = feature_response(features)
        else:
            batch, height, width = features.shape[:3]
            scores = smooth_noise(noise.random((batch, grid_size, grid_size, 1)),
                                  noise.random((batch, height, width, 1)), height, width)
        occlusion = top_fraction_mask(scores, fraction)
        parts["scores"].append(np.asarray(scores)[..., 0])
        parts["mask"].append(np.asarray(occlusion)[..., 0])
        for name in ("cell_p", "hardest", "p_full", "p_random", "features"):
            parts[name].append(known[name])
        parts["p_masked"].append(true_class_probability(logits_fn(features * occlusion), y).numpy())
    joined = {name: np.concatenate(values, axis=1 if name == "p_random" else 0)
              for name, values in parts.items() if name != "features"}
    height, width = parts["scores"][0].shape[1:]
    values = summarize(joined["scores"], joined["mask"], joined["cell_p"], joined["hardest"],
                       joined["p_full"], joined["p_masked"], joined["p_random"],
                       grid_cells(height, width, grid_size))
    if attention is not None and mask == "attention":
        values.update(_liveness(attention, tf.concat(parts["features"], axis=0)))
    return values


def format_diagnostics(values: dict) -> str:
    """One line for a log, with the chance level of each number."""
    parts = [f"hit_rate {values['hit_rate']:.2f} (chance 0.33)",
             f"argmax_agreement {values['argmax_agreement']:.2f} (chance 0.06)",
             f"cell_rank_correlation {values['cell_rank_correlation']:+.2f} (chance 0)",
             f"efficacy {values['efficacy']:.2f} (chance 1)"]
    if "positive_fraction" in values:
        parts.append(f"positive_fraction {values['positive_fraction']:.3f}")
        parts.append(f"attention_spread {values['attention_spread']:.3g}")
    return ", ".join(parts)


class AttentionDiagnostics(keras.callbacks.Callback):
    """Adds the diagnostics to each epoch's logs (progress bar, CSV, TensorBoard, done.json).

    Place it before the loggers in the callback list. It also logs the values
    before the first epoch, so a run shows where the map started.


    ``frozen_network`` (stage 2: stem and tail never change): the network's
    part of the diagnostics (:func:`network_parts`) is computed once and kept.
    """

    def __init__(self, images, labels, mask: str, grid_size: int, fraction: float, seed: int = 0,
                 log=print, stage: str = "", frozen_network: bool = False):
        super().__init__()
        self.images, self.labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
        self.mask, self.grid_size, self.fraction, self.seed = mask, grid_size, fraction, seed
        self.log, self.stage, self.frozen_network = log, stage, frozen_network
        self._network = None

    def compute(self) -> dict:
        model = self.model
        network = self._network
        if network is None:
            network = network_parts(model.stem, model.tail, self.images, self.labels, self.grid_size,
                                    self.fraction, self.seed)
            if self.frozen_network:
                self._network = network
        return attention_diagnostics(
            model.stem, model.tail, self.images, self.labels, self.mask,
            getattr(model, "attention", None), self.grid_size, self.fraction, self.seed,
            network=network)

    def on_train_begin(self, logs=None):
        self.log(f"Stage {self.stage} diagnostics before training ({len(self.images)} fixed "
                 f"training images, mask {self.mask}): {format_diagnostics(self.compute())}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.compute())
