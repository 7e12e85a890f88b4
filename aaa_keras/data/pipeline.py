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
ERASING_SCALE = (0.02, 0.33)  # keras.layers.RandomErasing's default ``scale``


def _random_erasing(image, seed, probability: float, image_size):
    """``keras.layers.RandomErasing(factor=(p, p), fill_value=ERASING_FILL)`` on one image, stateless.

    The keras layer's distribution, drawn per image from ``seed``: with
    probability ``p`` a rectangle whose width and height are each
    ``sqrt(U(0.02, 0.33))`` of the image's, placed uniformly, is filled with
    ``ERASING_FILL``. Written per image instead of calling the layer on the
    batch: the layer builds a full-size fill tensor and mask per batch and
    draws from a stateful generator, which made it the slowest step of the
    demo's stage-1 pipeline (docs/benchmarks.md, "Input pipeline against
    stage 1") and its output depend on thread timing (docs/decisions.md,
    "Random erasing per image").
    """
    height, width = image_size
    draws = tf.random.stateless_uniform([5], seed=seed)
    low, high = ERASING_SCALE
    fractions = tf.sqrt(low + (high - low) * draws[:2])  # (width, height) fractions
    sides = tf.constant([width, height], tf.float32)
    lengths = fractions * sides
    starts = draws[2:4] * (sides - lengths)
    x = tf.range(width, dtype=tf.float32)
    y = tf.range(height, dtype=tf.float32)
    in_x = (x >= starts[0]) & (x < starts[0] + lengths[0])
    in_y = (y >= starts[1]) & (y < starts[1] + lengths[1])
    mask = in_y[:, None, None] & in_x[None, :, None] & (draws[4] < probability)
    return tf.where(mask, tf.constant(ERASING_FILL, tf.float32), image)


# A training split whose decoded, resized images (float32) fit in this many bytes is decoded
# once and augmented from memory every epoch (benchmarks/bench_input.py measures the saving).
DECODED_CACHE_BYTES = 512 * 2**20


def decoded_cache_fits(num_images: int, image_size, cache_bytes: int | None = None) -> bool:
    """Whether ``num_images`` decoded float32 images of ``image_size`` fit the cache budget."""
    budget = DECODED_CACHE_BYTES if cache_bytes is None else cache_bytes
    return num_images * image_size[0] * image_size[1] * 3 * 4 <= budget


def decoded_images(paths, image_size) -> np.ndarray:
    """Every image decoded and resized once: float32 ``(N, H, W, 3)``, the pixels of :func:`decode_image`."""
    batches = [batch.numpy() for batch in eval_dataset(paths, image_size, batch_size=64)]
    if not batches:
        return np.zeros((0, *image_size, 3), np.float32)
    return np.concatenate(batches)


def train_dataset(paths, labels, image_size, batch_size: int, seed: int = 0,
                  random_erasing_probability: float = 0.0, repeat: bool = True,
                  ids_per_batch: int = 0, images_per_id: int = 0,
                  cache_bytes: int | None = None) -> tf.data.Dataset:
    """Shuffled, augmented, batched training pairs ``(images, labels)``.

    Augmentation: random flip and pad-crop (padding 1/16 of the height, 16 px
    at 256x128 as in common re-ID baselines); with
    ``random_erasing_probability`` > 0, random erasing (:func:`_random_erasing`) at that
    fixed probability (paper Table 5's comparison), filled with ``ERASING_FILL``.

    With ``ids_per_batch`` P > 0 the batches are identity-balanced, P
    identities x ``images_per_id`` K images in the order of
    ``data/sampler.py``'s plan (``batch_size`` must be P * K; ``repeat=False``
    gives one epoch of the plan), with the same augmentation.

    When the split's decoded images fit ``cache_bytes`` (default
    ``DECODED_CACHE_BYTES``; 0 turns the cache off) they are decoded and
    resized once, here, and every epoch gathers them from memory: the same
    pixels, the same order and the same augmentation as decoding each epoch,
    without the per-epoch decode and resize. Larger splits are decoded as
    they are read.
    """
    padding = max(1, image_size[0] // 16)
    if ids_per_batch:
        if batch_size != ids_per_batch * images_per_id:
            raise ValueError(f"batch_size {batch_size} is not ids_per_batch {ids_per_batch} x "
                             f"images_per_id {images_per_id}")
        check_pk(labels, ids_per_batch, images_per_id)
        label_table = tf.constant(np.asarray(labels, np.int32))
        indices = index_dataset(labels, ids_per_batch, images_per_id, seed, repeat).map(
            lambda i: (i, tf.gather(label_table, i)))
    else:
        if len(paths) < batch_size:
            raise DatasetError(
                f"the training split has {len(paths)} images, fewer than --batch-size {batch_size}; "
                "lower --batch-size or add images")
        # Shuffling (index, label) pairs gives the permutation that shuffling (path, label) gave.
        indices = tf.data.Dataset.from_tensor_slices(
            (np.arange(len(paths), dtype=np.int64), np.asarray(labels, np.int32)))
        indices = indices.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            indices = indices.repeat()
    if decoded_cache_fits(len(paths), image_size, cache_bytes):
        image_table = tf.convert_to_tensor(decoded_images(paths, image_size))

        def load(index):
            return tf.gather(image_table, index)
    else:
        path_table = tf.constant(np.asarray(paths))

        def load(index):
            return decode_image(tf.gather(path_table, index), image_size)

    def augment(pair, element_seed):
        image = _pad_crop_flip(load(pair[0]), element_seed, image_size, padding)
        if random_erasing_probability > 0:
            erasing_seed = tf.random.experimental.stateless_fold_in(element_seed, 1)
            image = _random_erasing(image, erasing_seed, random_erasing_probability, image_size)
        return image, pair[1]

    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    dataset = tf.data.Dataset.zip((indices, seeds)).map(augment, num_parallel_calls=AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def eval_dataset(paths, image_size, batch_size: int = 64) -> tf.data.Dataset:
    """Images only, in the given order, no augmentation."""
    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(paths))
    dataset = dataset.map(lambda p: decode_image(p, image_size), num_parallel_calls=AUTOTUNE)
    return dataset.batch(batch_size).prefetch(AUTOTUNE)
