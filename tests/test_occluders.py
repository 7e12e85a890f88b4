"""The occluder generator (aaa_keras/data/occluders.py): deterministic, covers the requested
fraction (measured on the mask it returns), leaves every pixel outside the mask unchanged."""

import numpy as np
import pytest

from aaa_keras.data import occluders
from aaa_keras.errors import UserError


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(7).integers(0, 256, (128, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", occluders.OCCLUDER_KINDS)
def test_covers_the_requested_fraction_on_its_mask(image, kind):
    for seed, fraction in enumerate(np.linspace(0.2, 0.5, 7)):
        result = occluders.occlusion(image, seed, fraction, kind)
        assert result.mask.dtype == bool and result.mask.shape == image.shape[:2]
        assert result.fraction == pytest.approx(result.mask.mean())
        assert abs(result.mask.mean() - fraction) <= occluders.TOLERANCE, (kind, seed, fraction)
        assert result.kind == kind


@pytest.mark.parametrize("kind", occluders.OCCLUDER_KINDS)
def test_pixels_outside_the_mask_are_bit_identical_and_inside_changed(image, kind):
    out, mask = occluders.occlude(image, 3, 0.35, kind)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.array_equal(out[~mask], image[~mask])
    assert np.mean(np.any(out[mask] != image[mask], axis=-1)) > 0.9  # painted over, not left as it was
    assert image.flags.writeable and not np.shares_memory(out, image)


def test_same_seed_same_occluder_other_seed_other_occluder(image):
    first, first_mask = occluders.occlude(image, 11, 0.3)
    again, again_mask = occluders.occlude(image, 11, 0.3)
    assert np.array_equal(first, again) and np.array_equal(first_mask, again_mask)
    generator = occluders.occlude(image, np.random.default_rng(11), 0.3)[0]
    assert np.array_equal(first, generator)  # an int seed is a fresh Generator of that seed
    others = [occluders.occlude(image, seed, 0.3)[1] for seed in range(12, 16)]
    assert any(not np.array_equal(first_mask, other) for other in others)


def test_kinds_sides_and_textures_vary_over_seeds(image):
    drawn = [occluders.occlusion(image, seed, 0.3) for seed in range(40)]
    assert {d.kind for d in drawn} == set(occluders.OCCLUDER_KINDS)
    sides = {d.side for d in drawn}
    assert {"top", "bottom", "left", "right"} <= sides
    assert len({d.texture for d in drawn}) >= 4


def test_other_image_sizes(image):
    for size in ((64, 32), (256, 128)):
        picture = np.zeros(size + (3,), np.uint8)
        result = occluders.occlusion(picture, 5, 0.45, "person")
        assert abs(result.fraction - 0.45) <= occluders.TOLERANCE


@pytest.mark.parametrize("arguments", [
    dict(fraction=0.0), dict(fraction=1.2), dict(kind="tree"), dict(rng=-1), dict(rng="x")])
def test_bad_arguments_are_user_errors(image, arguments):
    call = dict(image=image, rng=0, fraction=0.3, kind=None) | arguments
    with pytest.raises(UserError):
        occluders.occlude(**call)
    with pytest.raises(UserError):
        occluders.occlude(image.astype(np.float32), 0, 0.3)


def test_paint_region_covers_exactly_the_given_region(image):
    region = np.zeros(image.shape[:2], bool)
    region[40:90, 10:50] = True
    painted = occluders.paint_region(image, region, 0)
    assert np.array_equal(painted[~region], image[~region])
    assert np.mean(np.any(painted[region] != image[region], axis=-1)) > 0.9
    assert np.array_equal(painted, occluders.paint_region(image, region, 0))
    other = np.full_like(image, 7)
    pasted = occluders.paint_region(image, region, 0, source=other)
    assert np.array_equal(pasted[region], other[region]) and np.array_equal(pasted[~region], image[~region])
