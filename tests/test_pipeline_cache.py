"""The training pipeline's decoded-image cache and per-image random erasing (issue 22, item 6)."""

import os
import shutil

import numpy as np
import pytest

SIZE = (64, 32)


def _split(root):
    from aaa_keras.data.layouts import load_dataset

    dataset = load_dataset(root)
    records = dataset.train_identities()
    labels, _ = dataset.relabel(records)
    return [r.path for r in records], labels


def _batches(dataset, count=3):
    iterator = iter(dataset)
    return [tuple(np.asarray(t) for t in next(iterator)) for _ in range(count)]


@pytest.mark.parametrize("options", [
    dict(),
    dict(ids_per_batch=2, images_per_id=4),
    dict(random_erasing_probability=0.5),
], ids=["shuffled", "pk", "erasing"])
def test_cached_pipeline_yields_the_batches_of_the_decoding_one(tiny_data, options):
    """Same pixels, order and augmentation with and without the cache, bit for bit."""
    from aaa_keras.data.pipeline import train_dataset

    paths, labels = _split(tiny_data)
    streamed = _batches(train_dataset(paths, labels, SIZE, 8, seed=5, cache_bytes=0, **options))
    cached = _batches(train_dataset(paths, labels, SIZE, 8, seed=5, **options))
    for (streamed_images, streamed_labels), (cached_images, cached_labels) in zip(streamed, cached):
        np.testing.assert_array_equal(cached_labels, streamed_labels)
        np.testing.assert_array_equal(cached_images, streamed_images)


def test_cached_pipeline_does_not_read_the_files_again(tiny_data, tmp_path):
    """Within the budget the split is decoded once, when the dataset is built."""
    from aaa_keras.data.pipeline import decoded_cache_fits, train_dataset

    paths, labels = _split(tiny_data)
    copies = []
    for index, path in enumerate(paths):
        copy = str(tmp_path / f"{index:04d}{os.path.splitext(path)[1]}")
        shutil.copyfile(path, copy)
        copies.append(copy)
    assert decoded_cache_fits(len(copies), SIZE)
    assert not decoded_cache_fits(len(copies), SIZE, cache_bytes=len(copies) * SIZE[0] * SIZE[1] * 12 - 1)
    cached = train_dataset(copies, labels, SIZE, 8, seed=1)
    streamed = train_dataset(copies, labels, SIZE, 8, seed=1, cache_bytes=0)
    for copy in copies:
        os.remove(copy)
    batches = _batches(cached, count=len(copies) // 8 + 2)  # more than an epoch
    assert all(np.isfinite(images).all() for images, _ in batches)
    with pytest.raises(Exception, match="No such file|NotFound|not found"):
        _batches(streamed, count=1)


def test_random_erasing_is_per_image_deterministic_and_keeps_keras_distribution(tiny_data):
    """Probability p per image, keras' rectangle sizes, the fill colour; same batches for the same seed."""
    from aaa_keras.data.pipeline import ERASING_FILL, train_dataset

    paths, labels = _split(tiny_data)
    p = 0.5
    erased = _batches(train_dataset(paths, labels, SIZE, 16, seed=2, random_erasing_probability=p), 12)
    again = _batches(train_dataset(paths, labels, SIZE, 16, seed=2, random_erasing_probability=p), 12)
    plain = _batches(train_dataset(paths, labels, SIZE, 16, seed=2), 12)
    for (a, _), (b, _) in zip(erased, again):
        np.testing.assert_array_equal(a, b)
    images = np.concatenate([images for images, _ in erased])
    originals = np.concatenate([images for images, _ in plain])
    changed = np.any(images != originals, axis=-1)  # (N, H, W)
    hit = changed.reshape(len(changed), -1).any(axis=1)
    # 192 images at p = 0.5: the erased fraction is within 0.5 +- 0.15 (4 standard deviations).
    assert abs(hit.mean() - p) < 0.15
    assert np.allclose(images[changed], ERASING_FILL, atol=1e-3)
    # keras' RandomErasing(scale=(0.02, 0.33)): each side sqrt(U(0.02, 0.33)) of the image's,
    # so the area is between 2 % and 33 % of the image, 16 % on average.
    area = changed.reshape(len(changed), -1).mean(axis=1)[hit]
    assert area.max() <= 0.40 and 0.10 < area.mean() < 0.22
