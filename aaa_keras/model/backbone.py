"""ResNet-50 split at the occlusion point into ``stem`` and ``tail`` (SPEC section 2).

``stem``: image (0-255 RGB) -> feature map ``f`` at the occlusion point.
``tail``: ``f`` -> rest of the backbone -> global average pooling -> embedding
-> dropout -> ``Dense(C)`` logits; it returns ``(embedding, logits)``. With
``bnneck`` (the strong recipe) the embedding is the pooled feature after a
BatchNorm and the classifier has no bias. ``training_tail`` returns what the
losses need whatever the retrieval feature is: the pooled feature before the
BNNeck (the triplet loss's input), the classifier's input and the logits.
Both are functional models sharing their layers with one backbone, so weights
trained through one are seen by the other.

``tiny_resnet`` is a four-stage residual network with the same layer names
(one block per stage). It exists for tests and quick smoke runs on a CPU; the
product default is ResNet-50.
"""

from __future__ import annotations

import dataclasses
import warnings

import keras
import numpy as np
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
    # Camera-class backbones (keras.applications): conv2..conv5 are the outputs
    # at strides 4, 8, 16 and 32, each the last layer of the last block that
    # outputs that stride (channels 24, 40, 112, 160 / 320). conv5 is the last
    # inverted-residual block: the 1x1 head convolution after it (MobileNetV3's
    # conv_1 to 960 channels, EfficientNet's top_conv to 1280) stays in the tail.
    "mobilenet_v3_large": {
        "conv2": "expanded_conv_2_add",  # stride 4, blocks 1-2
        "conv3": "expanded_conv_5_add",  # stride 8, blocks 3-5 (squeeze-excite)
        "conv4": "expanded_conv_11_add",  # stride 16, blocks 6-11
        "conv5": "expanded_conv_14_add",  # stride 32, blocks 12-14
    },
    "efficientnet_b0": {
        "conv2": "block2b_add",  # stride 4
        "conv3": "block3b_add",  # stride 8
        "conv4": "block5c_add",  # stride 16 (stages 4 and 5)
        "conv5": "block7a_project_bn",  # stride 32 (stages 6 and 7; 7a has no residual add)
    },
}

# Side of the attention grid (config.grid_size): the feature map at the
# occlusion point needs at least this many rows and columns.
ATTENTION_GRID = 4

# caffe-style ImageNet statistics that keras.applications' ResNet-50 expects (BGR order).
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
IMAGENET_RGB_STD = (0.229, 0.224, 0.225)  # keras.applications.efficientnet's IMAGENET_STDDEV_RGB


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
    # f -> (pooled feature before the BNNeck, the classifier's input, logits): tail's layers.
    # The losses take their inputs from here, never from ``tail``'s first output, which is the
    # retrieval feature chosen by ``neck_feature`` (issue 20.2).
    training_tail: keras.Model | None = None


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


# keras.applications constructor, display name, no-top weight file (what
# --backbone-weights imagenet downloads), extra constructor arguments.
_APPLICATIONS = {
    "resnet50": ("ResNet50", "ResNet-50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", {}),
    # include_preprocessing: its own Rescaling to [-1, 1], what its ImageNet weights expect
    "mobilenet_v3_large": ("MobileNetV3Large", "MobileNetV3-Large",
                           "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
                           {"include_preprocessing": True}),
    # built-in Rescaling(1/255) + Normalization (ImageNet mean / variance from the weights)
    "efficientnet_b0": ("EfficientNetB0", "EfficientNet-B0", "efficientnetb0_notop.h5", {}),
}
MIN_APPLICATION_SIDE = 32  # keras.applications refuses smaller inputs


def _keras_application(name: str, input_shape, weights: str) -> keras.Model:
    """One keras.applications backbone without its top; random init unless ``weights``."""
    constructor, title, weight_file, extra = _APPLICATIONS[name]
    if min(input_shape[:2]) < MIN_APPLICATION_SIDE:
        raise UserError(f"--image-size {input_shape[0]}x{input_shape[1]}: {name} needs at least "
                        f"{MIN_APPLICATION_SIDE}x{MIN_APPLICATION_SIDE} (e.g. 256x128)")

    def build(source):
        with warnings.catch_warnings():
            # MobileNetV3 with ImageNet weights at a non-224 or non-square size: the 224 weights
            # are the ones meant (convolutions do not depend on the input size).
            warnings.filterwarnings("ignore", message="`input_shape` is undefined or non-square",
                                    category=UserWarning)
            return getattr(keras.applications, constructor)(
                include_top=False, weights=source, input_shape=input_shape, **extra)

    if weights == "imagenet":
        try:
            model = build("imagenet")
        except Exception as error:
            failure = _weights_fetch_failure(error)
            if failure is None:  # not a download or file problem: a bug to see in full
                raise
            raise UserError(
                f"--backbone-weights imagenet: {failure} the ImageNet weights of "
                f"{title} ({type(error).__name__}: {error}). Offline alternative: fetch "
                f"{weight_file} on a connected machine "
                "and pass --backbone-weights PATH (or omit the flag for random init)") from error
    elif weights:
        try:
            model = build(weights)
        except (OSError, ValueError) as error:
            raise UserError(
                f"--backbone-weights {weights}: cannot load {title} no-top weights from this "
                f"file ({error}); expected keras.applications' {weight_file}") from None
    else:
        model = build(None)
    if name == "efficientnet_b0":
        model = _with_variable_normalization(model)
        if weights and weights != "imagenet":
            _fold_efficientnet_imagenet_scale(model)
    if name == "mobilenet_v3_large":
        # Its BatchNorm momentum is 0.999 (ImageNet-length training); 0.99, as in the other
        # backbones, lets the moving statistics settle within a re-ID training run.
        for layer in model.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = 0.99
    return model


@keras.saving.register_keras_serializable(package="aaa_keras")
class VariableNormalization(layers.Normalization):
    """``keras.layers.Normalization`` that reads its mean / variance variables at every call.

    The stock layer computes constant tensors from them when it is built or
    its weights are loaded (``finalize_state``): a traced function captures
    those as external tensors, which tf2onnx turns into two extra ONNX graph
    inputs (EfficientNet's ONNX export then has 3 inputs), and ``set_weights``
    leaves them stale. Same weights, same arithmetic.
    """

    def call(self, inputs):
        if self.input_mean is not None or self.invert:
            return super().call(inputs)
        inputs = keras.ops.cast(inputs, self.compute_dtype)
        mean = keras.ops.cast(keras.ops.reshape(self.adapt_mean, self._broadcast_shape), self.compute_dtype)
        variance = keras.ops.cast(keras.ops.reshape(self.adapt_variance, self._broadcast_shape),
                                  self.compute_dtype)
        return (inputs - mean) / keras.ops.maximum(keras.ops.sqrt(variance), keras.config.epsilon())


def _with_variable_normalization(model: keras.Model) -> keras.Model:
    """A copy of ``model`` (same layer names and weights) with :class:`VariableNormalization` layers."""

    def clone(layer):
        kind = VariableNormalization if type(layer) is layers.Normalization else layer.__class__
        return kind.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _fold_efficientnet_imagenet_scale(model: keras.Model) -> None:
    """Make EfficientNet-B0 loaded from a weight file preprocess like ``weights="imagenet"``.

    With ``weights="imagenet"`` keras.applications adds a ``Rescaling(1 /
    sqrt(stddev))`` after its ``Normalization`` layer, with a file path it does
    not; multiplying the loaded variance by the ImageNet standard deviations
    gives the same arithmetic without changing the layer graph.
    """
    normalization = next(layer for layer in model.layers if isinstance(layer, layers.Normalization))
    mean, variance, *rest = normalization.get_weights()
    normalization.set_weights([mean, variance * np.asarray(IMAGENET_RGB_STD, variance.dtype), *rest])


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
    """Image -> last feature map, randomly initialised unless ``weights``.

    The image is what :func:`input_preprocessing` makes of 0-255 RGB:
    caffe-style BGR for resnet50 / tiny_resnet, the 0-255 RGB pixels
    themselves for mobilenet_v3_large / efficientnet_b0 (they normalise inside).
    """
    if name in _APPLICATIONS:
        return _keras_application(name, input_shape, weights)
    if name == "tiny_resnet":
        if weights:
            raise UserError(f"--backbone-weights applies to {', '.join(_APPLICATIONS)} only; "
                            "tiny_resnet has none")
        return tiny_resnet(input_shape)
    raise UserError(f"--backbone: unknown backbone {name!r}; expected one of {list(OCCLUSION_LAYERS)}")


def input_preprocessing(backbone: str) -> layers.Layer | None:
    """The layer between the 0-255 RGB model input and ``backbone``, or None.

    ResNet-50's ImageNet weights expect caffe-style input (BGR minus the
    mean), which keras.applications leaves to the caller: an
    :class:`ImageNetPreprocessing` layer (tiny_resnet keeps it too).
    MobileNetV3 (``include_preprocessing``: to [-1, 1]) and EfficientNet
    (to [0, 1], then the ImageNet mean / variance) do their own, the one their
    ImageNet weights were trained with, from 0-255 RGB: nothing to add.
    """
    if backbone in ("resnet50", "tiny_resnet"):
        return ImageNetPreprocessing(name="imagenet_preprocessing")
    return None


def check_attention_grid(backbone: str, occlude_after: str, image_size, feature_shape,
                         grid_size: int = ATTENTION_GRID) -> None:
    """UserError unless the feature map at the occlusion point has at least ``grid_size`` rows and columns.

    A smaller map leaves some of the ``grid_size**2`` occlusion cells empty.
    tiny_resnet (tests, the demo's Table 3 grid: conv5 at 128x64 is 4x2) is
    not checked.
    """
    if backbone == "tiny_resnet":
        return
    rows, cols = int(feature_shape[0]), int(feature_shape[1])
    if min(rows, cols) < grid_size:
        stride = max(-(-int(image_size[0]) // rows), -(-int(image_size[1]) // cols))
        raise UserError(
            f"--occlude-after {occlude_after} with --image-size {image_size[0]}x{image_size[1]}: {backbone}'s "
            f"feature map there is {rows}x{cols}, smaller than the {grid_size}x{grid_size} attention grid; "
            f"use an --image-size with both sides at least {grid_size * stride} or an earlier --occlude-after")


def build_parts(
    num_classes: int,
    image_size=(256, 128),
    backbone: str = "resnet50",
    occlude_after: str = "conv3",
    dropout: float = 0.5,
    backbone_weights: str = "",
    bnneck: bool = False,
    last_stride: int = 2,
    neck_feature: str = "after",
) -> ReidParts:
    """Build the stem / tail split of one backbone, with the identity classifier.

    ``neck_feature`` (with ``bnneck``): the retrieval feature, the tail's first output, is the
    feature after the BNNeck's BatchNorm (``after``, BoT's default) or the pooled feature before
    it (``before``, BoT's ``TEST.NECK_FEAT``); the weights are the same either way.
    """
    # === Backbone ===
    height, width = image_size
    base = with_last_stride(build_backbone(backbone, (height, width, 3), backbone_weights), backbone,
                            last_stride)
    split_layer = OCCLUSION_LAYERS[backbone][occlude_after]
    split_tensor = base.get_layer(split_layer).output
    check_attention_grid(backbone, occlude_after, image_size, split_tensor.shape[1:3])

    # === Stem: image -> f ===
    images = keras.Input((height, width, 3), name="image")
    preprocessing = input_preprocessing(backbone)
    preprocessed = images if preprocessing is None else preprocessing(images)
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
    embedding = pooled
    if bnneck:  # BoT's BNNeck: its shift stays 0 (BoT freezes it), the classifier has no bias
        embedding = layers.BatchNormalization(center=False, name="bnneck")(pooled)
    dropped = layers.Dropout(dropout, name="dropout")(embedding)
    classifier = (layers.Dense(num_classes, use_bias=False, name="classifier",
                               kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))
                  if bnneck else layers.Dense(num_classes, name="classifier"))
    logits = classifier(dropped)
    retrieval = pooled if neck_feature == "before" else embedding
    tail = keras.Model(features, [retrieval, logits], name="tail")
    training_tail = keras.Model(features, [pooled, embedding, logits], name="training_tail")

    # === The whole network, the one object whose weights are saved ===
    embedding, class_logits = tail(stem(images))
    network = keras.Model(images, [embedding, class_logits], name="reid_network")
    return ReidParts(stem=stem, tail=tail, network=network, embedding_dim=int(pooled.shape[-1]),
                     training_tail=training_tail)


# The convolutions whose stride 2 is conv5's downsampling, per backbone: the first
# block's main path and shortcut ("last stride", Luo et al. 2019). config.LAST_STRIDE_BACKBONES
# names the same backbones.
LAST_STRIDE_LAYERS = {
    "resnet50": ("conv5_block1_0_conv", "conv5_block1_1_conv"),
    "tiny_resnet": ("conv5_block1_0_conv", "conv5_block1_1_conv"),
}


def with_last_stride(base: keras.Model, backbone: str, last_stride: int = 2) -> keras.Model:
    """``base`` itself for stride 2; for 1, a copy with conv5's stride 1 and the same weights.

    A stride does not change a kernel's shape, so the copy takes every
    weight of ``base`` (random or ImageNet) and keeps every layer name.
    """
    if last_stride == 2:
        return base
    if backbone not in LAST_STRIDE_LAYERS or last_stride != 1:
        raise UserError(f"--last-stride {last_stride} with --backbone {backbone}: expected 2, or 1 with "
                        f"{' or '.join(LAST_STRIDE_LAYERS)}")
    strided = LAST_STRIDE_LAYERS[backbone]

    def clone(layer):
        config = layer.get_config()
        if layer.name in strided:
            config["strides"] = (1, 1)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(base, clone_function=clone)
    copy.set_weights(base.get_weights())
    return copy


def build_embedder(parts: ReidParts) -> keras.Model:
    """Image (0-255 RGB) -> L2-normalised embedding, the retrieval feature (SPEC section 2)."""
    images = keras.Input(parts.network.input.shape[1:], name="image")
    embedding, _ = parts.network(images, training=False)
    normalized = layers.UnitNormalization(axis=-1, name="l2_normalize")(
        layers.Activation("linear", dtype="float32", name="to_float32")(embedding))
    return keras.Model(images, normalized, name="embedder")
