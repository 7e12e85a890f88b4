"""The presets' attention-branch width follows the rule of model/attention.py (issue 22).

``attention_filters`` = clip(channels of the feature map the branch reads, 64, 256): the demo
preset (tiny_resnet, conv3: 32 channels) gets 64, the paper preset (ResNet-50, conv3: 512
channels) keeps the 256 it always had. Only the backbones are built (small inputs: the channel
count does not depend on the image size), no training.
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


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_s_branch_width_follows_the_rule(preset):
    config = make_config(preset)
    assert config.attention_filters == attention_width(feature_channels(config))


def test_the_demo_branch_is_64_wide_and_the_paper_s_keeps_256():
    demo, paper = make_config("demo"), make_config("paper")
    assert (demo.backbone, demo.occlude_after, feature_channels(demo)) == ("tiny_resnet", "conv3", 32)
    assert demo.attention_filters == 64
    assert paper.attention_filters == 256
    assert make_config("demo", recipe="paper").attention_filters == 64  # the recipe does not touch it
    assert make_config("demo", attention_filters=256).attention_filters == 256  # the flag still wins
