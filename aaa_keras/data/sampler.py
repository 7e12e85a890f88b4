"""Identity-balanced P x K batches: Bag of Tricks' ``RandomIdentitySampler``, deterministic per seed.

A batch holds ``P`` identities with ``K`` images each, so a batch-hard
triplet loss always finds ``K - 1`` positives and ``(P - 1) K`` negatives for
every anchor. An epoch is built as BoT's sampler builds it:

1. each identity's images are shuffled and cut into chunks of ``K``;
2. an identity's last, incomplete chunk is completed with images from the
   start of its own shuffle (BoT drops it; here every image is in a chunk,
   and an identity with ``n < K`` images repeats each of them at most
   ``ceil(K / n)`` times);
3. batches are made by picking ``P`` distinct identities among those with
   chunks left and popping one chunk of each.

The other departure from BoT (both are measured in docs/decisions.md, "The
P x K sampler is BoT's"): BoT picks the ``P`` identities uniformly, which
leaves the large identities for the end of the epoch, where its loop stops as
soon as fewer than ``P`` identities have chunks left and drops what remains;
here an identity is picked in proportion to its chunks left, and identities
with a chunk for every remaining batch are picked first when leaving them out
would leave a remaining batch short of ``P`` identities. So every epoch has
exactly ``batches_per_epoch`` batches (the most that ``P`` distinct
identities per batch allow: all chunks but fewer than ``P``, unless one
identity holds more chunks than there are batches), every image is shown
about once per epoch, and ``steps_per_epoch`` matches the plan. The plan of
epoch ``e`` depends only on ``(seed, e)``, so the batches of a run are
reproducible. A stage resumed from its backup starts a new stream at the plan
of epoch 0 (as the shuffled pipeline restarts its shuffle): the resumed
epochs see other batches than the interrupted run would have.
"""

from __future__ import annotations

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


def _chunks_per_id(labels, images_per_id: int) -> np.ndarray:
    """Chunks of ``K`` per identity (in ``np.unique`` order): ``ceil(n_id / K)``."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return -(-counts // images_per_id)


def batches_per_epoch(labels, ids_per_batch: int, images_per_id: int) -> int:
    """The batches of one epoch: the most ``B`` with ``sum(min(chunks_id, B)) >= P * B``.

    That is every chunk but fewer than ``P`` (about ``sum(ceil(n_id / K)) // P``),
    unless an identity holds more than ``B`` chunks: it can give only one per batch.
    """
    chunks = _chunks_per_id(labels, images_per_id)
    batches = int(chunks.sum()) // ids_per_batch
    while np.minimum(chunks, batches).sum() < ids_per_batch * batches:
        batches -= 1
    return batches


def epoch_plan(labels, ids_per_batch: int, images_per_id: int, seed: int, epoch: int) -> np.ndarray:
    """Indices into ``labels`` for epoch ``epoch``: ``(batches_per_epoch, P * K)``, rows = batches.

    Row ``b`` holds ``K`` consecutive indices of each of its ``P`` distinct identities.
    """
    labels = np.asarray(labels)
    check_pk(labels, ids_per_batch, images_per_id)
    rng = np.random.default_rng([int(seed), int(epoch), 0x5045])  # "PK"
    _, inverse = np.unique(labels, return_inverse=True)
    by_id = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    chunks = [np.resize(rng.permutation(images), -(-len(images) // images_per_id) * images_per_id)
              .reshape(-1, images_per_id) for images in by_id]  # cycling completes the last chunk
    left = np.array([len(c) for c in chunks])
    rows = []
    for batches_left in range(batches_per_epoch(labels, ids_per_batch, images_per_id), 0, -1):
        # Invariant: sum(min(left, batches_left)) >= P * batches_left, so the remaining
        # batches can be filled. An identity with chunks for every remaining batch counts
        # against it only when left out: keep enough of them in this batch.
        full = np.flatnonzero(left >= batches_left)
        slack = int(np.minimum(left, batches_left).sum()) - ids_per_batch * batches_left
        picked = rng.choice(full, max(0, len(full) - slack), replace=False)
        group = picked
        if len(picked) < ids_per_batch:  # the others in proportion to their chunks left
            weights = left.astype(float)
            weights[picked] = 0
            group = np.concatenate([picked, rng.choice(len(left), ids_per_batch - len(picked),
                                                       replace=False, p=weights / weights.sum())])
        group = rng.permutation(group)
        rows.append(np.concatenate([chunks[i][len(chunks[i]) - left[i]] for i in group]))
        left[group] -= 1
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
