"""The stem / tail split of ResNet-50 at each occlusion point, and the embedder."""

import numpy as np
import pytest

from aaa_keras.errors import UserError
from aaa_keras.model.backbone import OCCLUSION_LAYERS, build_embedder, build_parts

# conv2..conv5 downsample a 64x32 input by 4, 8, 16 and 32; channels of ResNet-50's stages
RESNET50_FEATURES = {"conv2": (16, 8, 256), "conv3": (8, 4, 512), "conv4": (4, 2, 1024),
                     "conv5": (2, 1, 2048)}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 255, (2, 64, 32, 3)).astype(np.float32)


@pytest.mark.parametrize("point", list(RESNET50_FEATURES))
def test_resnet50_split_at_each_occlusion_point(point, images):
    parts = build_parts(7, (64, 32), "resnet50", point)
    features = parts.stem(images)
    assert tuple(features.shape[1:]) == RESNET50_FEATURES[point]
    embedding, logits = parts.tail(features)
    assert embedding.shape == (2, 2048) and logits.shape == (2, 7)
    # stem and tail share their layers with one network: same output, no copy of weights
    whole_embedding, whole_logits = parts.network(images)
    np.testing.assert_allclose(whole_logits, logits, rtol=1e-5, atol=1e-5)
    stem_ids = {id(v) for v in parts.stem.weights}
    tail_ids = {id(v) for v in parts.tail.weights}
    assert not stem_ids & tail_ids
    assert stem_ids | tail_ids == {id(v) for v in parts.network.weights}
    assert parts.stem.layers[-1].get_layer(OCCLUSION_LAYERS["resnet50"][point]) is not None


def test_embedder_is_l2_normalised_pre_dropout_embedding(images):
    parts = build_parts(3, (64, 32), "tiny_resnet", "conv3", dropout=0.5)
    embedder = build_embedder(parts)
    embedding = embedder(images).numpy()
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)
    raw, _ = parts.network(images, training=False)
    raw = raw.numpy()
    np.testing.assert_allclose(embedding, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5,
                               atol=1e-6)


def test_backbone_weights_path_that_does_not_load_is_a_clear_error(tmp_path):
    bad = tmp_path / "weights.h5"
    bad.write_bytes(b"not an h5 file")
    with pytest.raises(UserError, match="--backbone-weights"):
        build_parts(3, (64, 32), "resnet50", "conv3", backbone_weights=str(bad))


def test_imagenet_download_failure_names_the_offline_alternative(monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise OSError("URL fetch failure: no network")

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    with pytest.raises(UserError, match="--backbone-weights PATH"):
        build_parts(3, (64, 32), "resnet50", "conv3", backbone_weights="imagenet")
