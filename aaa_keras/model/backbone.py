"""ResNet-50 split at the occlusion point into ``stem`` and ``tail`` (SPEC section 2).

``stem``: image (0-255 RGB) -> feature map ``f`` at the occlusion point.
``tail``: ``f`` -> rest of the backbone -> global average pooling -> embedding
-> dropout -> ``Dense(C)`` logits; it returns ``(embedding, logits)``.
Both are functional models sharing their layers with one backbone, so weights
trained through one are seen by the other.

``tiny_resnet`` is a four-stage residual network with the same layer names
(one block per stage). It exists for tests and quick smoke runs on a CPU; the
product default is ResNet-50.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import layers

from aaa_keras.errors import UserError

# Output layer of each residual stage, per backbone (paper Table 3).
OCCLUSION_LAYERS = {
    "resnet50": {
        "conv2": "conv2_block3_out",
        "conv3": "conv3_block4_out",
        "conv4": "conv4_block6_out",
        "conv5": "conv5_block3_out",
    },
    "tiny_resnet": {f"conv{i}": f"conv{i}_block1_out" for i in range(2, 6)},
}

# caffe-style ImageNet statistics that keras.applications' ResNet-50 expects (BGR order).
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="aaa_keras")
class ImageNetPreprocessing(layers.Layer):
    """RGB 0-255 -> BGR minus the ImageNet mean, as ``resnet50.preprocess_input`` does.

    It lives inside the model so that every consumer (training, evaluation,
    SavedModel, TFLite) feeds plain 0-255 pixels.
    """

    def call(self, images):
        images = keras.ops.cast(images, self.compute_dtype)
        bgr = keras.ops.flip(images, axis=-1)
        return bgr - keras.ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype=self.compute_dtype)


@dataclasses.dataclass
class ReidParts:
    """The functional pieces a stage model composes."""

    stem: keras.Model
    tail: keras.Model
    network: keras.Model  # image -> (embedding, logits); holds every weight of stem + tail
    embedding_dim: int


def _tiny_residual_block(x, filters, stride, name):
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_0_bn")(shortcut)
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", name=f"{name}_1_conv")(x)
    y = layers.BatchNormalization(name=f"{name}_1_bn")(y)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(y)
    y = layers.BatchNormalization(name=f"{name}_2_bn")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def tiny_resnet(input_shape, widths=(16, 32, 64, 128)) -> keras.Model:
    """A small ResNet with ResNet-50's stage names, for tests and smoke runs."""
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", name="conv1_conv")(inputs)
    x = layers.BatchNormalization(name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    for stage, (filters, stride) in enumerate(zip(widths, (1, 2, 2, 2)), start=2):
        x = _tiny_residual_block(x, filters, stride, name=f"conv{stage}_block1")
    return keras.Model(inputs, x, name="tiny_resnet")


def _resnet50(input_shape, weights: str) -> keras.Model:
    if weights == "imagenet":
        try:
            return keras.applications.ResNet50(
                include_top=False, weights="imagenet", input_shape=input_shape)
        except Exception as error:
            failure = _weights_fetch_failure(error)
            if failure is None:  # not a download or file problem: a bug to see in full
                raise
            raise UserError(
                f"--backbone-weights imagenet: {failure} the ImageNet weights of "
                f"ResNet-50 ({type(error).__name__}: {error}). Offline alternative: fetch "
                "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 on a connected machine "
                "and pass --backbone-weights PATH (or omit the flag for random init)") from error
    if weights:
        try:
            return keras.applications.ResNet50(
                include_top=False, weights=weights, input_shape=input_shape)
        except (OSError, ValueError) as error:
            raise UserError(
                f"--backbone-weights {weights}: cannot load ResNet-50 no-top weights from this "
                f"file ({error}); expected keras.applications' "
                "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5") from None
    return keras.applications.ResNet50(include_top=False, weights=None, input_shape=input_shape)


# What keras.utils.get_file raises when a download fails: HTTP and URL errors
# re-raised as a plain Exception, and a file whose hash does not match.
_DOWNLOAD_MESSAGES = ("URL fetch failure", "Incomplete or corrupted file")


def _weights_fetch_failure(error: Exception) -> str | None:
    """How fetching keras.applications' weight file failed, or None if ``error`` is something else."""
    if any(text in str(error) for text in _DOWNLOAD_MESSAGES):
        return "could not download"
    if isinstance(error, OSError):  # a dropped connection, a full disk, a truncated cached .h5
        return "could not download or read"
    return None


def build_backbone(name: str, input_shape, weights: str = "") -> keras.Model:
    """Image (preprocessed) -> last feature map, randomly initialised unless ``weights``."""
    if name == "resnet50":
        return _resnet50(input_shape, weights)
    if name == "tiny_resnet":
        if weights:
            raise UserError("--backbone-weights applies to resnet50 only; tiny_resnet has none")
        return tiny_resnet(input_shape)
    raise UserError(f"--backbone: unknown backbone {name!r}; expected one of {list(OCCLUSION_LAYERS)}")


def build_parts(
    num_classes: int,
    image_size=(256, 128),
    backbone: str = "resnet50",
    occlude_after: str = "conv3",
    dropout: float = 0.5,
    backbone_weights: str = "",
) -> ReidParts:
    """Build the stem / tail split of one backbone, with the identity classifier."""
    # === Backbone ===
    height, width = image_size
    base = build_backbone(backbone, (height, width, 3), backbone_weights)
    split_layer = OCCLUSION_LAYERS[backbone][occlude_after]
    split_tensor = base.get_layer(split_layer).output

    # === Stem: image -> f ===
    images = keras.Input((height, width, 3), name="image")
    preprocessed = ImageNetPreprocessing(name="imagenet_preprocessing")(images)
    backbone_stem = keras.Model(base.input, split_tensor, name=f"{backbone}_to_{occlude_after}")
    stem = keras.Model(images, backbone_stem(preprocessed), name="stem")

    # === Tail: f -> (embedding, logits) ===
    features = keras.Input(split_tensor.shape[1:], name="feature_map")
    if split_tensor is base.output:  # conv5: the occlusion point is the last stage
        tail_features = features
    else:
        backbone_tail = keras.Model(split_tensor, base.output, name=f"{backbone}_after_{occlude_after}")
        tail_features = backbone_tail(features)
    pooled = layers.GlobalAveragePooling2D(name="embedding")(tail_features)
    dropped = layers.Dropout(dropout, name="dropout")(pooled)
    logits = layers.Dense(num_classes, name="classifier")(dropped)
    tail = keras.Model(features, [pooled, logits], name="tail")

    # === The whole network, the one object whose weights are saved ===
    embedding, class_logits = tail(stem(images))
    network = keras.Model(images, [embedding, class_logits], name="reid_network")
    return ReidParts(stem=stem, tail=tail, network=network, embedding_dim=int(pooled.shape[-1]))


def build_embedder(parts: ReidParts) -> keras.Model:
    """Image (0-255 RGB) -> L2-normalised embedding, the retrieval feature (SPEC section 2)."""
    images = keras.Input(parts.network.input.shape[1:], name="image")
    embedding, _ = parts.network(images, training=False)
    normalized = layers.UnitNormalization(axis=-1, name="l2_normalize")(
        layers.Activation("linear", dtype="float32", name="to_float32")(embedding))
    return keras.Model(images, normalized, name="embedder")
