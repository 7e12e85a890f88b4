"""The identity-balanced P x K sampler: batch shape, coverage per epoch, determinism."""

import collections

import numpy as np
import pytest

from aaa_keras.data import sampler
from aaa_keras.errors import DatasetError

# 7 identities with 1..7 images: one with fewer images than K, a count not divisible by P.
LABELS = np.repeat(np.arange(7), np.arange(1, 8))


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_every_batch_is_p_ids_times_k_images_and_an_epoch_covers_every_id(epoch):
    plan = sampler.epoch_plan(LABELS, 3, 4, seed=1, epoch=epoch)
    assert plan.shape == (sampler.batches_per_epoch(LABELS, 3, 4), 12) == (3, 12)
    for row in plan:
        counts = collections.Counter(LABELS[row].tolist())
        assert len(counts) == 3 and set(counts.values()) == {4}
        for start in range(0, 12, 4):  # K consecutive images of one identity
            assert len(set(LABELS[row[start:start + 4]])) == 1
    assert set(LABELS[plan.ravel()]) == set(range(7))
    # An identity with enough images is drawn without replacement.
    for row in plan:
        for start in range(0, 12, 4):
            block = row[start:start + 4]
            if np.count_nonzero(LABELS == LABELS[block[0]]) >= 4:
                assert len(set(block)) == 4


def test_an_epoch_shows_about_every_image_once_like_bots_sampler():
    labels = np.repeat(np.arange(6), [20, 18, 22, 20, 21, 19])  # 120 images: 28 chunks of K = 4
    plan = sampler.epoch_plan(labels, 2, 4, seed=0, epoch=0)
    assert plan.shape == (14, 8)  # 28 chunks // P = 2 batches: 112 of the 120 images
    drawn = collections.Counter(labels[plan[:, ::4].ravel()].tolist())  # one draw per (batch, id)
    assert set(drawn) == set(range(6)) and max(drawn.values()) - min(drawn.values()) <= 1
    # Few images per identity: still at least one batch per P identities.
    assert sampler.batches_per_epoch(np.repeat(np.arange(9), 2), 3, 4) == 3


def test_the_plan_is_deterministic_under_a_seed_and_changes_with_epoch_and_seed():
    a = sampler.epoch_plan(LABELS, 3, 4, seed=2, epoch=0)
    assert np.array_equal(a, sampler.epoch_plan(LABELS, 3, 4, seed=2, epoch=0))
    assert not np.array_equal(a, sampler.epoch_plan(LABELS, 3, 4, seed=2, epoch=1))
    assert not np.array_equal(a, sampler.epoch_plan(LABELS, 3, 4, seed=3, epoch=0))


def test_the_tf_data_stream_follows_the_plan_epoch_after_epoch():
    batches = list(sampler.index_dataset(LABELS, 3, 4, seed=4).batch(12).take(6).as_numpy_iterator())
    expected = np.concatenate([sampler.epoch_plan(LABELS, 3, 4, 4, e) for e in (0, 1)])
    assert np.array_equal(np.stack(batches), expected)


def test_a_split_that_cannot_fill_a_batch_is_a_one_line_error():
    with pytest.raises(DatasetError, match="fewer than --ids-per-batch 8"):
        sampler.epoch_plan(LABELS, 8, 4, 0, 0)
    with pytest.raises(DatasetError, match="at least 2"):
        sampler.check_pk(LABELS, 4, 1)
