"""Stage 3's occlusion in pixel space (``--occlusion-space pixel``, issue 21 item 2; beyond the paper).

The paper occludes the conv3 feature map with zeros (Alg. 2, l. 2). Here the same 0-1 mask
``B`` (the top third of ``M_att``, the feature response or smooth noise, at feature-map
resolution) is upsampled to the image, nearest with exact cell boundaries
(:func:`upsample_mask`), and the marked pixels are covered with a realistic occluder: the
pixels at the same place of **another identity's image from the same batch** (KPR's
batch-wise inter-person occlusion, BIPO), so the network sees a second person in front of
the first. The occluded image then goes through the whole network (stem and tail). Every
pixel outside the marked region is bit-identical to the input.

A sample whose batch holds no other identity (possible only in shuffled batches, never in
P x K ones) is covered with the ImageNet mean colour, the random-erasing fill
(``data/pipeline.py: ERASING_FILL``; repeated here, since ``model`` does not import ``data``).

Shapes: images ``(B, H, W, 3)`` RGB 0-255, masks ``(B, h, w, 1)`` with 1 = keep, 0 = occlude.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

MEAN_FILL = (123.675, 116.28, 103.53)  # = data/pipeline.py ERASING_FILL (the ImageNet mean, RGB 0-255)


def cell_index(size: int, cells: int) -> np.ndarray:
    """The feature row (or column) of every image row: ``floor(r * cells / size)``, ``(size,)`` int32.

    With ``size = s * cells`` (the stem's stride divides the image) this is ``r // s``: each
    feature position owns an exact ``s x s`` block of pixels, and the blocks partition the image.
    """
    return (np.arange(size, dtype=np.int64) * cells // size).astype(np.int32)


def upsample_mask(mask, height: int, width: int):
    """``(B, h, w, 1)`` -> ``(B, height, width, 1)``: nearest, each pixel takes its cell's value."""
    rows = tf.constant(cell_index(height, mask.shape[1]))
    cols = tf.constant(cell_index(width, mask.shape[2]))
    return tf.gather(tf.gather(mask, rows, axis=1), cols, axis=2)


def donor_indices(labels, seed):
    """For each sample, a random sample of the batch with **another** label, ``(B,)`` int32;
    -1 where the batch holds no other identity. ``seed``: a ``keras.random.SeedGenerator`` or int."""
    import keras

    labels = tf.cast(labels, tf.int32)
    batch = tf.shape(labels)[0]
    other = tf.not_equal(labels[:, None], labels[None, :])  # (B, B)
    draw = keras.random.uniform(tf.stack([batch, batch]), seed=seed)
    scores = tf.where(other, draw, -1.0)  # a uniform pick among the other identities
    donors = tf.argmax(scores, axis=1, output_type=tf.int32)
    return tf.where(tf.reduce_any(other, axis=1), donors, -1)


def occluder_images(images, donors):
    """The occluder of each sample: its donor's image (``donors >= 0``) or the mean colour."""
    donor_images = tf.gather(images, tf.maximum(donors, 0))
    fill = tf.broadcast_to(tf.constant(MEAN_FILL, images.dtype), tf.shape(images))
    return tf.where((donors >= 0)[:, None, None, None], donor_images, fill)


def occlude_images(images, keep_mask, donors):
    """``images`` with the pixels of ``keep_mask == 0`` (upsampled) taken from the donors' images.

    ``keep_mask`` ``(B, h, w, 1)`` is stage 3's ``B``; returns ``(occluded images, region)``,
    region ``(B, H, W, 1)`` bool = the covered pixels. Outside the region the result is the
    input, bit for bit (a ``tf.where``, no arithmetic on kept pixels). No gradient flows into
    the mask.
    """
    height, width = images.shape[1], images.shape[2]
    region = upsample_mask(tf.stop_gradient(keep_mask), height, width) < 0.5
    occluders = occluder_images(images, donors)
    return tf.where(region, occluders, images), region
