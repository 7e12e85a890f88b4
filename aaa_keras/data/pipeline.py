"""``tf.data`` input pipelines: decode, resize, augment, batch, prefetch.

Images leave the pipeline as float32 RGB in 0-255; the ImageNet
normalisation ResNet-50 expects is the first layer of the model
(``ImageNetPreprocessing``), so training, evaluation and every export feed
the same pixels.
"""

from __future__ import annotations

import re

import numpy as np
import tensorflow as tf
import keras

from aaa_keras.data.sampler import check_pk, index_dataset
from aaa_keras.errors import DatasetError

AUTOTUNE = tf.data.AUTOTUNE


def decode_pixels(data):
    """Encoded JPEG/PNG/BMP/GIF bytes -> uint8 ``(H, W, 3)``: the one decoder of every pipeline.

    ``aaa_keras.data.check.verify_images`` decodes every file with this same
    function before training and evaluation, so an image that passes the
    check cannot fail in the middle of an epoch.
    """
    return tf.io.decode_image(data, channels=3, expand_animations=False)


DECODER = "tf.io.decode_image channels=3"  # names decode_pixels in data/check.py's cache


def is_decode_error(error) -> bool:
    """Whether a TensorFlow error was raised by :func:`decode_pixels` rejecting a file's bytes.

    TensorFlow reports a bad image as an ``InvalidArgumentError`` whose
    message names the failing node, ``.../DecodeImage``; other invalid
    arguments (shapes, dtypes) are not a bad image.
    """
    return isinstance(error, tf.errors.InvalidArgumentError) and "DecodeImage" in (error.message or "")


def op_error_reason(error) -> str:
    """The first line of a TensorFlow error without its ``{{node ...}}`` / ``[Op:...]`` decoration."""
    reason = (error.message or type(error).__name__).strip().splitlines()[0]
    return re.sub(r"\{\{.*?\}\}|\[Op:.*", "", reason).strip()


def decode_image(path_or_bytes, image_size, from_bytes: bool = False):
    """File path (or encoded bytes) -> float32 ``(H, W, 3)`` in 0-255, bilinear resize."""
    data = path_or_bytes if from_bytes else tf.io.read_file(path_or_bytes)
    image = decode_pixels(data)
    image = tf.image.resize(tf.cast(image, tf.float32), image_size, method="bilinear")
    return tf.clip_by_value(image, 0.0, 255.0)


def _pad_crop_flip(image, seed, image_size, padding):
    """Random horizontal flip + zero-pad-and-random-crop, stateless for a given seed."""
    height, width = image_size
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    image = tf.image.stateless_random_flip_left_right(image, seed=seeds[0])
    image = tf.image.pad_to_bounding_box(image, padding, padding, height + 2 * padding,
                                         width + 2 * padding)
    return tf.image.stateless_random_crop(image, (height, width, 3), seed=seeds[1])


# Random erasing fills the erased rectangle with the ImageNet mean colour, as BoT does (its
# RandomErasing writes the mean into the normalised tensor). keras' default fill, N(0, 1) x 255,
# puts pixels far outside [0, 255] (about a third beyond +-255): measured, it inflated the
# BatchNorm variances so that a network evaluated in inference mode saw a fraction of the
# variance it was trained on (docs/decisions.md, "Random erasing").
ERASING_FILL = (123.675, 116.28, 103.53)


def train_dataset(paths, labels, image_size, batch_size: int, seed: int = 0,
                  random_erasing_probability: float = 0.0, repeat: bool = True,
                  ids_per_batch: int = 0, images_per_id: int = 0) -> tf.data.Dataset:
    """Shuffled, augmented, batched training pairs ``(images, labels)``.

    Augmentation: random flip and pad-crop (padding 1/16 of the height, 16 px
    at 256x128 as in common re-ID baselines); with
    ``random_erasing_probability`` > 0, ``keras.layers.RandomErasing`` at that
    fixed probability (paper Table 5's comparison), filled with ``ERASING_FILL``.

    With ``ids_per_batch`` P > 0 the batches are identity-balanced, P
    identities x ``images_per_id`` K images in the order of
    ``data/sampler.py``'s plan (``batch_size`` must be P * K; ``repeat=False``
    gives one epoch of the plan), with the same augmentation.
    """
    padding = max(1, image_size[0] // 16)
    if ids_per_batch:
        if batch_size != ids_per_batch * images_per_id:
            raise ValueError(f"batch_size {batch_size} is not ids_per_batch {ids_per_batch} x "
                             f"images_per_id {images_per_id}")
        check_pk(labels, ids_per_batch, images_per_id)
        path_table = tf.constant(np.asarray(paths))
        label_table = tf.constant(np.asarray(labels, np.int32))
        pairs = index_dataset(labels, ids_per_batch, images_per_id, seed, repeat).map(
            lambda i: (tf.gather(path_table, i), tf.gather(label_table, i)))
    else:
        if len(paths) < batch_size:
            raise DatasetError(
                f"the training split has {len(paths)} images, fewer than --batch-size {batch_size}; "
                "lower --batch-size or add images")
        pairs = tf.data.Dataset.from_tensor_slices((np.asarray(paths), np.asarray(labels, np.int32)))
        pairs = pairs.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            pairs = pairs.repeat()
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    dataset = tf.data.Dataset.zip((pairs, seeds)).map(
        lambda pair, s: (_pad_crop_flip(decode_image(pair[0], image_size), s, image_size, padding),
                         pair[1]),
        num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if random_erasing_probability > 0:
        erasing = keras.layers.RandomErasing(
            factor=(random_erasing_probability, random_erasing_probability),
            fill_value=list(ERASING_FILL), value_range=(0, 255), seed=seed)
        dataset = dataset.map(lambda x, y: (erasing(x, training=True), y),
                              num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)


def eval_dataset(paths, image_size, batch_size: int = 64) -> tf.data.Dataset:
    """Images only, in the given order, no augmentation."""
    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(paths))
    dataset = dataset.map(lambda p: decode_image(p, image_size), num_parallel_calls=AUTOTUNE)
    return dataset.batch(batch_size).prefetch(AUTOTUNE)
