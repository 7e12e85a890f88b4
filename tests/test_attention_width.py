"""The attention branch's width follows the rule of model/attention.py (issue 22).

Unless ``--attention-filters`` is given, the branch is clip(channels of the feature map it reads,
64, 256) wide, chosen when it is built: the demo preset (tiny_resnet, conv3: 32 channels) gets 64,
the paper preset (ResNet-50, conv3: 512 channels) keeps the 256 it always had, and a demo run on
ResNet-50 gets ResNet-50's. Small inputs (the channel count does not depend on the image size),
no training.
"""

import pytest

from aaa_keras.config import PRESETS, make_config
from aaa_keras.model.attention import attention_width


def feature_channels(config) -> int:
    from aaa_keras.model.backbone import OCCLUSION_LAYERS, build_backbone

    backbone = build_backbone(config.backbone, (64, 64, 3))
    return int(backbone.get_layer(OCCLUSION_LAYERS[config.backbone][config.occlude_after]).output.shape[-1])


def test_the_rule_clips_the_channel_count_to_64_256():
    assert [attention_width(c) for c in (16, 32, 64, 100, 256, 512, 2048)] == [64, 64, 64, 100, 256, 256, 256]


def built_width(config) -> int:
    """The filters of the built attention branch's first convolution."""
    from aaa_keras.run_dir import build_stage_parts

    _, attention = build_stage_parts(config)
    return int(next(layer for layer in attention.layers if hasattr(layer, "filters")).filters)


SMALL = dict(image_height=64, image_width=32, num_classes=10)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_s_branch_is_built_as_wide_as_the_rule_says(preset):
    config = make_config(preset, **SMALL)
    assert built_width(config) == attention_width(feature_channels(config))


def test_the_demo_branch_is_64_wide_the_paper_s_256_and_the_backbone_decides():
    demo = make_config("demo", **SMALL)
    assert (demo.backbone, demo.occlude_after, feature_channels(demo)) == ("tiny_resnet", "conv3", 32)
    assert built_width(demo) == 64
    assert built_width(make_config("paper", **SMALL)) == 256
    assert built_width(make_config("demo", backbone="resnet50", **SMALL)) == 256  # not the demo's 64
    assert built_width(make_config("demo", attention_filters=16, **SMALL)) == 16  # the flag still wins


def test_a_run_dir_saved_with_an_explicit_width_keeps_it_and_another_width_is_refused(tiny_data, tmp_path):
    """Run dirs made before the rule hold attention_filters 256 (or 64): `fit` with the default
    continues them at that width; an explicit other width is refused as before."""
    from aaa_keras.config import save_config
    from aaa_keras.errors import RunDirError
    from aaa_keras.training import start_run

    old = make_config("demo", data=tiny_data, attention_filters=256)
    first, _ = start_run(old, str(tmp_path), log=lambda *_: None)
    save_config(first, str(tmp_path))
    resumed, _ = start_run(make_config("demo", data=tiny_data), str(tmp_path), log=lambda *_: None)
    assert resumed.attention_filters == 256
    with pytest.raises(RunDirError, match="attention_filters"):
        start_run(make_config("demo", data=tiny_data, attention_filters=64), str(tmp_path), log=lambda *_: None)
