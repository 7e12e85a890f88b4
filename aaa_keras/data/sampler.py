"""Identity-balanced P x K batches (the Bag of Tricks re-ID sampler), deterministic per seed.

A batch holds ``P`` identities with ``K`` images each, so a batch-hard
triplet loss always finds ``K - 1`` positives and ``(P - 1) K`` negatives for
every anchor. One epoch shows about every training image once, as BoT's
``RandomIdentitySampler`` (an identity with ``n`` images gives ``n // K``
chunks of ``K``; an epoch is the chunks' count over ``P`` batches), and at
least one batch per ``P`` identities. The batches are built from passes over
the identities: each pass shuffles them and cuts them into groups of ``P``,
the last group filled up with identities drawn from the others in that pass,
so the first pass visits every identity and every identity is drawn about
equally often (BoT draws an identity in proportion to its chunks; the
difference is small when identities have similar image counts). An identity
with fewer than ``K`` images is drawn with replacement. The plan of epoch ``e`` depends only on
``(seed, e)``, so the batches of a run are reproducible. A stage resumed from
its backup starts a new stream at the plan of epoch 0 (as the shuffled
pipeline restarts its shuffle): the resumed epochs see other batches than
the interrupted run would have.
"""

from __future__ import annotations

import math

import numpy as np

from aaa_keras.errors import DatasetError


def check_pk(labels, ids_per_batch: int, images_per_id: int) -> None:
    """A one-line error when the training split cannot fill a P x K batch."""
    if ids_per_batch < 2 or images_per_id < 2:
        raise DatasetError(f"--ids-per-batch {ids_per_batch} / --images-per-id {images_per_id}: "
                           "a P x K batch needs at least 2 identities with at least 2 images each")
    num_ids = len(np.unique(labels))
    if num_ids < ids_per_batch:
        raise DatasetError(f"the training split has {num_ids} identities, fewer than --ids-per-batch "
                           f"{ids_per_batch}; lower it")


def batches_per_epoch(labels, ids_per_batch: int, images_per_id: int) -> int:
    """The batches of one epoch: BoT's ``sum(n_id // K) // P`` (about every image once), and at
    least ``ceil(identities / P)`` (every identity once)."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    chunks = int(np.maximum(counts // images_per_id, 1).sum())
    return max(chunks // ids_per_batch, math.ceil(len(counts) / ids_per_batch))


def epoch_plan(labels, ids_per_batch: int, images_per_id: int, seed: int, epoch: int) -> np.ndarray:
    """Indices into ``labels`` for epoch ``epoch``: ``(batches_per_epoch, P * K)``, rows = batches.

    Row ``b`` holds ``K`` consecutive indices of each of its ``P`` distinct identities.
    """
    labels = np.asarray(labels)
    check_pk(labels, ids_per_batch, images_per_id)
    rng = np.random.default_rng([int(seed), int(epoch), 0x5045])  # "PK"
    unique = np.unique(labels)
    num_batches = batches_per_epoch(labels, ids_per_batch, images_per_id)
    groups = []
    while len(groups) < num_batches:  # one pass over the identities
        ids = rng.permutation(unique)
        short = (-len(ids)) % ids_per_batch
        if short:  # fill the last group with identities it does not hold yet
            last = len(ids) - (len(ids) % ids_per_batch)
            ids = np.concatenate([ids, rng.choice(ids[:last], short, replace=False)])
        groups.extend(ids.reshape(-1, ids_per_batch))
    images_of = {label: np.flatnonzero(labels == label) for label in unique}
    rows = []
    for group in groups[:num_batches]:
        row = [rng.choice(images_of[label], images_per_id, replace=len(images_of[label]) < images_per_id)
               for label in group]
        rows.append(np.concatenate(row))
    return np.stack(rows).astype(np.int64)


def index_dataset(labels, ids_per_batch: int, images_per_id: int, seed: int, repeat: bool = True):
    """A ``tf.data`` stream of scalar indices into ``labels``, epoch after epoch, ``P * K`` per batch.

    Batch it with ``P * K`` (no shuffle after this: the order is the plan).
    """
    import tensorflow as tf

    labels = np.asarray(labels)
    check_pk(labels, ids_per_batch, images_per_id)
    size = ids_per_batch * images_per_id
    epochs = tf.data.Dataset.range(2 ** 62 if repeat else 1)

    def plan(epoch):
        indices = tf.numpy_function(
            lambda e: epoch_plan(labels, ids_per_batch, images_per_id, seed, int(e)).reshape(-1),
            [epoch], tf.int64, stateful=False)
        return tf.data.Dataset.from_tensor_slices(tf.reshape(indices, [-1, size])).unbatch()

    return epochs.flat_map(plan)
