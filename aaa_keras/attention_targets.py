"""Stage 2's targets, searched once per training view instead of in every step (issue 22.1).

In stage 2 the stem and the tail are frozen and run in inference mode, so the
16-cell grid search of paper Algorithm 1 (lines 1-4) is a function of the
input image alone. With ``--attention-targets cached`` (the default) stage 2
augments by a horizontal flip only, so each training image has two *views*
(``view = 2 * index + flip``); :func:`target_table` searches every view once
before the first epoch, and :func:`view_dataset` feeds ``((images, views),
labels)`` so that a step reads its targets from that table
(``AttentionAssignmentModel.set_target_table``). The pad-and-crop of stages 1
and 3 would give hundreds of views per image; ``--attention-targets per-step``
keeps it and searches in every step (docs/decisions.md, "Stage 2's grid search
once per image and flip").
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from aaa_keras.data.pipeline import AUTOTUNE, decode_image
from aaa_keras.errors import DatasetError

VIEWS_PER_IMAGE = 2  # as is, flipped


def view_image(image, flip):
    """View ``flip`` (0 or 1) of a decoded image: as is, or mirrored left-right."""
    return tf.cond(tf.cast(flip, tf.bool), lambda: tf.image.flip_left_right(image), lambda: image)


def view_dataset(paths, labels, image_size, batch_size: int, seed: int = 0,
                 repeat: bool = True) -> tf.data.Dataset:
    """Shuffled batches ``((images, views), labels)``, each image as is or flipped by a seeded coin.

    The shuffle and the coin are seeded by ``seed`` and drawn anew every epoch;
    ``views`` are the rows of :func:`target_table`.
    """
    if len(paths) < batch_size:
        raise DatasetError(
            f"the training split has {len(paths)} images, fewer than --batch-size {batch_size}; "
            "lower --batch-size or add images")
    records = tf.data.Dataset.from_tensor_slices(
        (np.asarray(paths), np.asarray(labels, np.int32), np.arange(len(paths), dtype=np.int32)))
    records = records.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        records = records.repeat()
    coins = tf.data.Dataset.random(seed=seed).map(lambda r: tf.cast(r % VIEWS_PER_IMAGE, tf.int32))

    def load(record, flip):
        path, label, index = record
        image = view_image(decode_image(path, image_size), flip)
        return (image, index * VIEWS_PER_IMAGE + flip), label

    dataset = tf.data.Dataset.zip((records, coins)).map(load, num_parallel_calls=AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def view_batches(paths, labels, image_size, batch_size: int = 64) -> tf.data.Dataset:
    """Every view in table order, unshuffled: ``(images, labels)`` batches of views 0, 1, 2, ..."""
    records = tf.data.Dataset.from_tensor_slices((np.asarray(paths), np.asarray(labels, np.int32)))

    def both_views(path, label):
        image = decode_image(path, image_size)
        views = tf.stack([view_image(image, flip) for flip in range(VIEWS_PER_IMAGE)])
        return tf.data.Dataset.from_tensor_slices((views, tf.repeat(label, VIEWS_PER_IMAGE)))

    return records.flat_map(both_views).batch(batch_size).prefetch(AUTOTUNE)


def target_table(model, paths, labels, image_size, batch_size: int = 64) -> np.ndarray:
    """The true-class probability of every grid occlusion of every view, ``(views, K)`` float32.

    ``model`` is the stage-2 model (its frozen stem and tail:
    ``AttentionAssignmentModel.cell_probabilities``); row ``2 * i + flip`` is
    image ``i``'s view ``flip``.
    """
    rows = [np.asarray(model.cell_probabilities(images, batch_labels))
            for images, batch_labels in view_batches(paths, labels, image_size, batch_size)]
    table = np.concatenate(rows).astype(np.float32)
    if len(table) != VIEWS_PER_IMAGE * len(paths):
        raise AssertionError(f"target table has {len(table)} rows for {len(paths)} images")
    return table


def relative_difference(a, b) -> float:
    """The largest ``|a - b| / max(|a|, |b|)``: probabilities of a saturated network are ~1e-10."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-30)))


def verify_target_table(model, table, paths, labels, image_size, sample: int = 16, seed: int = 0,
                        tolerance: float = 1e-3) -> int:
    """Search ``sample`` views of ``table`` again with ``model``'s current stem and tail; raise if any
    probability differs by more than ``tolerance`` relatively (a stale or misordered table). Returns
    the number of views checked.

    Stage 2 calls it after its last epoch: the network must still be the one the table was made with.
    """
    rng = np.random.default_rng(seed)
    views = np.sort(rng.choice(len(table), size=min(sample, len(table)), replace=False))
    images = tf.stack([view_image(decode_image(paths[v // VIEWS_PER_IMAGE], image_size), v % VIEWS_PER_IMAGE)
                       for v in views])
    view_labels = tf.constant(np.asarray(labels, np.int32)[views // VIEWS_PER_IMAGE])
    fresh = np.asarray(model.cell_probabilities(images, view_labels))
    worst = relative_difference(fresh, table[views])
    if worst > tolerance:
        raise AssertionError(f"stage 2's target table is stale: {worst:.3g} relative difference from a fresh grid search of the "
                             f"same views (views {views.tolist()})")
    return len(views)
